"""The SystemTuner: the runner of Algorithm 1's state machine for one trial.

The training loop reports boundaries — ``epoch_start``, ``window_end``
(optional step windows inside an epoch) and ``epoch_end`` — and adopts
:meth:`SystemTuner.threads_to_use` at its next boundary.  Those calls only
put an event on a queue and return (microseconds); the tuner's own worker
thread does everything slow.  For each event it reads the trial's energy,
steps the pure machine (:func:`pipetune.tuner.machine.step`) and carries
out the effects: the trial's side (:class:`~pipetune.tuner.answers.TrialSide`)
answers the machine's questions (apply a config through the controller,
take a profile, match it against the ground truth, read the trial's memory
peak); the runner writes decisions, epochs and ground-truth records
to the store, publishes the trial's speed-up to the node allocator, and
starts or stops the profiler once the boundary is decided.  The runner
holds no tuning state of its own: the phase, the config in force and the
probe plan are the machine's.

No public method raises into the training thread: a failure of the system
side is an answer the machine turns into DEGRADED, and so is a bug.

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

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipetune.errors import ConfigError
from pipetune.groundtruth import GroundTruth, check_threshold
from pipetune.probing import DEFAULT_MEMORY_MARGIN, STRATEGIES, Objective
from pipetune.tuner import records as r
from pipetune.tuner.answers import TrialSide, what
from pipetune.tuner.base import ConfigApplier, EnergySource, ProfilerFactory, StoreSink
from pipetune.tuner.machine import step
from pipetune.types import (
    Decision,
    EpochProfile,
    EpochResult,
    Phase,
    SystemConfig,
    SystemSpace,
    TrialRef,
)

log = logging.getLogger(__name__)

_BOUNDARIES = (r.Kind.EPOCH_START, r.Kind.WINDOW_END, r.Kind.EPOCH_END)


@dataclass(frozen=True)
class _Posted:
    kind: r.Kind
    t: float
    epoch: int = 0
    steps: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    seq: int = 0
    result: EpochResult | None = None
    stage: r.StageHint | None = None
    reason: str = ""


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
            the epochs left still fit the rest of the plan.
        profile_epochs: epochs aggregated into the profile (at least).
        profile_min_s: seconds *sampled* into the profile (at least), so very
            short epochs are aggregated until the profile has enough samples.
            Both are wishes the trial's length may cut short
            (:func:`pipetune.tuner.profiling.deadline`).
        total_epochs: the trial's epochs, so a plan never needs more than are left.
        memory_margin: memory candidates stay ≥ observed peak × (1 + margin).
        halving_min_windows / halving_eta: successive-halving parameters.
        grace: share of an interval a config may have missed and still count
            (epoch-only loops; :func:`pipetune.probing.plan.counted_intervals`).
        clock: seconds since the epoch (``time.time``; a fake in tests).  The
            profiler windows use the same clock.
    """

    def __init__(
        self,
        ref: TrialRef,
        space: SystemSpace,
        *,
        pids: Sequence[int],
        controller: ConfigApplier,
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
        parsed = Objective.parse(objective)
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy {strategy!r}: must be grid, one_at_a_time or halving")
        if profile_epochs < 1:
            raise ConfigError(f"profile_epochs={profile_epochs}: must be >= 1")
        if warmup_s < 0:
            raise ConfigError(f"warmup_s={warmup_s}: must be >= 0")
        if probe_min_s < 0:
            raise ConfigError(f"probe_min_s={probe_min_s}: must be >= 0")
        self.params = r.Params(
            space=space, threshold=check_threshold(threshold), strategy=strategy,
            warmup_s=float(warmup_s), probe_min_s=float(probe_min_s),
            profile_epochs=int(profile_epochs), profile_min_s=float(profile_min_s),
            total_epochs=total_epochs, memory_margin=memory_margin,
            halving_min_windows=halving_min_windows, halving_eta=halving_eta, grace=grace,
            workload=workload,
        )
        self.machine = r.initial(self.params, parsed)
        self.ref = ref
        self.space = space
        self.default: SystemConfig = space.default  # type: ignore[assignment]
        self.pids = list(pids)
        self.store = store
        self.workload = workload
        self.clock = clock
        self.side = TrialSide(ref.trial, pids, controller=controller,
                              profiler_factory=profiler_factory, groundtruth=groundtruth,
                              energy=energy, clock=clock)

        self.decisions: list[Decision] = []
        self.recorded = False  # a ground-truth record was written for this trial
        self.started_at: float | None = None  # clock() at trial start
        self.settled_at: float | None = None  # clock() when a config was settled
        # Epochs whose end the training thread has posted: ahead of what the
        # worker handled while it lags (e.g. blocked in profiler.start()).
        self._epochs_posted = 0
        self._closing = False  # close() was called: later posts are dropped
        self._queue: queue.Queue[_Posted] = queue.Queue()
        self._idle = threading.Condition()
        self._busy = 0
        # Boundaries posted / decided: the training thread waits for its
        # boundary to be decided, so threads follow cores at that boundary.
        self._posted_seq = 0
        self._decided_seq = 0
        # Slow work (starting or stopping perf) that waits until a boundary is decided.
        self._after_decision: list[Any] = []
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

    # -- what the machine holds, read from any thread ----------------------------------------

    @property
    def state(self) -> Phase:
        return self.machine.phase

    @property
    def reason(self) -> str:
        """Why the tuner is in its state (DEGRADED: what failed)."""
        return self.machine.state.reason

    @property
    def config(self) -> SystemConfig:
        """The system config in force now."""
        return self.machine.ledger.config

    @property
    def objective(self) -> Objective:
        return self.machine.ledger.objective

    @property
    def profile(self) -> EpochProfile | None:
        return self.machine.ledger.profile

    @property
    def best(self) -> tuple[SystemConfig, float] | None:
        s = self.machine.state
        return s.best if isinstance(s, r.Settled) else None

    @property
    def applied(self) -> Any:
        """What the last apply put in force (``control.Applied``)."""
        return self.side.applied

    @property
    def controller(self) -> ConfigApplier:
        return self.side.controller

    @property
    def _groundtruth_src(self) -> Any:
        return self.side.groundtruth

    @property
    def probed(self) -> dict[SystemConfig, float]:
        """Each probed config's objective value, once settled on the best."""
        s = self.machine.state
        return dict(s.probed) if isinstance(s, r.Settled) else {}

    threshold = property(lambda self: self.params.threshold)
    warmup_s = property(lambda self: self.params.warmup_s)
    probe_min_s = property(lambda self: self.params.probe_min_s)
    total_epochs = property(lambda self: self.params.total_epochs)
    strategy_name = property(lambda self: self.params.strategy)

    # -- the training thread's API: never blocks, never raises -------------------------------

    def start(self) -> None:
        """Trial start: open the trial's cgroup, apply the default, start profiling."""
        self._post(r.Kind.START)

    def epoch_start(self, epoch: int) -> None:
        self._post(r.Kind.EPOCH_START, epoch)

    def window_end(self, epoch: int, steps: int) -> None:
        """A step window inside ``epoch`` ended; ``steps`` = steps done in the
        epoch so far (cumulative)."""
        self._post(r.Kind.WINDOW_END, epoch, steps)

    def epoch_end(self, epoch: int, steps: int, metrics: Mapping[str, float] | None = None,
                  *, result: EpochResult | None = None) -> None:
        """``epoch`` ended after ``steps`` training steps.  ``result``: the
        epoch's record when the caller (the trial session) built one; the
        tuner stores it, with its profile, instead of building its own."""
        self._post(r.Kind.EPOCH_END, epoch, steps, metrics, result)

    def rebalance(self) -> None:
        """A boundary: take the node share the allocator gives now (other
        trials started or ended), so threads follow at this boundary."""
        self._post(r.Kind.REBALANCE)

    def reassert(self) -> None:
        """Apply the config in force again: the trial's limits were lifted
        from outside (a restarted daemon releases the groups of the one that
        died); the controller opens the trial again where it must."""
        self._post(r.Kind.REASSERT)

    def resume_stage(self, hint: r.StageHint) -> None:
        """The trial resumed from a parent stage's checkpoint (a stage tree):
        decide this stage once from ``hint`` (the parent's settled config
        and profile) instead of profiling it as a new trial, unless its batch
        size changed (:func:`pipetune.tuner.machine._from_parent`).  Post it
        before the first trained epoch ends; :meth:`wait_decided` then puts
        the parent's config in force before that epoch trains."""
        self._post(r.Kind.PARENT_STAGE, stage=hint)

    def reprofile(self, reason: str) -> None:
        """The workload changes at this boundary (``reason``: how, e.g. the
        batch size a schedule sets for the next epoch): a settled tuner
        profiles again, at the default, as for a new trial.  Post it between
        an epoch's end and the next one's start."""
        self._post(r.Kind.REPROFILE, reason=reason)

    def stage_facts(self) -> dict[str, Any]:
        """What a stage tree keeps of this tuner at the end of a trained
        epoch, so a child stage can start from it (see :meth:`resume_stage`):
        the config in force, the state, the last decision's kind and the
        profile (its rates, a plain JSON-able dict; None before one is taken)."""
        m = self.machine
        last = self.decisions[-1] if self.decisions else None
        p = m.ledger.profile
        return {"config": str(m.ledger.config), "phase": m.phase.value,
                "decision": last.kind.value if last else "",
                "profile": None if p is None else p.to_dict()}

    def threads_to_use(self) -> int:
        """Threads the training thread should use now (``sync_threads`` it at
        the next boundary): the cores of the config in force."""
        return self.config.cores

    def summary(self) -> dict[str, Any]:
        """What to report with the trial's metrics: what was applied and why."""
        last = self.decisions[-1] if self.decisions else None
        m = self.machine
        return {
            "pipetune/state": m.phase.value,
            "pipetune/config": str(m.ledger.config),
            "pipetune/threads": m.ledger.config.cores,
            "pipetune/decision": last.kind.value if last else "",
            "pipetune/reason": last.reason if last else m.state.reason,
        }

    def wait_decided(self, timeout_s: float = 5.0) -> bool:
        """Wait until every boundary posted so far is *decided* (its config
        applied), not its slow clean-up; False after ``timeout_s``.

        The training thread calls it at a boundary before it adopts
        :meth:`threads_to_use`, so the thread count changes at the same
        boundary as the cpuset and quota, never an epoch later."""
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
        self._post(r.Kind.CLOSE)
        self._closing = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("trial %s: tuner did not stop within %.0f s", self.ref.trial, timeout_s)

    def __enter__(self) -> SystemTuner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, kind: r.Kind, epoch: int = 0, steps: int = 0,
              metrics: Mapping[str, float] | None = None,
              result: EpochResult | None = None, stage: r.StageHint | None = None,
              reason: str = "") -> None:
        try:
            if self._closing:
                return
            with self._idle:
                self._posted_seq += 1
                ev = _Posted(kind, self.clock(), int(epoch), int(steps), dict(metrics or {}),
                             self._posted_seq, result, stage, reason)
                if kind is r.Kind.EPOCH_END:
                    self._epochs_posted = max(self._epochs_posted, ev.epoch + 1)
                self._busy += 1
                self._queue.put_nowait(ev)
        except Exception:  # never raise into training
            log.exception("trial %s: could not post %s", self.ref.trial, kind.value)

    # -- the worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            posted = self._queue.get()
            try:
                self._handle(posted)
                with self._idle:
                    self._decided_seq = max(self._decided_seq, posted.seq)
                    self._idle.notify_all()
                later, self._after_decision = self._after_decision, []
                for effect in later:
                    self._carry_out_late(effect)
            finally:
                with self._idle:
                    self._decided_seq = max(self._decided_seq, posted.seq)
                    self._busy -= 1
                    self._idle.notify_all()
            if posted.kind is r.Kind.CLOSE:
                return

    def _handle(self, p: _Posted) -> None:
        energy = None
        if p.kind in _BOUNDARIES and self.state is not Phase.DEGRADED:
            energy = self.side.read_energy()
        self._feed(r.Event(p.kind, p.t, p.epoch, p.steps, p.metrics,
                           posted=self._epochs_posted, energy=energy, result=p.result,
                           stage=p.stage, reason=p.reason))

    def _feed(self, ev: r.Event) -> None:
        """Step the machine with ``ev`` until it needs no more answers,
        carrying out each effect once, in order; never raises."""
        try:
            self._step(ev)
        except Exception as e:  # a bug: degrade, never raise
            log.exception("trial %s: tuner bug on %s", self.ref.trial, ev.kind.value)
            try:
                self._step(r.Event(r.Kind.FAIL, self.clock(), ev.epoch,
                                   reason=f"{ev.kind.value}: {what(e)}"))
            except Exception:
                log.exception("trial %s: could not degrade", self.ref.trial)

    def _step(self, ev: r.Event) -> None:
        before, t_before = self.machine, self.clock()
        answers: list[Any] = []
        done = 0
        while True:
            new, effects = step(before, replace(ev, answers=tuple(answers)))
            asking = bool(effects) and isinstance(effects[-1], r.Ask)
            body = effects[:-1] if asking else effects
            for effect in body[done:]:
                self._carry_out(effect)
            done = len(body)
            if not asking:
                break
            answers.append(self.side.answer(effects[-1].query))
        self.machine = new
        if before.phase is Phase.START and new.phase is not Phase.START:
            self.started_at = t_before
        if new.phase is Phase.SETTLED and self.settled_at is None:
            self.settled_at = self.clock()

    # -- carrying out the machine's effects ---------------------------------------------------

    def _carry_out(self, effect: Any) -> None:
        if isinstance(effect, r.Decide):
            d = effect.decision
            self.decisions.append(d)
            log.info("job %s trial %s epoch %d: %s %s: %s", self.ref.job, self.ref.trial,
                     d.epoch, d.kind.value, d.config, d.reason)
            if self.store is not None:
                self._store_call(self.store.write_decision, self.ref, d, time_s=self.clock())
        elif isinstance(effect, r.WriteEpoch):
            if self.store is not None:
                self._store_call(self.store.write_epoch, self.ref, effect.result,
                                 phase=effect.phase.value, profile=effect.profile,
                                 time_s=effect.t)
        elif isinstance(effect, r.WriteGroundTruth):
            if self.store is not None:
                extra = {} if effect.probed else {"probed": False}
                self._store_call(self.store.write_groundtruth, workload=self.workload,
                                 profile=effect.profile, config=effect.config,
                                 objective=effect.objective, value=effect.value, ref=self.ref,
                                 time_s=self.clock(), **extra)
                self.recorded = True
        elif isinstance(effect, r.PublishSpeeds):
            # How this trial's speed grows with cores: the node allocator
            # shares the node by marginal speed-up.
            self.side.advisory("set_speedup", dict(effect.speeds))
        elif isinstance(effect, r.Note):
            log.log(getattr(logging, effect.level.upper(), logging.INFO), "trial %s: %s",
                    self.ref.trial, effect.message)
        elif isinstance(effect, r.StartProfiler) or (
                isinstance(effect, r.StopProfiler) and effect.late):
            self._after_decision.append(effect)
        elif isinstance(effect, r.StopProfiler):
            self.side.stop_profiler()
        else:
            raise TypeError(f"unknown effect {effect!r}")

    def _carry_out_late(self, effect: Any) -> None:
        """Slow work once the boundary is decided: the training thread waits
        for the decision, not for perf."""
        if isinstance(effect, r.StopProfiler):
            self.side.stop_profiler()
            return
        if self.state is not Phase.PROFILING:
            return
        try:
            wait_s = self.side.start_profiler()
        except Exception as e:  # perf missing or refused: the trial trains on untouched
            self._feed(r.Event(r.Kind.FAIL, self.clock(), reason=f"start: {what(e)}"))
            return
        self._feed(r.Event(r.Kind.PROFILER_STARTED, self.clock(), wait_s=wait_s))

    def _store_call(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        # The store is best effort here: a store problem must not degrade tuning.
        try:
            fn(*args, **kwargs)
        except Exception as e:
            log.warning("trial %s: store write failed: %s", self.ref.trial, e)
