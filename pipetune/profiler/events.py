"""The event catalogue and what this host supports of it.

- :data:`PMU_EVENTS` — the hardware events of the paper (generic perf names),
  :data:`VENDOR_PMU_EVENTS` — vendor-specific ones, tried only where the
  host's PMU lists them in sysfs.
- :data:`SOFTWARE_EVENTS` and :data:`TRACEPOINT_EVENTS` — kernel-side
  figures that work on hosts without a PMU (most VMs).
- :data:`PROC_FIGURES` — the procfs/psutil figures merged into every sample
  (see :mod:`pipetune.profiler.procfs`).
- :func:`available_events` — tries the catalogue once per process and perf
  binary, and returns an :class:`EventSupport` that says which events work
  and, when perf cannot be used at all, why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Generic perf names of the paper's PMU events, in order of importance.
PMU_EVENTS: tuple[str, ...] = (
    "cycles",
    "instructions",
    "cache-references",
    "cache-misses",
    "branches",
    "branch-misses",
    "LLC-loads",
    "LLC-load-misses",
    "dTLB-load-misses",
    "L1-dcache-load-misses",
    "bus-cycles",
    "ref-cycles",
    "L1-dcache-loads",
    "L1-dcache-stores",
    "L1-icache-load-misses",
    "LLC-stores",
    "LLC-store-misses",
    "dTLB-loads",
    "dTLB-stores",
    "dTLB-store-misses",
    "iTLB-loads",
    "iTLB-load-misses",
    "stalled-cycles-frontend",
    "stalled-cycles-backend",
)

#: Vendor-specific PMU events: (name under sysfs ``devices/cpu/events``, perf name).
VENDOR_PMU_EVENTS: tuple[tuple[str, str], ...] = (
    ("mem-loads", "cpu/mem-loads/"),
    ("mem-stores", "cpu/mem-stores/"),
)

#: How many PMU events a default profile uses: more get multiplexed onto the
#: few hardware counters, and perf's scaled estimates get noisier.
DEFAULT_PMU_COUNT = 10

SOFTWARE_EVENTS: tuple[str, ...] = (
    "task-clock",
    "context-switches",
    "cpu-migrations",
    "page-faults",
    "minor-faults",
    "major-faults",
)

#: Tracepoints: scheduling, system calls, page allocation, block I/O, files.
TRACEPOINT_EVENTS: tuple[str, ...] = (
    "sched:sched_switch",
    "sched:sched_wakeup",
    "sched:sched_migrate_task",
    "sched:sched_process_fork",
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_futex",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_fsync",
    "syscalls:sys_enter_mmap",
    "syscalls:sys_enter_munmap",
    "kmem:mm_page_alloc",
    "kmem:mm_page_free",
    "kmem:kmalloc",
    "block:block_rq_issue",
    "block:block_bio_queue",
    "filemap:mm_filemap_add_to_page_cache",
    "exceptions:page_fault_user",
)

#: Events left out of the default set because another default event counts
#: nearly the same thing, and every page fault or context switch of the trial
#: pays for each event that fires on it (measured: ~20 000 page faults/s in a
#: small torch training loop; with all three fault counters, page_fault_user,
#: mm_page_alloc and mm_page_free the trial used ~5 % more CPU, see
#: benchmarks/profiler_overhead.py).  They stay usable when asked for.
REDUNDANT_EVENTS: frozenset[str] = frozenset({
    "minor-faults",  # = page-faults - major-faults
    "exceptions:page_fault_user",  # ~ page-faults
    "kmem:mm_page_free",  # follows mm_page_alloc
    "sched:sched_switch",  # = context-switches for a task
    "sched:sched_migrate_task",  # = cpu-migrations for a task
})

#: Figures read from procfs (psutil) for the target's process tree.  Rates of
#: the cumulative ones are per second; the gauges are averaged.
PROC_FIGURES: tuple[str, ...] = (
    "proc.cpu_user_s",
    "proc.cpu_system_s",
    "proc.read_bytes",
    "proc.write_bytes",
    "proc.read_chars",
    "proc.write_chars",
    "proc.ctx_voluntary",
    "proc.ctx_involuntary",
    "proc.minor_faults",
    "proc.major_faults",
    "proc.rss_mb",
    "proc.threads",
    "proc.processes",
    "proc.cpus",
)

#: Figures that are levels, not counts: a profile averages them instead of
#: dividing by time.
GAUGES: frozenset[str] = frozenset(
    {"proc.rss_mb", "proc.threads", "proc.processes", "proc.cpus"}
)

#: perf's aliases, so that samples always use one name per event.
ALIASES: dict[str, str] = {
    "cs": "context-switches",
    "migrations": "cpu-migrations",
    "faults": "page-faults",
    "cpu-cycles": "cycles",
    "branch-instructions": "branches",
}


def is_gauge(name: str) -> bool:
    """Whether ``name`` is a level (averaged) rather than a count (divided by time)."""
    return name in GAUGES


#: An event modifier suffix: ``task-clock:u`` is what perf prints for
#: ``task-clock`` when perf_event_paranoid=2 lets it count user space only
#: (``cycles:u``, ``cpu/mem-loads/:pp``).  A tracepoint's own colon
#: (``sched:sched_switch``) is not one: the part before a modifier has no colon.
_MODIFIER = re.compile(r"^(?P<base>[^:]+|.+/):[ukhHGIpPSDWe]{1,8}$")


def canonical(event: str) -> str:
    """perf's main name for ``event`` (``cs`` → ``context-switches``), without
    a modifier suffix perf added (``task-clock:u`` → ``task-clock``)."""
    name = event.strip()
    m = _MODIFIER.match(name)
    if m:
        name = m.group("base")
    return ALIASES.get(name, name)


@dataclass(frozen=True)
class EventSupport:
    """Which catalogue events work on this host, found by trying them.

    ``perf_available`` is False when perf is missing or forbidden; ``reason``
    then says why, in words a person can act on.  ``pmu`` tells whether any
    hardware event counts here.  ``unsupported`` lists the catalogue events
    perf refused or reported ``<not supported>`` for.
    """

    perf_available: bool
    pmu: bool = False
    hardware: tuple[str, ...] = ()
    software: tuple[str, ...] = ()
    tracepoints: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = ()
    reason: str = ""
    perf_binary: str = "perf"
    perf_version: str = ""
    #: Why no tracepoint works, when perf does (e.g. a non-root user at
    #: perf_event_paranoid=2: tracefs is not readable).
    tracepoints_reason: str = ""

    @property
    def all(self) -> tuple[str, ...]:
        return self.hardware + self.software + self.tracepoints

    def default_events(self, *, full: bool = False) -> tuple[str, ...]:
        """What a profile should use on this host: the first
        :data:`DEFAULT_PMU_COUNT` hardware events and the software events and
        tracepoints, less :data:`REDUNDANT_EVENTS` unless ``full``.  Empty
        when perf cannot be used."""
        if not self.perf_available:
            return ()
        events = self.hardware[:DEFAULT_PMU_COUNT] + self.software + self.tracepoints
        if full:
            return events
        return tuple(e for e in events if e not in REDUNDANT_EVENTS)


_cache: dict[str, EventSupport] = {}
_cache_lock = threading.Lock()


def available_events(
    perf_binary: str = "perf",
    *,
    refresh: bool = False,
    sysfs_root: str | os.PathLike[str] = "/sys",
    timeout_s: float = 20.0,
) -> EventSupport:
    """Try the catalogue on this host once per process (cached per binary).

    Args:
        perf_binary: the perf executable (a path or a name on ``$PATH``).
        refresh: probe again instead of using the cached answer.
        sysfs_root: where ``bus/event_source/devices`` lives (tests point it
            at a tree in ``tmp_path``); it decides which vendor events to try.
        timeout_s: limit for each probe run.

    Returns:
        An :class:`EventSupport`.  Never raises for a host that cannot run
        perf: ``perf_available`` is then False and ``reason`` says why.
    """
    key = f"{perf_binary}|{sysfs_root}"
    with _cache_lock:
        if not refresh and key in _cache:
            return _cache[key]
        support = _probe(perf_binary, Path(sysfs_root), timeout_s)
        _cache[key] = support
    if support.perf_available:
        log.info(
            "perf %s: %d hardware, %d software, %d tracepoint events usable%s",
            support.perf_version or "?", len(support.hardware), len(support.software),
            len(support.tracepoints), "" if support.pmu else " (no PMU on this host)",
        )
    else:
        log.warning("perf unusable: %s", support.reason)
    return support


def _vendor_events(sysfs_root: Path) -> list[str]:
    events_dir = sysfs_root / "bus" / "event_source" / "devices" / "cpu" / "events"
    return [perf_name for sysfs_name, perf_name in VENDOR_PMU_EVENTS
            if (events_dir / sysfs_name).exists()]


def _probe(perf_binary: str, sysfs_root: Path, timeout_s: float) -> EventSupport:
    path = shutil.which(perf_binary)
    if path is None:
        return EventSupport(False, reason=f"perf binary {perf_binary!r} not found "
                            "(install linux-perf / linux-tools for this kernel)",
                            perf_binary=perf_binary)
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=timeout_s).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return EventSupport(False, reason=f"{perf_binary} --version failed: {e}",
                            perf_binary=perf_binary)
    version = version.removeprefix("perf version ").strip()
    # The first software event decides whether perf works at all here.
    ok, status, why = _try_events(path, ["task-clock"], timeout_s)
    if not ok or status.get("task-clock") != "counted":
        return EventSupport(False, reason=why or _forbidden_reason("task-clock", ""),
                            perf_binary=perf_binary, perf_version=version)
    candidates = (list(PMU_EVENTS) + _vendor_events(sysfs_root) + list(SOFTWARE_EVENTS)
                  + list(TRACEPOINT_EVENTS))
    statuses = _try_batch(path, candidates, timeout_s)
    usable = [e for e in candidates if statuses.get(e) == "counted"]
    hardware = tuple(e for e in usable if e in PMU_EVENTS or e.startswith("cpu/"))
    software = tuple(e for e in usable if e in SOFTWARE_EVENTS)
    tracepoints = tuple(e for e in usable if e in TRACEPOINT_EVENTS)
    tracepoints_reason = ""
    if not tracepoints:
        _, _, why = _try_events(path, TRACEPOINT_EVENTS[:1], timeout_s)
        tracepoints_reason = why or "perf counted none of them here"
    return EventSupport(
        True,
        pmu=bool(hardware),
        hardware=hardware,
        software=software,
        tracepoints=tracepoints,
        unsupported=tuple(e for e in candidates if statuses.get(e) != "counted"),
        perf_binary=perf_binary,
        perf_version=version,
        tracepoints_reason=tracepoints_reason,
    )


def _forbidden_reason(event: str, err: str) -> str:
    paranoid = "?"
    with contextlib.suppress(OSError):
        paranoid = Path("/proc/sys/kernel/perf_event_paranoid").read_text().strip()
    try:
        level = int(paranoid)
    except ValueError:
        level = None
    if level is not None and level > 2:
        # Debian's extra level: no perf at all for non-root users.
        fix = ("lower it to 2 for user-space counts of your own processes, "
               "run as root, or grant CAP_PERFMON")
    else:
        # At <= 2 a user counts its own processes' software events already;
        # what is left (tracepoints, kernel-side counts) needs privilege.
        fix = "run as root or grant CAP_PERFMON (tracepoints and kernel counts need it)"
    text = f"perf may not count {event} (kernel.perf_event_paranoid={paranoid}; {fix})"
    return f"{text}: {err}" if err else text


def _try_batch(path: str, events: Sequence[str], timeout_s: float) -> dict[str, str]:
    """Status per event; a batch perf refuses to parse is split in halves
    until the offending event is alone (one rejected name costs log2(n) runs)."""
    if not events:
        return {}
    ok, status, _ = _try_events(path, events, timeout_s)
    if ok:
        return status
    if len(events) == 1:
        return {events[0]: "rejected"}
    mid = len(events) // 2
    return {**_try_batch(path, events[:mid], timeout_s),
            **_try_batch(path, events[mid:], timeout_s)}


def _try_events(path: str, events: Iterable[str], timeout_s: float
                ) -> tuple[bool, dict[str, str], str]:
    """Run ``perf stat -x ';' -e EVENTS -- true``.

    Returns (perf accepted the event list, {event: "counted" | "not
    supported"}, error text).  ``<not counted>`` means the event exists but
    did not run during ``true``: it is usable.
    """
    from pipetune.profiler.perf_stat import parse_line  # perf_stat imports us

    events = list(events)
    try:
        proc = subprocess.run(
            [path, "stat", "-x", ";", "-e", ",".join(events), "--", "true"],
            capture_output=True, text=True, timeout=timeout_s,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, {}, f"perf stat failed to run: {e}"
    status: dict[str, str] = {}
    wanted = {canonical(e): e for e in events}
    for line in proc.stderr.splitlines():
        rec = parse_line(line, interval=False)
        if rec is None:
            continue
        name = wanted.get(canonical(rec.event), rec.event)
        status[name] = "not supported" if rec.not_supported else "counted"
    if proc.returncode != 0 or not status:
        err = " ".join(line.strip() for line in proc.stderr.splitlines()
                       if line.strip() and not line.lstrip().startswith(("Usage", "-e,")))
        err = err[:300]
        if "ermission" in proc.stderr or "paranoid" in proc.stderr:
            return False, {}, _forbidden_reason(events[0], err)
        return False, {}, f"perf stat rejected {','.join(events)[:120]}: {err}"
    return True, status, ""
