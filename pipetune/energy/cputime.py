"""CPU time of the node and of a process tree, the basis of estimates and attribution.

:func:`node_busy_s` is the node's busy CPU seconds (all logical CPUs, from
``/proc/stat`` via psutil).  :class:`ProcessTreeCpu` follows a set of root
processes and all their descendants and accumulates the CPU seconds they use
from the moment it starts, including children that live and die between two
samples (a DataLoader worker of one epoch): their time arrives in the parent's
``children_user``/``children_system`` when the parent reaps them, and the part
already counted while they were alive is subtracted so nothing is counted
twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from pipetune.procs import process_tree

PidsSource = Iterable[int] | Callable[[], Iterable[int]]


#: create_time is whole clock ticks (10 ms) after boot, rounded down.
_TICK_SLACK_S = 0.02


def _create_time_now() -> float:
    """Now, on the clock of ``psutil.Process.create_time`` (boot time + time since boot).

    ``time.time()`` would do but for psutil's boot time having whole-second
    resolution: this keeps "born since the last scan" exact to a clock tick.
    """
    try:
        return psutil.boot_time() + time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.time()


def node_busy_s() -> float:
    """Busy CPU seconds of the node since boot, all logical CPUs together.

    Busy = user + nice + system + irq + softirq; idle, iowait and steal (time
    the hypervisor gave to someone else) are not work done here.
    """
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def pids_provider(pids: PidsSource) -> Callable[[], Iterable[int]]:
    """A callable giving the current root PIDs, from a fixed list or a callable."""
    if callable(pids):
        return pids
    fixed = tuple(int(p) for p in pids)
    return lambda: fixed


@dataclass
class _Proc:
    own_s: float  # user + system of the process itself (all threads)
    reaped_s: float  # children_user + children_system: descendants it has waited for
    parent: tuple[int, float] | None


class ProcessTreeCpu:
    """Cumulative CPU seconds used by some processes and their descendants.

    Args:
        pids: root PIDs, or a callable returning them (asked at each sample,
            so a trial's process set may change).

    Processes that already exist at the first sample count from that moment;
    processes born later count from zero.  Time of a descendant that exits
    and is never reaped by a tracked process, or that lives and dies between
    two samples without being reaped by one, is lost: sample at least once an
    epoch.  Thread-safe.
    """

    def __init__(self, pids: PidsSource) -> None:
        self._pids = pids_provider(pids)
        self._lock = threading.Lock()
        self._procs: dict[tuple[int, float], _Proc] = {}
        self._credit_s: dict[tuple[int, float], float] = {}
        self._last_scan_ct = _create_time_now()
        self.total_s = 0.0
        self.current_pids: frozenset[int] = frozenset()
        self._first = True
        self.sample()

    def _scan(self) -> dict[tuple[int, float], tuple[psutil.Process, int]]:
        found = process_tree(self._pids())
        out: dict[tuple[int, float], tuple[psutil.Process, int]] = {}
        for proc in found.values():
            try:
                out[(proc.pid, proc.create_time())] = (proc, proc.ppid())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def sample(self) -> float:
        """Read the processes now; returns CPU seconds used since the tracker started."""
        with self._lock:
            scan_ct = _create_time_now()
            found = self._scan()
            by_pid = {pid: (pid, ct) for pid, ct in found}
            seen_now: dict[tuple[int, float], _Proc] = {}
            for key, (proc, ppid) in found.items():
                try:
                    t = proc.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                seen_now[key] = _Proc(t.user + t.system, t.children_user + t.children_system,
                                      by_pid.get(ppid))
            # A process that went away was (normally) reaped by its parent, whose
            # reaped time now includes the child's whole lifetime: credit the
            # parent with what the child showed, so only the unseen tail counts.
            for key, gone in self._procs.items():
                if key not in seen_now and gone.parent is not None:
                    self._credit_s[gone.parent] = (self._credit_s.get(gone.parent, 0.0)
                                                   + gone.own_s + gone.reaped_s)
            for key, now in seen_now.items():
                before = self._procs.get(key)
                if before is None:
                    # Born since the last scan: all its time is new.  Older but
                    # unseen (a root added later): count from now.
                    born_since = not self._first and key[1] >= self._last_scan_ct - _TICK_SLACK_S
                    before = _Proc(0.0, 0.0, now.parent) if born_since else now
                d_own = max(0.0, now.own_s - before.own_s)
                d_reaped = max(0.0, now.reaped_s - before.reaped_s)
                credit = self._credit_s.get(key, 0.0)
                used = min(credit, d_reaped)
                if credit:
                    self._credit_s[key] = credit - used
                self.total_s += d_own + d_reaped - used
            self._credit_s = {k: v for k, v in self._credit_s.items() if k in seen_now and v > 0}
            self._procs = seen_now
            self.current_pids = frozenset(pid for pid, _ in seen_now)
            self._first = False
            self._last_scan_ct = scan_ct
            return self.total_s
