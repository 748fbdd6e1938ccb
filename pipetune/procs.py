"""Starting and ending a child process we own, by its handle (never by name).

Every place that starts a helper process — perf, a profiled command, a test
server, a benchmark's busy loop — ends it the same way: ask politely, give it
a while, then kill it and reap it so no zombie is left.

:func:`signals_unblocked` is for starting one: a child inherits its starting
thread's blocked-signal mask across exec, and Ray runs a trial's training
function in a thread with SIGINT blocked (measured: ``SigBlk`` 0x2 in a Tune
function trainable, Ray 2.x).  perf started from there installs its SIGINT
handler but never receives the signal, so asking it to stop did nothing and
every trial end waited out the timeout and killed it.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator

#: Signals a child must be able to receive to be ended politely.
END_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


@contextlib.contextmanager
def signals_unblocked(sigs: frozenset[int] = END_SIGNALS) -> Iterator[None]:
    """Unblock ``sigs`` in the calling thread while a child is started in the
    block, so the child does not inherit them blocked; the thread's mask is
    restored after.  Only this thread's mask changes (other threads, and
    which thread Python runs handlers in, are untouched)."""
    old = signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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
