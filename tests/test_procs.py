"""end_child: ends our own children by handle, politely first, never leaving a zombie."""

from __future__ import annotations

import signal
import subprocess
import sys

from pipetune.procs import end_child

IGNORES_TERM = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)")


def test_a_child_that_obeys_ends_by_itself():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert end_child(p, timeout_s=10) is True
    assert p.returncode == -signal.SIGTERM


def test_a_child_that_ignores_the_signal_is_killed_and_reaped():
    p = subprocess.Popen([sys.executable, "-c", IGNORES_TERM], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"  # its handler is in place
    assert end_child(p, timeout_s=0.5) is False
    assert p.returncode == -signal.SIGKILL
    p.stdout.close()


def test_no_signal_waits_for_a_child_asked_another_way_and_a_gone_one_is_fine():
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE)
    p.stdin.close()  # its way of being asked to end
    assert end_child(p, sig=None, timeout_s=10) is True
    assert p.returncode == 0
    assert end_child(p) is True  # already reaped: nothing to do
