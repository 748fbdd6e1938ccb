"""Ending a child process we started, by its handle (never by name).

Every place that starts a helper process — perf, a profiled command, a test
server, a benchmark's busy loop — ends it the same way: ask politely, give it
a while, then kill it and reap it so no zombie is left.
"""

from __future__ import annotations

import signal
import subprocess


def end_child(
    proc: subprocess.Popen, *, sig: int | None = signal.SIGTERM, timeout_s: float = 5.0
) -> bool:
    """Send ``sig`` to ``proc`` (None: the caller already asked it to end, e.g.
    by closing its stdin), wait up to ``timeout_s``, then SIGKILL and reap it.

    Returns True when it ended by itself, False when it had to be killed.
    A child that is already gone is reaped and counts as ended by itself.
    """
    try:
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
    except ProcessLookupError:  # gone between poll() and send_signal()
        proc.wait()
        return True
