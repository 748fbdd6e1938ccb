"""A trial's processes: who they are, whether they live, what they started;
and how a child we started is ended.

One module owns these facts so that control, profiler, energy and the
daemon agree on them (issue 14: four copies had drifted apart):

- :func:`process_tree` — a set of root processes and every live descendant,
  parents first, as ``psutil.Process`` objects; :func:`tree_pids` (sorted
  pids, what perf ``-p`` is given) and :func:`with_descendants` (what a
  controller moves or limits) are views of it.
- :func:`process_start_ticks` — a process's start time in clock ticks since
  boot: PID + start ticks name a process even after its PID is reused;
  :func:`pid_alive` — whether such a recorded process still runs;
  :func:`stat_fields` — the fields of ``/proc/PID/stat`` after the command.
- :func:`end_child`, :func:`signals_unblocked` — starting and ending a child
  process we own, by its handle (never by name).

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
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil

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


# -- a trial's processes -------------------------------------------------------

_PROC = Path("/proc")


def stat_fields(pid: int, *, proc_root: Path = _PROC) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (field 3, the
    state, is index 0), or ``None`` when the process is gone.  The command
    may hold spaces and parentheses, so the split starts after the last
    ``)``.  ``proc_root``: a fake procfs in tests."""
    try:
        data = (proc_root / str(pid) / "stat").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return None
    return data[data.rfind(")") + 2 :].split()


def process_start_ticks(pid: int, *, proc_root: Path = _PROC) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/PID/stat``
    field 22), or ``None`` when it is gone.  PID + start time names a process
    even after its PID is reused."""
    fields = stat_fields(pid, proc_root=proc_root)
    try:
        return int(fields[19]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start_ticks: int | None, *, proc_root: Path = _PROC) -> bool:
    """Whether the process recorded as (``pid``, ``start_ticks``) still runs
    (a reused PID with another start time does not count; ``None``: any).
    Zombies count as gone: they run nothing a limit could act on."""
    fields = stat_fields(pid, proc_root=proc_root)
    if fields is None:
        return False
    try:
        now = int(fields[19])
    except (IndexError, ValueError):
        return False
    if start_ticks is not None and now != start_ticks:
        return False
    return fields[:1] != ["Z"] and fields[:1] != ["X"]


def process_tree(
    roots: Iterable[int | psutil.Process], *, zombies: bool = True
) -> dict[int, psutil.Process]:
    """Each root that still runs and every live descendant of it, by pid,
    parents first (a root's descendants right after it).

    ``roots`` may be pids or ``psutil.Process`` objects; an object whose pid
    now names another process (psutil checks the start time) counts as gone.
    A root that is gone, or not ours to see, is left out with its tree;
    ``zombies=False`` leaves out a zombie root too (its figures are frozen).
    Descendants are found afresh at every call, so children started since
    the last call are in.
    """
    found: dict[int, psutil.Process] = {}
    for root in roots:
        try:
            proc = root if isinstance(root, psutil.Process) else psutil.Process(int(root))
            if not proc.is_running() or (not zombies and proc.status() == psutil.STATUS_ZOMBIE):
                continue
            found.setdefault(proc.pid, proc)
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except (psutil.Error, ValueError, TypeError):
            continue
    return found


def tree_pids(pids: Iterable[int]) -> list[int]:
    """``pids`` that still run and all their living descendants, sorted (what
    perf ``-p`` must be given, since children that exist before it attaches
    are not inherited)."""
    return sorted(process_tree(pids))


def with_descendants(pids: Iterable[int]) -> list[int]:
    """``pids`` (gone or not: the caller checked them) and every live
    descendant of theirs (DataLoader workers, DDP ranks already started),
    parents first: what a controller moves into a trial's group or limits."""
    out: list[int] = []
    for p in pids:
        if p not in out:
            out.append(p)
        for pid in process_tree([p]):
            if pid not in out:
                out.append(pid)
    return out
