"""What the tuner's runner needs from its collaborators, as protocols.

The real ones: ``pipetune.profiler.TrialProfiler``, a ``pipetune.control``
controller (local, or the node daemon's ``DaemonController``),
``pipetune.energy.TrialEnergy`` and ``pipetune.store.Store``; the unit
tests pass fakes (tests/tuner/tuner_fakes.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pipetune.types import Decision, EpochProfile, EpochResult, SystemConfig, TrialRef


class Profiler(Protocol):
    """``pipetune.profiler.TrialProfiler``'s contract as the tuner uses it."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def profile(
        self, start: float, end: float, *, epoch: int = 0, warmup_s: float = 0.0,
        wait_s: float = 0.0,
    ) -> EpochProfile: ...


ProfilerFactory = Callable[[Sequence[int]], Profiler]


class ConfigApplier(Protocol):
    """``pipetune.control.Controller``'s contract as the tuner uses it
    (``capacity``, ``rebalance`` and ``set_speedup`` are optional: a
    controller that shares a node has them)."""

    def open_trial(self, trial_id: str, pids: Sequence[int]) -> Any: ...
    def apply(self, handle: Any, config: SystemConfig, *, cpus: Sequence[int] | None = None,
              cpu_quota: float | None = None) -> Any: ...
    def usage(self, handle: Any) -> Any: ...  # .memory_peak_mb, .oom_kills
    def close_trial(self, handle: Any) -> None: ...


class EnergySource(Protocol):
    """``pipetune.energy.TrialEnergy``: joules since the previous call, and how measured."""

    def interval(self) -> tuple[float, str]: ...


class StoreSink(Protocol):
    def write_decision(self, ref: TrialRef, decision: Decision, *,
                       time_s: float | None = None) -> None: ...
    def write_epoch(self, ref: TrialRef, result: EpochResult, *, phase: str,
                    profile: EpochProfile | None = None, time_s: float | None = None) -> None: ...
    def write_groundtruth(self, *, workload: str, profile: EpochProfile, config: SystemConfig,
                          objective: str, value: float, ref: TrialRef | None = None,
                          time_s: float | None = None) -> None: ...
