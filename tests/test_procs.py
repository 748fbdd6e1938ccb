"""pipetune.procs: a trial's processes (tree, start ticks, liveness), and
end_child, which ends our own children by handle, politely first, never
leaving a zombie."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from pipetune.procs import (
    end_child,
    pid_alive,
    process_start_ticks,
    process_tree,
    stat_fields,
    tree_pids,
    with_descendants,
)

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


# -- a trial's processes (one substrate for control, profiler, energy, daemon) --

# A parent that starts a grandchild through a child, prints their pids, and
# waits: a real tree of three.
TREE = (
    "import subprocess, sys\n"
    "inner = 'import subprocess, sys; g = subprocess.Popen([sys.executable, \"-c\", "
    "\"import time; time.sleep(60)\"]); print(g.pid, flush=True); sys.stdin.read()'\n"
    "c = subprocess.Popen([sys.executable, '-c', inner], stdout=subprocess.PIPE,"
    " stdin=subprocess.PIPE, text=True)\n"
    "print(c.pid, c.stdout.readline().strip(), flush=True)\n"
    "sys.stdin.read()\n"
)


def test_a_tree_of_real_processes_is_found_parents_first() -> None:
    p = subprocess.Popen([sys.executable, "-c", TREE], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        child, grandchild = (int(x) for x in p.stdout.readline().split())
        tree = process_tree([p.pid])
        assert list(tree) == [p.pid, child, grandchild]
        assert all(isinstance(proc, psutil.Process) for proc in tree.values())
        assert tree_pids([grandchild, p.pid]) == sorted([p.pid, child, grandchild])
        # A root given twice, or inside another root's tree, is listed once.
        assert with_descendants([p.pid, child]) == [p.pid, child, grandchild]
    finally:
        p.kill()
        p.wait()
        for pid in (child, grandchild):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_gone_roots_are_left_out_of_the_tree_but_kept_by_with_descendants() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert process_tree([p.pid]) == {}
    assert tree_pids([p.pid, -1]) == []
    # A controller's caller has checked its pids; a gone one is still named
    # (the move fails for it and says so) rather than silently dropped.
    assert with_descendants([p.pid]) == [p.pid]


def test_a_zombie_root_counts_only_when_asked() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        assert list(process_tree([p.pid])) == [p.pid]
        assert process_tree([p.pid], zombies=False) == {}
        assert not pid_alive(p.pid, process_start_ticks(p.pid))
    finally:
        p.wait()


def _fake_stat(root: Path, pid: int, comm: str, state: str, start: int) -> None:
    rest = [state] + ["0"] * 18 + [str(start)] + ["0"] * 10
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")


def test_start_ticks_and_liveness_read_the_stat_file(tmp_path: Path) -> None:
    _fake_stat(tmp_path, 7, "a) (b c", "S", 4242)  # comm with spaces and parentheses
    _fake_stat(tmp_path, 8, "z", "Z", 99)
    assert stat_fields(7, proc_root=tmp_path)[0] == "S"
    assert process_start_ticks(7, proc_root=tmp_path) == 4242
    assert pid_alive(7, 4242, proc_root=tmp_path) and pid_alive(7, None, proc_root=tmp_path)
    assert not pid_alive(7, 4241, proc_root=tmp_path)  # the pid was reused
    assert not pid_alive(8, 99, proc_root=tmp_path)  # a zombie runs nothing
    assert process_start_ticks(9, proc_root=tmp_path) is None
    assert not pid_alive(9, None, proc_root=tmp_path)


def test_this_process_start_ticks_match_psutil() -> None:
    ticks = process_start_ticks(os.getpid())
    assert ticks is not None and pid_alive(os.getpid(), ticks)
    hz = os.sysconf("SC_CLK_TCK")
    assert abs(psutil.boot_time() + ticks / hz - psutil.Process().create_time()) < 1.5
