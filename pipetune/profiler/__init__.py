"""Profiler: how pipetune sees a workload (DESIGN §7).

- :func:`available_events` / :class:`EventSupport` — which catalogue events
  (PMU, software, tracepoints) work on this host, tried once and cached.
- :class:`TrialProfiler` — samples a trial's process tree with ``perf stat
  -I`` plus procfs figures; gives :class:`~pipetune.types.Sample`\\ s and
  :class:`~pipetune.types.EpochProfile`\\ s.
- :class:`PerfStatSampler`, :func:`parse_line` — the perf subprocess and its
  output parser; :class:`ProcTreeReader` — the procfs figures.
- :func:`epoch_profile`, :func:`sample_rates`, :func:`fixed_windows`,
  :func:`marker_windows` — samples to profiles, runs to epochs.
"""

from pipetune.errors import PerfUnavailableError, ProfilerError
from pipetune.procs import tree_pids
from pipetune.profiler.epochs import epoch_profile, fixed_windows, marker_windows, sample_rates
from pipetune.profiler.events import (
    GAUGES,
    PMU_EVENTS,
    PROC_FIGURES,
    REDUNDANT_EVENTS,
    SOFTWARE_EVENTS,
    TRACEPOINT_EVENTS,
    EventSupport,
    available_events,
    is_gauge,
)
from pipetune.profiler.perf_stat import (
    IntervalAssembler,
    PerfInterval,
    PerfRecord,
    PerfStatSampler,
    parse_line,
    perf_event_cgroup_available,
    perf_event_cgroup_root,
)
from pipetune.profiler.procfs import ProcTreeReader
from pipetune.profiler.trial import TargetExitedError, TrialProfiler

__all__ = [
    "GAUGES",
    "PMU_EVENTS",
    "PROC_FIGURES",
    "REDUNDANT_EVENTS",
    "SOFTWARE_EVENTS",
    "TRACEPOINT_EVENTS",
    "EventSupport",
    "IntervalAssembler",
    "PerfInterval",
    "PerfRecord",
    "PerfStatSampler",
    "PerfUnavailableError",
    "ProcTreeReader",
    "ProfilerError",
    "TargetExitedError",
    "TrialProfiler",
    "available_events",
    "epoch_profile",
    "fixed_windows",
    "is_gauge",
    "marker_windows",
    "parse_line",
    "perf_event_cgroup_available",
    "perf_event_cgroup_root",
    "sample_rates",
    "tree_pids",
]
