"""The SystemTuner: Algorithm 1 of the paper as an explicit state machine.

One tuner per trial.  The training loop reports boundaries — ``epoch_start``,
``window_end`` (optional step windows inside an epoch) and ``epoch_end`` —
and adopts :meth:`SystemTuner.threads_to_use` at its next boundary.  Those
calls only put an event on a queue and return (microseconds); the tuner's
own worker thread does everything slow: profile, match, apply, store.

States and transitions (all of them happen in :meth:`SystemTuner._handle`
and :meth:`SystemTuner._transition`; nothing else changes ``state``)::

    START ──start()──► PROFILING
    PROFILING ──profile matched (score ≥ threshold)──► SETTLED   (decision MATCHED)
    PROFILING ──no match──► PROBING                               (decision PROBE)
    PROFILING ──no epochs left to probe / one config──► SETTLED   (decision FALLBACK)
    PROBING ──slot measured, more to try──► PROBING               (decision PROBE)
    PROBING ──strategy done──► SETTLED(best)                      (decision SETTLED,
                                                                   ground-truth record)
    any ──system-side error (perf, cgroup, OOM, bug)──► DEGRADED  (decision DEGRADED)

DEGRADED restores the default config where it still can, stops profiling,
and from then on does nothing: training continues untouched.  No public
method of the tuner raises into the training thread.

Taking the profile: the profiler needs a while to attach (perf's start-up,
longer on a loaded host), during which the training runs on and its
boundaries queue up.  So the profile window starts where the samples do (the
later of the first epoch's start + ``warmup_s`` and the profiler's start),
``profile_min_s`` counts sampled seconds, and a window no sample covers yet
runs on to the present (the default is still in force) and waits for one.
A loop that reports step windows is profiled at the first window by which
``profile_min_s`` is sampled, mid-epoch, so the decision does not wait for
the end of a long epoch run at a possibly poor default.
The profile is taken early when waiting for ``profile_min_s`` would leave the
trial too few epochs to probe (:meth:`SystemTuner._profile_deadline`); the
epochs counted are those the training finished, queued ones included.  How
the profile was taken, when unusual, is said in the decision; an empty one is
never matched and never becomes a ground-truth record.

Measuring a probe (DESIGN §6): the tuner keeps the training loop's boundary
marks (time, steps).  The interval between two consecutive marks of one
epoch counts for a config only if it started at least ``warmup_s`` after the
config was applied, so warm-up and mixed windows are excluded.  A loop that
reports only epochs has one interval per epoch, which can never start after
the warm-up; then an interval in which the config was in force for at least
``1 - grace`` of it counts (its warm-up included, said in the decision).
Report windows (``window_end``) for precise probes and for sub-epoch
successive halving.

Collaborators are injected (small protocols below), so the state machine is
tested with fakes and runs for real with ``pipetune.profiler.TrialProfiler``
and a ``pipetune.control`` controller.

Embedding it without Ray (the training loop's side)::

    tuner = SystemTuner(TrialRef(job, trial), space, pids=[os.getpid()],
                        controller=detect_controller(),
                        profiler_factory=lambda pids: TrialProfiler(pids),
                        groundtruth=settings.model, store=store, workload="lenet5",
                        total_epochs=epochs)
    tuner.start()
    for epoch in range(epochs):
        sync_threads(tuner.threads_to_use())
        tuner.epoch_start(epoch)
        for step, batch in enumerate(loader, 1):
            train_step(batch)
            if step % 50 == 0:
                tuner.window_end(epoch, step)      # optional: sub-epoch probing
        tuner.epoch_end(epoch, step, {"loss": loss})
    tuner.close()
"""

from __future__ import annotations

import enum
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipetune.control.base import format_cpus
from pipetune.errors import ConfigError, NotSupportedError, PipetuneError
from pipetune.groundtruth import EmptyGroundTruth, GroundTruth, Match, check_threshold
from pipetune.groundtruth.persist import load_or_empty
from pipetune.probing import (
    DEFAULT_MEMORY_MARGIN,
    Measurement,
    Objective,
    ProbeStrategy,
    ProbeUnit,
    make_strategy,
    safe_candidates,
)
from pipetune.types import (
    Decision,
    DecisionKind,
    EpochProfile,
    EpochResult,
    SystemConfig,
    SystemSpace,
    TrialRef,
)

log = logging.getLogger(__name__)


def _what(e: BaseException) -> str:
    """An error as a decision's reason says it: our own errors by their
    message, anything else (a bug) with its type."""
    return str(e) if isinstance(e, PipetuneError) else f"{type(e).__name__}: {e}"


# -- collaborators (protocols; real ones: pipetune.profiler, pipetune.control, ...) --------


class Profiler(Protocol):
    """``pipetune.profiler.TrialProfiler``'s contract as the tuner uses it."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def profile(
        self, start: float, end: float, *, epoch: int = 0, warmup_s: float = 0.0,
        wait_s: float = 0.0,
    ) -> EpochProfile: ...


ProfilerFactory = Callable[[Sequence[int]], Profiler]


class Controller(Protocol):
    """``pipetune.control.Controller``'s contract as the tuner uses it."""

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


# -- states and events -------------------------------------------------------------------


class TunerState(str, enum.Enum):
    START = "start"
    PROFILING = "profiling"
    PROBING = "probing"
    SETTLED = "settled"
    DEGRADED = "degraded"


#: Allowed transitions; anything else is a bug (and sends the tuner to DEGRADED).
TRANSITIONS: dict[TunerState, frozenset[TunerState]] = {
    TunerState.START: frozenset({TunerState.PROFILING, TunerState.DEGRADED}),
    TunerState.PROFILING: frozenset({TunerState.SETTLED, TunerState.PROBING, TunerState.DEGRADED}),
    TunerState.PROBING: frozenset({TunerState.PROBING, TunerState.SETTLED, TunerState.DEGRADED}),
    TunerState.SETTLED: frozenset({TunerState.DEGRADED}),
    TunerState.DEGRADED: frozenset(),
}


class _Kind(enum.Enum):
    START = "start"
    EPOCH_START = "epoch_start"
    WINDOW_END = "window_end"
    EPOCH_END = "epoch_end"
    REASSERT = "reassert"
    REBALANCE = "rebalance"
    CLOSE = "close"


@dataclass(frozen=True)
class _Event:
    kind: _Kind
    t: float
    epoch: int = 0
    steps: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    seq: int = 0


@dataclass
class _Interval:
    t0: float
    t1: float
    steps: int
    energy_j: float | None


@dataclass
class _Slot:
    """One probe measurement in progress: ``config`` since ``applied_at``."""

    config: SystemConfig
    applied_at: float
    windows: int  # counted windows wanted (window strategies)
    oom_kills_at_start: int = 0
    intervals: list[_Interval] = field(default_factory=list)


class SystemTuner:
    """Tunes one trial's system config while it trains (module docstring).

    Args:
        ref: job/trial/node of the trial (store tags).
        space: the configs allowed; ``space.default`` runs while profiling.
        pids: the trial's processes (the training process; children follow).
        controller: applies configs (``pipetune.control``).
        profiler_factory: ``pids -> Profiler`` (``pipetune.profiler.TrialProfiler``).
        groundtruth: a model, a model file path, or None (every workload probes).
        store: where decisions, epochs and the ground-truth record go (optional).
        energy: per-trial energy source, needed for energy/edp objectives.
        workload: the workload's name, kept in the ground-truth record.
        objective: runtime | energy | edp | resource_time.
        strategy: grid | one_at_a_time | halving.
        threshold: similarity in [0, 1] needed to skip probing.
        warmup_s: seconds after a config change not counted in a probe.
        probe_min_s: seconds a whole-epoch probe measures at least: when
            epochs are shorter, a probe spans several of them, as long as
            the epochs left still fit the rest of the plan (one short epoch
            is mostly warm-up and scheduler noise; see :meth:`_slot_done`).
        profile_epochs: epochs aggregated into the profile (at least).
        profile_min_s: seconds *sampled* into the profile (at least), so very
            short epochs are aggregated until the profile has enough samples
            (default 3 s: three samples at perf's default 1 s interval).
            Both are wishes the trial's length may cut short: the profile is
            taken early (and the decision says so) when waiting longer would
            leave too few epochs to probe (see :meth:`_profile_deadline`).
        total_epochs: the trial's epochs, so a plan never needs more than are left.
        memory_margin: memory candidates stay ≥ observed peak × (1 + margin).
        halving_min_windows / halving_eta: successive-halving parameters.
        grace: share of an interval a config may have missed and still count
            (epoch-only loops; see module docstring).
        clock: seconds since the epoch (``time.time``; a fake in tests).  The
            profiler windows use the same clock.
    """

    def __init__(
        self,
        ref: TrialRef,
        space: SystemSpace,
        *,
        pids: Sequence[int],
        controller: Controller,
        profiler_factory: ProfilerFactory,
        groundtruth: GroundTruth | str | Path | None = None,
        store: StoreSink | None = None,
        energy: EnergySource | None = None,
        workload: str = "",
        objective: str = "runtime",
        strategy: str = "grid",
        threshold: float = 0.8,
        warmup_s: float = 1.0,
        probe_min_s: float = 2.0,
        profile_epochs: int = 1,
        profile_min_s: float = 3.0,
        total_epochs: int | None = None,
        memory_margin: float = DEFAULT_MEMORY_MARGIN,
        halving_min_windows: int = 1,
        halving_eta: int = 2,
        grace: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Bad arguments are the caller's bug at set-up time (before training):
        # these raise ConfigError; nothing after __init__ raises.
        self.objective = Objective.parse(objective)
        self.threshold = check_threshold(threshold)
        if strategy not in ("grid", "one_at_a_time", "halving"):
            raise ConfigError(f"strategy {strategy!r}: must be grid, one_at_a_time or halving")
        if profile_epochs < 1:
            raise ConfigError(f"profile_epochs={profile_epochs}: must be >= 1")
        if warmup_s < 0:
            raise ConfigError(f"warmup_s={warmup_s}: must be >= 0")
        if probe_min_s < 0:
            raise ConfigError(f"probe_min_s={probe_min_s}: must be >= 0")
        self.ref = ref
        self.space = space
        self.default: SystemConfig = space.default  # type: ignore[assignment]
        self.pids = list(pids)
        self.controller = controller
        self.profiler_factory = profiler_factory
        self._groundtruth_src = groundtruth
        self.store = store
        self.energy = energy
        self.workload = workload
        self.strategy_name = strategy
        self.warmup_s = float(warmup_s)
        self.probe_min_s = float(probe_min_s)
        self.profile_epochs = int(profile_epochs)
        self.profile_min_s = float(profile_min_s)
        self.total_epochs = total_epochs
        self.memory_margin = memory_margin
        self.halving_min_windows = halving_min_windows
        self.halving_eta = halving_eta
        self.grace = grace
        self.clock = clock

        self.state = TunerState.START
        self.reason = ""  # why the tuner is in its state (DEGRADED: what failed)
        self.decisions: list[Decision] = []
        self.profile: EpochProfile | None = None
        self.match: Match | None = None
        self.best: tuple[SystemConfig, float] | None = None
        self.recorded = False  # a ground-truth record was written for this trial
        self.applied: Any = None  # what the last apply put in force (control.Applied)
        self._speeds: dict[int, float] = {}  # cores -> steps/s measured by probes
        self._config = self.default  # in force (read by the training thread)
        self.started_at: float | None = None  # clock() at trial start
        self.settled_at: float | None = None  # clock() when a config was settled

        self._trial_handle: Any = None
        self._profiler: Profiler | None = None
        self._strategy: ProbeStrategy | None = None
        self._slot: _Slot | None = None
        self._mark: tuple[int, float, int] | None = None  # (epoch, t, steps) of the last mark
        self._epoch_config: dict[int, SystemConfig] = {}
        self._epoch_t0: dict[int, float] = {}
        # The trial's energy since the previous epoch ended (None once a read
        # failed): the epoch record carries it, as the baselines' records do.
        self._epoch_energy_j: float | None = 0.0
        self._energy_methods: set[str] = set()
        self._profile_t0: float | None = None
        self._sampling_from: float | None = None  # clock() once the profiler counts
        self._profile_notes: list[str] = []  # how the profile was taken, if unusual
        self._profiled_epochs = 0
        self._window_profile: EpochProfile | None = None  # taken mid-epoch, not yet stored
        self._windows_in_epoch = 0
        self._windows_per_epoch = 0
        self._epochs_done = 0  # epochs whose end the worker has handled
        # Epochs whose end the training thread has posted: ahead of
        # _epochs_done while the worker lags (e.g. blocked in profiler.start()).
        self._epochs_posted = 0
        self._closing = False  # close() was called: later posts are dropped
        self._closed = False

        self._queue: queue.Queue[_Event] = queue.Queue()
        self._idle = threading.Condition()
        self._busy = 0
        # Boundaries posted / decided: the training thread waits for its
        # boundary to be decided, so threads follow cores at that boundary.
        self._posted_seq = 0
        self._decided_seq = 0
        # Slow clean-up (stopping perf) that waits until a boundary is decided.
        self._after_decision: list[Callable[[], None]] = []
        self._thread = threading.Thread(
            target=self._run, name=f"pipetune-tuner-{ref.trial}", daemon=True
        )
        self._thread.start()

    @classmethod
    def from_settings(cls, ref: TrialRef, space: SystemSpace, settings: Any,
                      **kwargs: Any) -> SystemTuner:
        """A tuner with threshold, objective, warm-up and model file from
        :class:`pipetune.config.Settings` (keyword arguments win)."""
        defaults = {
            "threshold": settings.threshold,
            "objective": settings.objective,
            "warmup_s": settings.warmup_s,
            "probe_min_s": settings.probe_min_s,
            "groundtruth": settings.model,
        }
        defaults.update(kwargs)
        return cls(ref, space, **defaults)

    # -- the training thread's API: never blocks, never raises -------------------------------

    def start(self) -> None:
        """Trial start: open the trial's cgroup, apply the default, start profiling."""
        self._post(_Kind.START)

    def epoch_start(self, epoch: int) -> None:
        self._post(_Kind.EPOCH_START, epoch)

    def window_end(self, epoch: int, steps: int) -> None:
        """A step window inside ``epoch`` ended; ``steps`` = steps done in the
        epoch so far (cumulative)."""
        self._post(_Kind.WINDOW_END, epoch, steps)

    def epoch_end(self, epoch: int, steps: int, metrics: Mapping[str, float] | None = None) -> None:
        """``epoch`` ended after ``steps`` training steps."""
        self._post(_Kind.EPOCH_END, epoch, steps, metrics)

    def rebalance(self) -> None:
        """A boundary: take the node share the allocator gives now (other
        trials started or ended), so threads follow at this boundary."""
        self._post(_Kind.REBALANCE)

    def reassert(self) -> None:
        """Apply the config in force again: the trial's limits were lifted
        from outside (a restarted daemon releases the groups of the one that
        died); the controller opens the trial again where it must."""
        self._post(_Kind.REASSERT)

    def threads_to_use(self) -> int:
        """Threads the training thread should use now (``sync_threads`` it at
        the next boundary): the cores of the config in force."""
        return self._config.cores

    @property
    def config(self) -> SystemConfig:
        """The system config in force now."""
        return self._config

    def summary(self) -> dict[str, Any]:
        """What to report with the trial's metrics: what was applied and why."""
        last = self.decisions[-1] if self.decisions else None
        return {
            "pipetune/state": self.state.value,
            "pipetune/config": str(self._config),
            "pipetune/threads": self._config.cores,
            "pipetune/decision": last.kind.value if last else "",
            "pipetune/reason": last.reason if last else self.reason,
        }

    def wait_decided(self, timeout_s: float = 5.0) -> bool:
        """Wait until every boundary posted so far is *decided* (its config
        applied), not its slow clean-up; False after ``timeout_s``.

        The training thread calls it at a boundary before it adopts
        :meth:`threads_to_use`, so the thread count changes at the same
        boundary as the cpuset and quota, never an epoch later.  Usually
        milliseconds; at most a sample interval or two when the profile is
        taken (it waits for the sample covering the epoch's end)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            want = self._posted_seq
            while self._decided_seq < want:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until every event posted so far is handled (tests, trial end)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._busy > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Trial end: handle what is queued, stop profiling, release the trial's
        cgroup.  Safe to call twice."""
        if self._closing:
            return
        self._post(_Kind.CLOSE)
        self._closing = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("trial %s: tuner did not stop within %.0f s", self.ref.trial, timeout_s)

    def __enter__(self) -> SystemTuner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, kind: _Kind, epoch: int = 0, steps: int = 0,
              metrics: Mapping[str, float] | None = None) -> None:
        try:
            if self._closing:
                return
            with self._idle:
                self._posted_seq += 1
                ev = _Event(kind, self.clock(), int(epoch), int(steps), dict(metrics or {}),
                            self._posted_seq)
                if kind is _Kind.EPOCH_END:
                    self._epochs_posted = max(self._epochs_posted, ev.epoch + 1)
                self._busy += 1
                self._queue.put_nowait(ev)
        except Exception:  # never raise into training
            log.exception("trial %s: could not post %s", self.ref.trial, kind.value)

    # -- the worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            ev = self._queue.get()
            try:
                self._handle_safely(ev)
                with self._idle:
                    self._decided_seq = max(self._decided_seq, ev.seq)
                    self._idle.notify_all()
                later, self._after_decision = self._after_decision, []
                for fn in later:
                    fn()
            finally:
                with self._idle:
                    self._decided_seq = max(self._decided_seq, ev.seq)
                    self._busy -= 1
                    self._idle.notify_all()
            if ev.kind is _Kind.CLOSE:
                return

    def _handle_safely(self, ev: _Event) -> None:
        try:
            self._handle(ev)
        except Exception as e:  # system side failed (or a bug): degrade, never raise
            if not isinstance(e, PipetuneError):
                log.exception("trial %s: tuner bug on %s", self.ref.trial, ev.kind.value)
            self._degrade(f"{ev.kind.value}: {_what(e)}", ev.epoch)

    def _handle(self, ev: _Event) -> None:
        """The one place that maps (state, event) to work and transitions."""
        if ev.kind is _Kind.CLOSE:
            self._shutdown()
            return
        if self.state is TunerState.DEGRADED:
            # Nothing is tuned any more, but every epoch is still recorded
            # (what ran, how long, its metrics): a degraded trial's report
            # must not be empty.
            if ev.kind is _Kind.EPOCH_START:
                self._epoch_config[ev.epoch] = self._config
                self._epoch_t0[ev.epoch] = ev.t
            elif ev.kind is _Kind.EPOCH_END:
                self._epoch_energy_j, self._energy_methods = None, set()
                self._write_epoch(ev, None)
            return
        if ev.kind is _Kind.START:
            if self.state is TunerState.START:
                self._begin()
            return
        if ev.kind is _Kind.REBALANCE:
            self._rebalance()
            return
        if ev.kind is _Kind.REASSERT:
            if self._trial_handle is not None:
                log.warning("trial %s: its limits were lifted from outside (a restarted "
                            "daemon released it?): %s applied again", self.ref.trial,
                            self._config)
                self._apply(self._config)
            return
        if self.state is TunerState.START:  # boundaries before start(): start now
            self._begin()
        energy = self._read_energy()
        if energy is None or self._epoch_energy_j is None:
            self._epoch_energy_j = None
        else:
            self._epoch_energy_j += energy
        if ev.kind is _Kind.EPOCH_START:
            self._mark = (ev.epoch, ev.t, 0)
            self._windows_in_epoch = 0
            self._epoch_config[ev.epoch] = self._config
            self._epoch_t0[ev.epoch] = ev.t
            if self.state is TunerState.PROFILING and self._profile_t0 is None:
                self._profile_t0 = ev.t
            return
        interval = self._close_interval(ev, energy)
        if ev.kind is _Kind.WINDOW_END:
            self._windows_in_epoch += 1
            if self.state is TunerState.PROBING and interval is not None:
                self._probe_progress(ev, epoch_over=False)
            elif self.state is TunerState.PROFILING and self._profile_at_window(ev):
                self._after_profile(ev)
                self._after_decision.append(self._stop_profiler)
            return
        # EPOCH_END
        self._windows_in_epoch += 1
        self._mark = None
        self._epochs_done = max(self._epochs_done, ev.epoch + 1)
        profile = None
        if self.state is TunerState.PROFILING:
            self._windows_per_epoch = self._windows_in_epoch
            self._profiled_epochs += 1
            profile = self._maybe_profile(ev)
        if profile is None and self._window_profile is not None:
            # taken at a step window of this epoch: the epoch's record carries it
            profile, self._window_profile = self._window_profile, None
        self._write_epoch(ev, profile)
        if self.state is TunerState.PROFILING and profile is not None:
            self._after_profile(ev)
            # Stopped once the decision is out: stopping perf takes a while,
            # and the training thread waits for the decision, not for perf.
            self._after_decision.append(self._stop_profiler)
        elif self.state is TunerState.PROBING:
            self._probe_progress(ev, epoch_over=True)

    def _transition(self, new: TunerState, reason: str) -> None:
        if new not in TRANSITIONS[self.state] and new is not self.state:
            raise RuntimeError(f"illegal tuner transition {self.state.value} -> {new.value}")
        if new is TunerState.PROFILING:
            self.started_at = self.clock()
        if new is TunerState.SETTLED and self.settled_at is None:
            self.settled_at = self.clock()
        if new is not self.state:
            log.info("trial %s: %s -> %s (%s)", self.ref.trial, self.state.value, new.value,
                     reason)
        self.state = new
        self.reason = reason

    # -- START → PROFILING ------------------------------------------------------------------

    def _begin(self) -> None:
        self._transition(TunerState.PROFILING, "trial started")
        self._trial_handle = self.controller.open_trial(self.ref.trial, self.pids)
        self._apply(self.default)
        # The default is in force: that is what the training thread waits for.
        # Attaching perf takes a while (more on a loaded host, and the first
        # time a process probes perf's events); the training runs on
        # meanwhile, so the boundaries queued by then predate every sample.
        self._after_decision.append(self._start_profiler)

    def _start_profiler(self) -> None:
        if self.state is not TunerState.PROFILING:
            return
        try:
            self._profiler = self.profiler_factory(self.pids)
            self._profiler.start()
        except Exception as e:  # perf missing or refused: the trial trains on untouched
            self._degrade(f"start: {_what(e)}", 0)
            return
        self._sampling_from = self.clock()

    def _maybe_profile(self, ev: _Event) -> EpochProfile | None:
        """The profile, once enough was sampled or the trial's length says
        it must be taken now; None to keep profiling.

        The window starts where the samples do: at the later of the first
        epoch's start plus the warm-up and the moment the profiler began
        counting.  ``profile_min_s`` is judged on that sampled time, not on
        the epochs' wall time (which may include the profiler's start-up)."""
        t0 = self._profile_t0 if self._profile_t0 is not None else self._epoch_t0.get(ev.epoch)
        if t0 is None or self._profiler is None:
            return None
        sampling_from = self._sampling_from if self._sampling_from is not None else t0
        late_s = max(sampling_from - t0, 0.0)  # how late the profiler began counting
        lo = max(t0 + self.warmup_s, sampling_from)
        sampled_s = max(ev.t - lo, 0.0)
        enough = (self._profiled_epochs >= self.profile_epochs
                  and sampled_s >= self.profile_min_s)
        deadline = self._profile_deadline()
        if not enough and (deadline is None or self._trained_epochs() < deadline):
            return None
        notes: list[str] = []
        if not enough:
            left = self._epochs_left()
            purpose = (f"to leave {left} epoch(s) for probing" if left
                       else "before the trial ends")
            notes.append(
                f"profile taken at epoch {ev.epoch} after {sampled_s:.2f} s sampled "
                f"(wanted {self.profile_min_s:g} s over {self.profile_epochs} epoch(s)) "
                f"{purpose}")
        profile = None
        if lo < ev.t:
            # A sample arrives at the end of its interval, so the last partial
            # interval is usually not in yet.  A full profile can do without
            # it; one taken early is short, and that interval a large part of
            # it: wait for it, but the probe waits too, so for at most a
            # quarter of an epoch (the probe must not miss the next one).
            epoch_t0 = self._epoch_t0.get(ev.epoch)
            epoch_s = ev.t - epoch_t0 if epoch_t0 is not None else math.inf
            wait_s = 0.0 if enough else min(self._profile_wait_s(), 0.25 * epoch_s)
            profile = self._profiler.profile(lo, ev.t, epoch=ev.epoch, wait_s=wait_s)
        if profile is None or not profile.rates:
            # No sample covers the profiled epochs: they ended before the
            # profiler counted (its start-up delayed their handling), or the
            # sample covering them is not in yet.  The default is still in
            # force, so the window runs on to now, waiting for one sample.
            end = max(self.clock(), lo)
            profile = self._profiler.profile(lo, end, epoch=ev.epoch,
                                              wait_s=self._profile_wait_s())
            if profile.rates:
                notes.append(
                    f"no sample covered the profiled epochs yet (the profiler counted from "
                    f"{late_s:.2f} s into the trial): the window ran on "
                    f"{end - ev.t:.2f} s past epoch {ev.epoch}'s end and waited for a sample")
            else:
                notes.append(
                    f"profile empty: no profiler sample within {end - lo:.2f} s of sampling "
                    f"(the profiler counted from {late_s:.2f} s into the trial)")
                log.warning("trial %s: %s", self.ref.trial, notes[-1])
        self.profile = profile
        self._profile_notes = notes
        return profile

    def _profile_at_window(self, ev: _Event) -> bool:
        """Take the profile at a step window once ``profile_min_s`` is sampled,
        rather than waiting for the epoch's end; True when taken.

        Why: a long epoch at the default config may be the slowest way to run
        (two threads beside a busy neighbour ran deepcnn-mnist's epoch in 9 s
        where one core took 3 s): deciding a few sampled seconds in saves the
        rest of it, for matched and probing trials alike.  Not when the
        profile must span several epochs, nor for halving before the first
        epoch has shown how many windows an epoch has.
        """
        if (self.profile_epochs > 1 or self._profiler is None or self._profile_t0 is None
                or (self.strategy_name == "halving" and self._windows_per_epoch < 2)):
            return False
        t0 = self._profile_t0
        lo = max(t0 + self.warmup_s, self._sampling_from if self._sampling_from else t0)
        sampled_s = ev.t - lo
        if sampled_s <= 0 or sampled_s < self.profile_min_s:
            return False
        profile = self._profiler.profile(lo, ev.t, epoch=ev.epoch, wait_s=0.0)
        if profile is None or not profile.rates:
            return False  # no sample in yet: the next window or the epoch's end
        self.profile = profile
        self._window_profile = profile
        self._profile_notes = [f"profile taken in epoch {ev.epoch} at step {ev.steps} "
                               f"after {sampled_s:.2f} s sampled"]
        return True

    def _profile_wait_s(self) -> float:
        """How long to wait for a sample: two of the profiler's intervals."""
        interval_ms = getattr(self._profiler, "interval_ms", 1000)
        try:
            return min(max(2.0 * float(interval_ms) / 1000.0, 0.2), 5.0)
        except (TypeError, ValueError):
            return 2.0

    def _profile_deadline(self) -> int | None:
        """Epochs done by which the profile must be taken, whatever
        ``profile_min_s`` wants (None: no limit, the trial's length is unknown).

        The probe plan needs its slots plus the winner's epoch; one more epoch
        is kept when the trial has it, because a probe applied a little late
        (the tuner's worker lags the training loop) may miss the next epoch.
        A trial too short for the whole plan profiles one epoch, so that a
        shortened plan has the most epochs; a trial too short for any plan
        profiles as long as it likes, but decides by its last epoch."""
        if self.total_epochs is None:
            return None
        strategy, _order, _note = self._probe_plan(None)
        if strategy is None:
            return self.total_epochs
        need = self._epochs_for(strategy.slots_needed(), strategy.unit)
        spare = self.total_epochs - need
        if spare >= 2:
            return spare - 1
        if spare >= 1:
            return spare
        least = self._epochs_for(2 * strategy.slot_windows(), strategy.unit)
        return 1 if self.total_epochs - least >= 1 else self.total_epochs

    def _epochs_for(self, slots: int, unit: ProbeUnit) -> int:
        """Epochs a plan of ``slots`` needs, the winner's included (the
        inverse of :meth:`_slot_budget`)."""
        if unit is ProbeUnit.WINDOW:
            wpe = max(self._windows_per_epoch, 1)
            return math.ceil((slots + max(wpe // 2, 1)) / wpe)
        return slots + 1

    # -- PROFILING → SETTLED (match) | PROBING | SETTLED (fallback) ----------------------------

    def _groundtruth(self) -> tuple[GroundTruth, str]:
        src = self._groundtruth_src
        if isinstance(src, GroundTruth):
            return src, ""
        model, why = load_or_empty(src)
        return model, why if isinstance(model, EmptyGroundTruth) else ""

    def _after_profile(self, ev: _Event) -> None:
        assert self.profile is not None
        model, why = self._groundtruth()
        if not self.profile.rates:
            # Nothing to compare: an empty profile must not match anything.
            m = Match(cluster=None, score=0.0, config=None, reason="no profile to match")
        else:
            try:
                m = model.match(self.profile)
            except Exception as e:  # a broken model must not cost the trial: probe instead
                m = Match(cluster=None, score=0.0, config=None, reason=f"match failed: {e}")
        self.match = m
        why = why or m.reason
        notes = "".join(f"; {n}" for n in self._profile_notes)
        if m.accepted(self.threshold):
            cfg = m.config
            assert cfg is not None
            problem = self._unusable(cfg)
            if problem is None:
                self._apply(cfg)
                self._transition(TunerState.SETTLED, f"matched ({m.reason})")
                self._decide(DecisionKind.MATCHED, cfg, ev.epoch,
                             f"matched cluster {m.cluster}: {m.reason}{notes}",
                             score=m.score, threshold=self.threshold)
                self._observe(cfg)
                return
            why = f"matched cluster {m.cluster} but its config {cfg} {problem}"
        elif m.cluster is not None and m.config is None and m.score >= self.threshold:
            why = f"matched cluster {m.cluster} ({m.reason}), where no trial has probed yet"
        elif m.cluster is not None:
            why = f"no match ({m.reason} < threshold {self.threshold:.2f})"
        self._plan_probing(ev, why + notes, hint=m.config)

    def _unusable(self, cfg: SystemConfig) -> str | None:
        if cfg not in self.space.configs():
            return "is outside this trial's space"
        if not safe_candidates([cfg], self._peak_mb(), self.memory_margin)[0]:
            return "is below this trial's memory peak"
        return None

    def _probe_plan(
        self, hint: SystemConfig | None
    ) -> tuple[ProbeStrategy | None, list[SystemConfig], str]:
        """(strategy, candidates in order, note) for probing now; no strategy
        when fewer than two configs are safe to probe."""
        peak = self._peak_mb()
        configs = self.space.configs()
        safe, unsafe = safe_candidates(configs, peak, self.memory_margin)
        note = f"; {len(unsafe)} configs below memory peak {peak:.0f} MB skipped" if unsafe else ""
        capacity = self._capacity()
        if capacity is not None and capacity < max(self.space.cores):
            # Other trials share the node: a config beyond this trial's share
            # could not be put in force, so it cannot be measured either.
            safe = [c for c in safe if c.cores <= capacity]
            note += (f"; the node is shared: at most {capacity} core(s) for this trial now, "
                     "more when the other trials end")
        # Hint first: what the nearest known workload won is the likeliest winner.
        order = ([hint] if hint in safe else []) + [c for c in safe if c != hint]
        if len(order) < 2:
            return None, order, note
        name = self.strategy_name
        if name == "halving" and self._windows_per_epoch < 2:
            note += "; halving needs step windows (window_end), probing whole epochs (grid)"
            name = "grid"
        kwargs = ({"min_windows": self.halving_min_windows, "eta": self.halving_eta}
                  if name == "halving" else {})
        return make_strategy(name, self.space, order, start=self.default, **kwargs), order, note

    def _plan_probing(self, ev: _Event, why: str, hint: SystemConfig | None) -> None:
        strategy, order, note = self._probe_plan(hint)
        if strategy is None:
            self._settle_default(ev, f"{why}; nothing to probe ({len(order)} safe config(s)){note}")
            return
        budget = self._slot_budget(strategy)
        if budget is not None and (budget < 2 or not strategy.shorten(budget)):
            self._settle_default(
                ev, f"{why}; only {self._epochs_left()} epoch(s) left, too few to probe "
                f"{len(order)} configs{note}")
            return
        self._strategy = strategy
        self._transition(TunerState.PROBING, why + note)
        self._next_probe(ev, why + note)

    def _trained_epochs(self) -> int:
        """Epochs the training has finished: those the worker handled, or more
        when boundaries are still queued (the worker lags the training); a
        plan must fit the epochs the training really has left."""
        return max(self._epochs_done, self._epochs_posted)

    def _epochs_left(self) -> int | None:
        if self.total_epochs is None:
            return None
        return max(self.total_epochs - self._trained_epochs(), 0)

    def _slot_budget(self, strategy: ProbeStrategy) -> int | None:
        """Slots the plan may still use, leaving the winner at least one epoch
        (half an epoch of windows for sub-epoch probing)."""
        left = self._epochs_left()
        if left is None:
            return None
        if strategy.unit is ProbeUnit.WINDOW:
            wpe = max(self._windows_per_epoch, 1)
            return max(left * wpe - max(wpe // 2, 1), 0)
        return max(left - 1, 0)

    # -- PROBING ------------------------------------------------------------------------------

    def _next_probe(self, ev: _Event, why: str = "") -> None:
        assert self._strategy is not None
        cfg = self._strategy.next()
        if cfg is None:
            self._settle_best(ev)
            return
        ooms_before = self._oom_kills()
        self._apply(cfg)
        if self._config.cores < cfg.cores:
            # Another trial started meanwhile and the node's share is smaller
            # than this probe: measuring it now would measure another config.
            # A comparison it cannot finish teaches nothing: no winner, no record.
            self._settle_default(ev, f"probe {cfg} cannot run: another trial started and "
                                 f"this trial's share of the node is {self._config.cores} "
                                 "core(s) now")
            return
        self._slot = _Slot(cfg, self.clock(), self._strategy.slot_windows(), ooms_before)
        unit = ("epoch" if self._strategy.unit is ProbeUnit.EPOCH
                else f"{self._slot.windows} window(s)")
        reason = f"probe {cfg} for {unit} ({self._strategy.name})" + (f": {why}" if why else "")
        self._decide(DecisionKind.PROBE, cfg, ev.epoch, reason,
                     candidates=self._strategy.candidates)

    def _close_interval(self, ev: _Event, energy: float | None) -> _Interval | None:
        """The interval since the previous mark of the same epoch, given to the
        probe slot in progress if it counts for the slot's config."""
        mark, self._mark = self._mark, (ev.epoch, ev.t, ev.steps)
        if mark is None or mark[0] != ev.epoch or ev.steps < mark[2] or ev.t <= mark[1]:
            return None
        iv = _Interval(mark[1], ev.t, ev.steps - mark[2], energy)
        if self.state is TunerState.PROBING and self._slot is not None:
            self._slot.intervals.append(iv)
        return iv

    def _counted(self, slot: _Slot, *, allow_loose: bool) -> list[_Interval]:
        """Intervals that count for the slot's config: those that started after
        the warm-up; failing that (``allow_loose``: an epoch-only loop at the
        end of its epoch), those the config was in force for all but ``grace``
        of — warm-up then included, as the module docstring says."""
        strict = [iv for iv in slot.intervals
                  if iv.t0 >= slot.applied_at + self.warmup_s and iv.steps > 0]
        if strict or not allow_loose:
            return strict
        return [iv for iv in slot.intervals
                if iv.steps > 0 and iv.t0 + self.grace * (iv.t1 - iv.t0) >= slot.applied_at]

    def _probe_progress(self, ev: _Event, *, epoch_over: bool) -> None:
        slot, strategy = self._slot, self._strategy
        assert slot is not None and strategy is not None
        if strategy.unit is ProbeUnit.EPOCH:
            counted = self._counted(slot, allow_loose=epoch_over)
            done = epoch_over and self._slot_done(counted, strategy)
        else:  # sub-epoch windows exist to exclude the warm-up: never loose
            counted = self._counted(slot, allow_loose=False)
            done = len(counted) >= slot.windows
        left = self._epochs_left()
        if not done:
            if epoch_over and left == 0:
                # The trial ends; measure what we have or give up on this slot.
                if counted:
                    self._finish_slot(ev, counted)
                self._settle_best(ev)
            return
        self._finish_slot(ev, counted)
        budget = self._slot_budget(strategy)
        if budget is not None and strategy.slots_needed() > budget and not strategy.shorten(budget):
            self._settle_best(ev, note=f"; plan cut short: {left} epoch(s) left")
            return
        self._next_probe(ev)

    def _slot_done(self, counted: list[_Interval], strategy: ProbeStrategy) -> bool:
        """Whether a whole-epoch slot has measured enough at an epoch's end.

        One counted epoch is enough when it lasted ``probe_min_s``.  Shorter
        epochs are aggregated (the slot runs on into the next epoch) while the
        epochs left still hold the rest of the plan: this slot's extra epoch,
        one epoch per slot still to come and one for the winner.  Why: an
        epoch of 0.3 s measured once is mostly the config change's warm-up
        and scheduler noise, and the winner picked from it is a coin toss.
        """
        if not counted:
            return False
        if sum(iv.t1 - iv.t0 for iv in counted) >= self.probe_min_s:
            return True
        left = self._epochs_left()
        return left is not None and left < strategy.slots_needed() + 1

    def _finish_slot(self, ev: _Event, counted: list[_Interval]) -> None:
        slot, strategy = self._slot, self._strategy
        assert slot is not None and strategy is not None
        self._slot = None
        ooms = self._oom_kills()
        if ooms > slot.oom_kills_at_start:
            strategy.infeasible(slot.config, f"{ooms - slot.oom_kills_at_start} OOM kill(s)")
            log.warning("trial %s: %s caused OOM kills; marked infeasible", self.ref.trial,
                        slot.config)
            return
        energies = [iv.energy_j for iv in counted]
        m = Measurement(
            slot.config,
            seconds=sum(iv.t1 - iv.t0 for iv in counted),
            steps=sum(iv.steps for iv in counted),
            energy_j=None if any(e is None for e in energies) else sum(energies),  # type: ignore[arg-type]
        )
        try:
            value = self.objective.cost(m, self.space)
        except NotSupportedError as e:
            log.warning("trial %s: %s; using runtime", self.ref.trial, e)
            self.objective = Objective.RUNTIME
            value = self.objective.cost(m, self.space)
        strategy.observe(slot.config, value)
        if m.seconds > 0 and m.steps > 0 and slot.config.memory_mb is None:
            self._speeds[slot.config.cores] = max(self._speeds.get(slot.config.cores, 0.0),
                                                  m.steps / m.seconds)
        log.info("trial %s: probed %s: %s = %.6g over %d steps", self.ref.trial, slot.config,
                 self.objective.value, value, m.steps)

    # -- → SETTLED ------------------------------------------------------------------------------

    def _settle_best(self, ev: _Event, note: str = "") -> None:
        strategy = self._strategy
        assert strategy is not None
        best = strategy.best()
        if best is None or len(strategy.values) + len(strategy.rejected) < 2:
            # One measurement compares nothing (an infeasible config is a
            # comparison: it lost): keep the default.
            n = len(strategy.values)
            self._settle_default(ev, f"only {n} probe(s) could be measured" + note)
            return
        cfg, value = best
        self.best = best
        self._apply(cfg)
        measured = tuple(strategy.values)
        # A record without rates would teach the model nothing but noise.
        learnable = self.profile is not None and bool(self.profile.rates)
        if self.profile is not None and not learnable:
            note += "; no ground-truth record: the profile was empty"
        self._publish_speeds()
        self._transition(TunerState.SETTLED, f"best of {len(measured)} probed")
        self._decide(
            DecisionKind.SETTLED, cfg, ev.epoch,
            f"best of {len(measured)} probed by {self.objective.value} ({value:.6g})" + note,
            objective=self.objective.value, candidates=measured,
        )
        if learnable and self.store is not None:
            # (profile, winner, value): the next similar trial skips probing.
            self._store_call(self.store.write_groundtruth, workload=self.workload,
                             profile=self.profile, config=cfg, objective=self.objective.value,
                             value=value, ref=self.ref, time_s=self.clock())
            self.recorded = True

    def _settle_default(self, ev: _Event, reason: str) -> None:
        self._apply(self.default)
        self._transition(TunerState.SETTLED, reason)
        self._decide(DecisionKind.FALLBACK, self.default, ev.epoch, reason)
        self._observe(self.default)

    def _observe(self, cfg: SystemConfig) -> None:
        """Keep this trial's profile as an observation (a record that casts no
        vote, see :class:`pipetune.groundtruth.GroundTruthRecord`).  Why: once
        a workload is matched its later trials no longer probe, so without
        these the history would hold one profile per workload and could
        never learn how runs of one workload scatter — what the model's
        feature weights, ``k`` and radii are measured against."""
        if self.store is None or self.profile is None or not self.profile.rates:
            return
        self._store_call(self.store.write_groundtruth, workload=self.workload,
                         profile=self.profile, config=cfg, objective=self.objective.value,
                         value=math.nan, ref=self.ref, time_s=self.clock(), probed=False)
        self.recorded = True

    # -- → DEGRADED -------------------------------------------------------------------------------

    def _degrade(self, reason: str, epoch: int) -> None:
        if self.state is TunerState.DEGRADED:
            return
        log.warning("trial %s: tuner degraded, training continues untouched: %s",
                    self.ref.trial, reason)
        self.state = TunerState.DEGRADED  # allowed from every state (TRANSITIONS)
        self.reason = reason
        self._stop_profiler()
        restored = "default kept"
        in_force = self.default
        if self._trial_handle is not None and self._config != self.default:
            try:
                self.controller.apply(self._trial_handle, self.default)
                restored = f"default {self.default} restored"
            except Exception as e:
                self._release()
                # What confines the trial now is read back, not assumed: a
                # dead daemon's cgroup keeps its cpuset until a daemon
                # restarts and releases it.
                cpus = self._cpus_now()
                restored = f"could not restore default ({e})"
                if cpus is not None:
                    restored += f"; the trial runs on {len(cpus)} CPU(s) ({format_cpus(cpus)})"
                    in_force = SystemConfig(len(cpus), None, self.default.gpus)
        self._config = in_force
        self._decide(DecisionKind.DEGRADED, in_force, epoch, f"{reason}; {restored}")

    def _cpus_now(self) -> list[int] | None:
        try:
            return sorted(os.sched_getaffinity(self.pids[0]))
        except (OSError, IndexError):
            return None

    # -- helpers --------------------------------------------------------------------------------

    def _apply(self, cfg: SystemConfig) -> None:
        self.applied = self.controller.apply(self._trial_handle, cfg)
        # A node allocator may give fewer cores than asked (the trial's share
        # of a node other trials use too): what is in force is what counts.
        in_force = getattr(self.applied, "config", None)
        self._config = in_force if isinstance(in_force, SystemConfig) else cfg

    def _rebalance(self) -> None:
        """Take the share of the node the allocator gives this trial now
        (other trials started or ended).  Never inside a probe: that slot
        measures one config, so the share waits for the probe's end."""
        fn = getattr(self.controller, "rebalance", None)
        if fn is None or self._trial_handle is None or self._slot is not None:
            return
        try:
            applied = fn(self._trial_handle)
        except Exception as e:  # advisory: the config in force stays in force
            log.warning("trial %s: node share not updated: %s", self.ref.trial, e)
            return
        if applied is None:
            return
        before, self.applied = self._config, applied
        self._config = applied.config
        log.info("trial %s: share of the node moved: %s -> %s on cpus %s", self.ref.trial,
                 before, self._config, format_cpus(applied.cpus))

    def _capacity(self) -> int | None:
        """Cores this trial would get now if it asked for the space's most
        (None: the controller does not share a node)."""
        fn = getattr(self.controller, "capacity", None)
        if fn is None or self._trial_handle is None:
            return None
        try:
            return int(fn(self._trial_handle, max(self.space.cores)))
        except Exception as e:  # advisory: without it, probe the whole space
            log.debug("trial %s: capacity unknown: %s", self.ref.trial, e)
            return None

    def _publish_speeds(self) -> None:
        """Tell the node allocator how this trial's speed grows with cores
        (steps per second measured by its probes), so it shares the node by
        marginal speed-up."""
        fn = getattr(self.controller, "set_speedup", None)
        if fn is None or self._trial_handle is None or len(self._speeds) < 2:
            return
        try:
            fn(self._trial_handle, dict(self._speeds))
        except Exception as e:  # advisory
            log.debug("trial %s: speed-up not published: %s", self.ref.trial, e)

    def _usage(self) -> Any:
        try:
            if self._trial_handle is None:
                return None
            return self.controller.usage(self._trial_handle)
        except Exception as e:  # usage is advisory: no figure, not a failure
            log.debug("trial %s: usage unavailable: %s", self.ref.trial, e)
            return None

    def _oom_kills(self) -> int:
        usage = self._usage()
        try:
            return int(getattr(usage, "oom_kills", 0) or 0) if usage is not None else 0
        except (TypeError, ValueError):
            return 0

    def _peak_mb(self) -> float:
        usage = self._usage()
        peak = getattr(usage, "memory_peak_mb", None) if usage is not None else None
        return float(peak) if peak is not None and math.isfinite(float(peak)) else 0.0

    def _read_energy(self) -> float | None:
        if self.energy is None:
            return None
        try:
            joules, method = self.energy.interval()
            self._energy_methods.add(str(method))
            return float(joules)
        except Exception as e:
            log.debug("trial %s: energy unavailable: %s", self.ref.trial, e)
            return None

    def _decide(self, kind: DecisionKind, cfg: SystemConfig, epoch: int, reason: str,
                **extra: Any) -> None:
        d = Decision(kind=kind, config=cfg, reason=reason, epoch=epoch, **extra)
        self.decisions.append(d)
        log.info("job %s trial %s epoch %d: %s %s: %s", self.ref.job, self.ref.trial, epoch,
                 kind.value, cfg, reason)
        if self.store is not None:
            self._store_call(self.store.write_decision, self.ref, d, time_s=self.clock())

    def _write_epoch(self, ev: _Event, profile: EpochProfile | None) -> None:
        if self.store is None:
            return
        t0 = self._epoch_t0.pop(ev.epoch, None)
        result = EpochResult(
            epoch=ev.epoch, config=self._epoch_config.pop(ev.epoch, self._config),
            seconds=ev.t - t0 if t0 is not None else math.nan, steps=ev.steps,
            metrics={k: v for k, v in ev.metrics.items() if isinstance(v, (int, float))},
            energy_j=self._epoch_energy_j if self._energy_methods else None,
            energy_method="+".join(sorted(self._energy_methods)) or None,
        )
        self._epoch_energy_j, self._energy_methods = 0.0, set()
        self._store_call(self.store.write_epoch, self.ref, result, phase=self.state.value,
                         profile=profile, time_s=ev.t)

    def _store_call(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        # The store is best effort here: a store problem must not degrade tuning.
        try:
            fn(*args, **kwargs)
        except Exception as e:
            log.warning("trial %s: store write failed: %s", self.ref.trial, e)

    def _stop_profiler(self) -> None:
        prof, self._profiler = self._profiler, None
        if prof is not None:
            try:
                prof.stop()
            except Exception as e:
                log.warning("trial %s: profiler stop failed: %s", self.ref.trial, e)

    def _release(self) -> None:
        handle, self._trial_handle = self._trial_handle, None
        if handle is not None:
            try:
                self.controller.close_trial(handle)
            except Exception as e:
                log.warning("trial %s: releasing the trial's cgroup failed: %s",
                            self.ref.trial, e)

    def _shutdown(self) -> None:
        self._closed = True
        self._stop_profiler()
        self._release()
