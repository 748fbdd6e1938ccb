"""The trial's side of the tuner: where the machine's questions are answered.

:class:`TrialSide` holds what touches the outside world for one trial — the
controller and the trial's handle, the profiler, the ground truth, the
energy source — and answers each :class:`~pipetune.tuner.records.Ask` of
the state machine (:meth:`TrialSide.answer`).  A failure is answered, not
raised: :class:`~pipetune.tuner.records.Failed` with the reason in words,
which the machine turns into DEGRADED.  Advisory questions (usage, node
capacity, the node share) answer "unknown" instead of failing.

Used by the runner's worker thread only; not thread-safe.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipetune.control.base import format_cpus
from pipetune.errors import PipetuneError
from pipetune.groundtruth import EmptyGroundTruth, GroundTruth, Hint, Match
from pipetune.groundtruth.persist import load_or_empty
from pipetune.tuner import records as r
from pipetune.tuner.base import ConfigApplier, EnergySource, Profiler, ProfilerFactory
from pipetune.types import EpochProfile, SystemConfig

log = logging.getLogger("pipetune.tuner.runner")


def what(e: BaseException) -> str:
    """An error as a decision's reason says it: our own errors by their
    message, anything else (a bug) with its type."""
    return str(e) if isinstance(e, PipetuneError) else f"{type(e).__name__}: {e}"


class TrialSide:
    """One trial's controller, profiler, ground truth and energy (module docstring)."""

    def __init__(
        self,
        trial_id: str,
        pids: Sequence[int],
        *,
        controller: ConfigApplier,
        profiler_factory: ProfilerFactory,
        groundtruth: GroundTruth | str | Path | None,
        energy: EnergySource | None,
        clock: Callable[[], float],
    ) -> None:
        self.trial_id = trial_id
        self.pids = list(pids)
        self.controller = controller
        self.profiler_factory = profiler_factory
        self.groundtruth = groundtruth
        self.energy = energy
        self.clock = clock
        self.handle: Any = None  # the controller's handle of the trial, once opened
        self.applied: Any = None  # what the last apply put in force (control.Applied)
        self.profiler: Profiler | None = None

    def answer(self, q: Any) -> Any:
        """The answer to one of the machine's questions; never raises."""
        try:
            return self._answer(q)
        except Exception as e:  # the system side failed: the machine degrades
            if not isinstance(e, PipetuneError):
                log.debug("trial %s: %s failed", self.trial_id, type(q).__name__, exc_info=True)
            return r.Failed(what(e))

    def _answer(self, q: Any) -> Any:  # noqa: PLR0911 - one branch per question
        if isinstance(q, r.Apply):
            self.applied = self.controller.apply(self.handle, q.config)
            # A node allocator may give fewer cores than asked: what is in force counts.
            in_force = getattr(self.applied, "config", None)
            if not isinstance(in_force, SystemConfig):
                in_force = q.config
            # The strategy is the trial side's to put in force (a worker-group
            # restart at the boundary), not the controller's: it keeps what was asked.
            in_force = replace(in_force, parallel=q.config.parallel)
            return r.Applied(in_force, self.clock())
        if isinstance(q, r.Usage):
            return self._usage()
        if isinstance(q, r.TakeProfile):
            if self.profiler is None:
                raise PipetuneError("no profiler running")
            hi = q.hi if q.hi is not None else max(self.clock(), q.lo)
            return self.profiler.profile(q.lo, hi, epoch=q.epoch, wait_s=q.wait_s), hi
        if isinstance(q, r.MatchProfile):
            return self._match(q.profile)
        if isinstance(q, r.KnownWorkload):
            return self._hint(q.workload)
        if isinstance(q, r.Capacity):
            out = self.advisory("capacity", q.cores)
            return None if out is None else int(out)
        if isinstance(q, r.TakeShare):
            return self._take_share()
        if isinstance(q, r.OpenTrial):
            self.handle = self.controller.open_trial(self.trial_id, self.pids)
            return None
        if isinstance(q, r.Release):
            self.release()
            return None
        if isinstance(q, r.CpusNow):
            try:
                cpus = tuple(sorted(os.sched_getaffinity(self.pids[0])))
            except (OSError, IndexError):
                return (), ""
            return cpus, format_cpus(cpus)
        raise TypeError(f"unknown question {q!r}")

    def _match(self, profile: EpochProfile) -> tuple[Match | None, str]:
        """(the model's match, why the model is empty or ""); no match for
        an empty profile.  A broken model must not cost the trial: it probes."""
        src = self.groundtruth
        if isinstance(src, GroundTruth):
            model, why = src, ""
        else:
            model, why = load_or_empty(src)
            why = why if isinstance(model, EmptyGroundTruth) else ""
        if not profile.rates:
            return None, why
        try:
            return model.match(profile), why
        except Exception as e:
            return Match(cluster=None, score=0.0, config=None, reason=f"match failed: {e}"), why

    def _hint(self, workload: str) -> Hint | None:
        """The ground truth's hint for ``workload``; None when unknown or
        the model cannot say (advisory: the trial then starts at the default)."""
        src = self.groundtruth
        model = src if isinstance(src, GroundTruth) else load_or_empty(src)[0]
        try:
            return model.hint(workload)
        except Exception as e:
            log.debug("trial %s: no hint for %r: %s", self.trial_id, workload, e)
            return None

    def _usage(self) -> tuple[float, int]:
        """(memory peak MB, OOM kills); (0, 0) when unknown (usage is advisory)."""
        try:
            usage = self.controller.usage(self.handle)
        except Exception as e:
            log.debug("trial %s: usage unavailable: %s", self.trial_id, e)
            return 0.0, 0
        peak = getattr(usage, "memory_peak_mb", None) if usage is not None else None
        try:
            peak_mb = float(peak) if peak is not None and math.isfinite(float(peak)) else 0.0
            ooms = int(getattr(usage, "oom_kills", 0) or 0) if usage is not None else 0
        except (TypeError, ValueError):
            return 0.0, 0
        return peak_mb, ooms

    def advisory(self, name: str, *args: Any) -> Any:
        """An optional controller method (node sharing: ``capacity``,
        ``set_speedup``); None when absent or failing."""
        fn = getattr(self.controller, name, None)
        if fn is None or self.handle is None:
            return None
        try:
            return fn(self.handle, *args)
        except Exception as e:  # advisory: without it, go on as if alone
            log.debug("trial %s: %s unavailable: %s", self.trial_id, name, e)
            return None

    def _take_share(self) -> SystemConfig | None:
        fn = getattr(self.controller, "rebalance", None)
        if fn is None or self.handle is None:
            return None
        try:
            applied = fn(self.handle)
        except Exception as e:  # advisory: the config in force stays in force
            log.warning("trial %s: node share not updated: %s", self.trial_id, e)
            return None
        if applied is None:
            return None
        self.applied = applied
        return applied.config

    def start_profiler(self) -> float:
        """Start the profiler (raises when perf is missing or refused);
        returns how long a profile may wait for a sample: two intervals."""
        self.profiler = self.profiler_factory(self.pids)
        self.profiler.start()
        interval_ms = getattr(self.profiler, "interval_ms", 1000)
        try:
            return min(max(2.0 * float(interval_ms) / 1000.0, 0.2), 5.0)
        except (TypeError, ValueError):
            return 2.0

    def stop_profiler(self) -> None:
        prof, self.profiler = self.profiler, None
        if prof is not None:
            try:
                prof.stop()
            except Exception as e:
                log.warning("trial %s: profiler stop failed: %s", self.trial_id, e)

    def read_energy(self) -> tuple[float, str] | None:
        """(joules since the previous read, method), or None when unknown."""
        if self.energy is None:
            return None
        try:
            joules, method = self.energy.interval()
            return float(joules), str(method)
        except Exception as e:
            log.debug("trial %s: energy unavailable: %s", self.trial_id, e)
            return None

    def release(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            try:
                self.controller.close_trial(handle)
            except Exception as e:
                log.warning("trial %s: releasing the trial's cgroup failed: %s",
                            self.trial_id, e)
