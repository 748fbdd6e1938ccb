"""procfs/psutil figures of a process tree, as per-interval deltas.

- :class:`ProcTreeReader` — reads CPU time, I/O bytes, context switches
  and page faults (cumulative) and RSS, threads, processes and the CPUs the
  tree may run on (gauges) of the target processes
  and all their descendants; :meth:`ProcTreeReader.delta` turns two readings
  into the counts of one interval, under the names of
  :data:`pipetune.profiler.events.PROC_FIGURES`.

These figures need neither perf nor a PMU, so a profile on a host where perf
is forbidden, or has only software events, still tells workloads apart.

Cumulative figures are tracked per process (PID and start time, so a reused
PID is a new process).  A process that appeared during the interval counts
from zero; one that exited loses its last partial interval — its time is not
taken from its parent's ``children_*`` times, which would count it twice.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

from pipetune.procs import process_tree, stat_fields
from pipetune.profiler.events import GAUGES, PROC_FIGURES

log = logging.getLogger(__name__)

# The cumulative figures of the catalogue (the gauges are averaged, not summed).
_CUMULATIVE = tuple(f for f in PROC_FIGURES if f not in GAUGES)


def _faults(pid: int) -> tuple[float, float] | None:
    """(minor, major) page faults of ``pid`` from ``/proc/PID/stat`` (psutil
    does not expose them); free for the trial, unlike perf's fault events."""
    fields = stat_fields(pid)
    try:
        return (float(fields[7]), float(fields[9])) if fields is not None else None
    except (IndexError, ValueError):
        return None


@dataclass
class ProcReading:
    """One look at the tree: cumulative figures per process, gauges summed."""

    time_s: float
    per_process: dict[tuple[int, float], dict[str, float]] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)


class ProcTreeReader:
    """Reads the figures of ``pids`` and their descendants."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.roots: dict[int, psutil.Process] = {}
        for pid in pids:
            try:
                self.roots[int(pid)] = psutil.Process(int(pid))
            except psutil.Error:
                log.debug("procfs: pid %s is gone", pid)

    def processes(self) -> list[psutil.Process]:
        """The roots that still run (zombies left out: their figures are
        frozen) and their live descendants, found afresh at each call."""
        return list(process_tree(self.roots.values(), zombies=False).values())

    def read(self) -> ProcReading:
        reading = ProcReading(time.time())
        rss = 0.0
        threads = 0
        n = 0
        cpus: set[int] = set()
        for proc in self.processes():
            try:
                with proc.oneshot():
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        continue
                    cpu = proc.cpu_times()
                    mem = proc.memory_info()
                    ctx = proc.num_ctx_switches()
                    n_threads = proc.num_threads()
                    try:
                        io = proc.io_counters()
                    except (psutil.AccessDenied, AttributeError):
                        io = None
                    key = (proc.pid, proc.create_time())
                # The cores in force while profiled (a packed trial's cpuset or
                # affinity): rates such as futex calls per CPU-second move with
                # it (groundtruth.features).
                with contextlib.suppress(psutil.Error, AttributeError):
                    cpus.update(proc.cpu_affinity())
            except psutil.Error:
                continue
            figures = {
                "proc.cpu_user_s": float(cpu.user),
                "proc.cpu_system_s": float(cpu.system),
                "proc.ctx_voluntary": float(ctx.voluntary),
                "proc.ctx_involuntary": float(ctx.involuntary),
            }
            if io is not None:
                figures["proc.read_bytes"] = float(io.read_bytes)
                figures["proc.write_bytes"] = float(io.write_bytes)
                figures["proc.read_chars"] = float(getattr(io, "read_chars", 0))
                figures["proc.write_chars"] = float(getattr(io, "write_chars", 0))
            faults = _faults(proc.pid)
            if faults is not None:
                figures["proc.minor_faults"], figures["proc.major_faults"] = faults
            reading.per_process[key] = figures
            rss += mem.rss
            threads += n_threads
            n += 1
        reading.gauges = {
            "proc.rss_mb": rss / (1024 * 1024),
            "proc.threads": float(threads),
            "proc.processes": float(n),
        }
        if cpus:
            reading.gauges["proc.cpus"] = float(len(cpus))
        return reading

    @staticmethod
    def delta(prev: ProcReading | None, cur: ProcReading) -> dict[str, float]:
        """Counts of the interval between two readings, plus ``cur``'s gauges."""
        counts = dict.fromkeys(_CUMULATIVE, 0.0)
        before = prev.per_process if prev is not None else {}
        for key, figures in cur.per_process.items():
            old = before.get(key)
            for name, value in figures.items():
                base = old.get(name, 0.0) if old is not None else (0.0 if prev else value)
                counts[name] += max(0.0, value - base)
        counts.update(cur.gauges)
        return counts
