"""Who decides a trial's system config, behind one small interface.

- :class:`SystemPolicy` — driven by epoch boundaries from the training
  thread; implemented by a fixed config (baselines V1/V2) and the trial's
  SystemTuner (pipetune).  Both run in the trial's process; the controller
  they are given is local or the node daemon's.
- :class:`FixedPolicy` — applies one config through the controller at start.
- :class:`TunerPolicy` — the trial's :class:`pipetune.tuner.SystemTuner`
  behind that interface (mode ``pipetune``).

Core module: no Ray, no torch.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Mapping
from typing import Any

from pipetune.config import Settings
from pipetune.errors import ConfigError, PipetuneError
from pipetune.tuner import SystemTuner, TunerState
from pipetune.types import DecisionKind, EpochResult, Phase, SystemConfig, SystemSpace, TrialRef

log = logging.getLogger(__name__)

MODES = ("pipetune", "v1", "v2")


class SystemPolicy(abc.ABC):
    """Decides the system config of one trial; driven by epoch boundaries.

    Called from the training thread: every method must return in
    milliseconds (real work goes to a thread of the policy's own).
    """

    phase: Phase = Phase.FIXED
    reason: str = ""
    #: True when the policy writes its own epochs and decisions to the store
    #: (the SystemTuner does, with profiles); else the trial session does.
    writes_to_store: bool = False

    @abc.abstractmethod
    def start(self, pids: list[int]) -> None:
        """The trial's processes are known; apply the starting config."""

    def bind(self, *, store: Any = None) -> None:  # noqa: B027 - optional hook
        """The trial's store, for policies that write their own points."""

    def epoch_start(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """A new epoch begins."""

    def window_end(self, epoch: int, steps: int) -> None:  # noqa: B027 - optional hook
        """A step window inside ``epoch`` ended after ``steps`` steps of it
        (cumulative); lets a policy probe inside long epochs."""

    @abc.abstractmethod
    def epoch_end(self, result: EpochResult) -> None:
        """An epoch ended with ``result`` (config in force, seconds, metrics)."""

    @abc.abstractmethod
    def config(self) -> SystemConfig:
        """The config in force now."""

    def applied_cpus(self) -> tuple[int, ...] | None:
        """The CPUs the last apply confined the trial to; ``None`` when
        nothing confines it (dry run, degraded, not applied yet)."""
        return None

    def rebalance(self) -> None:  # noqa: B027 - optional hook
        """A boundary: take the share of the node the allocator gives this
        trial now (other trials started or ended)."""

    def reassert(self) -> None:  # noqa: B027 - optional hook
        """The trial's limits were lifted from outside (a restarted daemon
        released the groups of the one that died): apply them again."""

    def wait_decision(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the boundary just reported is
        decided and its config applied, so the training thread adopts the
        new thread count at this same boundary.  Default: nothing to wait for."""
        return True

    @property
    def controller_name(self) -> str:
        """Who enforces the config (``cgroup-v1``, ``affinity``, ``dry-run``,
        ``daemon:cgroup-v1``); reported with every result as ``pt_controller``."""
        return "none"

    def threads(self) -> int:
        """Threads the training thread should use now (follows the cores)."""
        return self.config().cores

    def close(self) -> None:  # noqa: B027 - optional hook
        """The trial ended (or crashed): restore and release everything."""

    def resume_stage(self, key: str, facts: Mapping[str, Any], *, epoch: int,  # noqa: B027
                     parent_batch_size: Any = None, batch_size: Any = None) -> None:
        """The trial resumed at ``epoch`` from parent stage ``key``, whose
        trial left ``facts`` (:meth:`stage_facts`) at its end.  A tuning
        policy decides the child stage from them; a fixed one has nothing
        to decide (default)."""

    def reprofile(self, reason: str) -> None:  # noqa: B027 - optional hook
        """The workload changes at this boundary (``reason``: how): a tuning
        policy profiles it again; a fixed one has nothing to decide."""

    def stage_facts(self) -> dict[str, Any]:
        """What a stage tree keeps of this policy at the end of a trained
        epoch: ``config`` (its string), ``phase``, ``decision`` (the last
        decision's kind) and ``profile`` (rates and window, or None)."""
        return {"config": str(self.config()), "phase": str(getattr(self.phase, "value",
                                                                    self.phase)),
                "decision": "", "profile": None}


class FixedPolicy(SystemPolicy):
    """One config for the whole trial: baseline V1 (the same default config
    for every trial) and V2 (the config Tune sampled for this trial).

    ``controller``: the trial's controller (local, or the node daemon's), or
    a kind for :func:`pipetune.control.detect_controller`.
    """

    def __init__(
        self, config: SystemConfig, *, trial_id: str, controller: Any = "auto",
        phase: Phase | str = Phase.FIXED,
    ) -> None:
        self._config = config
        self._asked = config
        self._trial_id = trial_id
        self._controller: Any = controller if not isinstance(controller, str) else None
        self._controller_kind = controller if isinstance(controller, str) else ""
        self._handle: Any = None
        self._applied: Any = None
        self.phase = Phase(phase)

    def start(self, pids: list[int]) -> None:
        try:
            if self._controller is None:
                from pipetune.control import detect_controller

                self._controller = detect_controller(self._controller_kind or "auto")
            self._handle = self._controller.open_trial(self._trial_id, pids)
            self._applied = applied = self._controller.apply(self._handle, self._config)
            in_force = getattr(applied, "config", None)
            if isinstance(in_force, SystemConfig):
                self._config = in_force  # the node allocator's share may be smaller
            where = getattr(applied, "cpus", None)
            on = f" on cpus {','.join(map(str, where))}" if where else ""
            self.reason = f"{self.phase}: {self._config}{on} via {self._controller.name}"
        except Exception as e:  # noqa: BLE001 - never fail the trial for the system side
            self._degrade(f"could not apply {self._config}: {e}")

    def _degrade(self, why: str) -> None:
        self.phase = Phase.DEGRADED
        self.reason = f"{why}; training continues untouched"
        log.warning("trial %s: %s", self._trial_id, self.reason)
        self.close()
        # What is reported is what is in force: the CPUs this process has.
        self._config = SystemConfig(len(os.sched_getaffinity(0)), None, self._config.gpus)

    def epoch_end(self, result: EpochResult) -> None:
        return None

    def config(self) -> SystemConfig:
        return self._config

    def applied_cpus(self) -> tuple[int, ...] | None:
        return enforced_cpus(self._applied) if self.phase is not Phase.DEGRADED else None

    def rebalance(self) -> None:
        fn = getattr(self._controller, "rebalance", None)
        if fn is None or self._handle is None or self.phase is Phase.DEGRADED:
            return
        try:
            applied = fn(self._handle)
        except Exception as e:  # noqa: BLE001 - the share stays as it was
            log.warning("trial %s: node share not updated: %s", self._trial_id, e)
            return
        if applied is not None:
            self._applied = applied
            self._config = applied.config
            self.reason = f"{self.phase}: {self._asked}, share of the node now {applied.config}"

    def reassert(self) -> None:
        if self._controller is None or self._handle is None or self.phase is Phase.DEGRADED:
            return
        try:
            log.warning("trial %s: its limits were lifted from outside (a restarted daemon "
                        "released it?): %s applied again", self._trial_id, self._config)
            self._applied = self._controller.apply(self._handle, self._asked)
            self._config = getattr(self._applied, "config", self._config)
        except Exception as e:  # noqa: BLE001 - never fail the trial for the system side
            self._degrade(f"limits lifted from outside and {self._config} could not be "
                          f"applied again: {e}")

    @property
    def controller_name(self) -> str:
        return str(getattr(self._controller, "name", "none"))

    def close(self) -> None:
        if self._controller is not None and self._handle is not None:
            try:
                self._controller.close_trial(self._handle)
            except Exception as e:  # noqa: BLE001
                log.warning("trial %s: cleanup failed: %s", self._trial_id, e)
            self._handle = None


def enforced_cpus(applied: Any) -> tuple[int, ...] | None:
    """The CPUs an :class:`~pipetune.control.Applied` really confines the
    trial to; ``None`` when it confines nothing (dry run, no apply yet)."""
    if applied is None or "cores" in (getattr(applied, "skipped", None) or {}):
        return None
    cpus = tuple(getattr(applied, "cpus", ()) or ())
    return cpus or None


def make_policy(
    mode: str,
    space: SystemSpace,
    trial_config: Mapping[str, Any],
    ref: TrialRef,
    settings: Settings,
    *,
    controller: Any = None,
    **tuner_kwargs: Any,
) -> SystemPolicy:
    """The system policy of one trial for ``mode`` (see :func:`pipetune.wrap`).

    ``controller``: the trial's controller (default: ``settings.controller``'s
    local one); the same for every mode, so baselines and pipetune trials are
    confined alike.
    """
    ctl = controller if controller is not None else settings.controller
    if mode == "v1":
        return FixedPolicy(space.default, trial_id=ref.trial, controller=ctl, phase=Phase.V1)
    if mode == "v2":
        try:
            config = SystemConfig(
                int(trial_config["cores"]),
                trial_config.get("memory_mb"),
                int(trial_config.get("gpus", 0)),
            )
        except KeyError as e:
            raise ConfigError("mode v2 needs 'cores' in the trial's Tune config") from e
        return FixedPolicy(config, trial_id=ref.trial, controller=ctl, phase=Phase.V2)
    if mode == "pipetune":
        return TunerPolicy(space, ref, settings, controller=controller, **tuner_kwargs)
    raise ConfigError(f"mode {mode!r}: must be one of {', '.join(MODES)}")


#: How a settled tuner chose its config, by its last decision (Tune's ``pt_phase``).
_HOW_SETTLED = {
    DecisionKind.MATCHED.value: Phase.MATCHED,
    DecisionKind.SETTLED.value: Phase.PROBED,
    DecisionKind.FALLBACK.value: Phase.FALLBACK,
}


class TunerPolicy(SystemPolicy):
    """The SystemTuner as a trial's :class:`SystemPolicy` (pipetune mode),
    the Tune-side adapter of :mod:`pipetune.tuner`: it writes its own epochs
    (with profiles), decisions, ground-truth records and the profiler's
    samples, so the trial session does not.

    ``controller``: the trial's controller (local or the node daemon's);
    default: ``settings.controller``'s local one.  ``meters``: its energy
    meters (the daemon's RAPL reading where only the daemon may read it);
    default: the host's.
    """

    writes_to_store = True

    def __init__(
        self,
        space: SystemSpace,
        ref: TrialRef,
        settings: Any,
        *,
        controller: Any = None,
        meters: list[Any] | None = None,
        workload: str = "",
        total_epochs: int | None = None,
        **tuner_kwargs: Any,
    ) -> None:
        self.space = space
        self.ref = ref
        self.settings = settings
        self.controller = controller
        self.meters = meters
        self.workload = workload
        self.total_epochs = total_epochs
        self.tuner_kwargs = tuner_kwargs
        self.tuner: SystemTuner | None = None
        self._store: Any = None
        self.phase = Phase.STARTING

    def bind(self, *, store: Any = None) -> None:
        self._store = store

    def start(self, pids: list[int]) -> None:
        from pipetune.control import detect_controller
        from pipetune.profiler import TrialProfiler

        settings = self.settings
        controller = self.controller
        if controller is None:
            try:
                controller = detect_controller(settings.controller)
            except PipetuneError as e:
                log.warning("trial %s: no controller (%s); configs are only logged",
                            self.ref.trial, e)
                controller = detect_controller("dry-run")
            self.controller = controller
        from pipetune.energy import trial_energy

        # Its own TrialEnergy: intervals are per consumer, and the session
        # measures the same trial for Tune's report.
        energy = trial_energy(list(pids), self.meters)
        self.tuner = SystemTuner.from_settings(
            self.ref,
            self.space,
            settings,
            pids=pids,
            controller=controller,
            profiler_factory=lambda p: TrialProfiler(
                p, interval_ms=settings.interval_ms, on_sample=self._write_sample
            ),
            store=self._store,
            energy=energy,
            workload=self.workload,
            total_epochs=self.total_epochs,
            **self.tuner_kwargs,
        )
        self.tuner.start()

    def _write_sample(self, sample: Any) -> None:
        """Each perf sample into the store's ``sample`` measurement (~1 Hz
        while the trial is profiled), through the non-blocking writer."""
        tuner, store = self.tuner, self._store
        if tuner is None or store is None:
            return
        store.write_sample(self.ref, sample, phase=tuner.state.value, config=tuner.config)

    def epoch_start(self, epoch: int) -> None:
        if self.tuner is not None:
            self.tuner.epoch_start(epoch)

    def window_end(self, epoch: int, steps: int) -> None:
        if self.tuner is not None:
            self.tuner.window_end(epoch, steps)

    def epoch_end(self, result: EpochResult) -> None:
        if self.tuner is not None:
            self.tuner.epoch_end(result.epoch, result.steps, dict(result.metrics),
                                 result=result)

    def wait_decision(self, timeout_s: float) -> bool:
        if self.tuner is None:
            return True
        done = self.tuner.wait_decided(timeout_s)
        if not done:
            log.info("trial %s: tuner still deciding after %.1f s; the training goes on "
                     "with the config in force", self.ref.trial, timeout_s)
        self._refresh()
        return done

    def _refresh(self) -> None:
        assert self.tuner is not None
        summary = self.tuner.summary()
        self.reason = str(summary.get("pipetune/reason") or "")
        # For Tune's table: *how* the config was chosen once settled.
        state, last = self.tuner.state, summary.get("pipetune/decision")
        if state is TunerState.SETTLED:
            self.phase = _HOW_SETTLED.get(str(last), Phase.SETTLED)
        else:
            self.phase = state

    def config(self) -> SystemConfig:
        return self.tuner.config if self.tuner is not None else self.space.default

    def threads(self) -> int:
        return self.tuner.threads_to_use() if self.tuner is not None else self.space.default.cores

    def applied_cpus(self) -> tuple[int, ...] | None:
        if self.tuner is None or self.tuner.state is TunerState.DEGRADED:
            return None
        return enforced_cpus(self.tuner.applied)

    def reassert(self) -> None:
        if self.tuner is not None:
            self.tuner.reassert()

    def rebalance(self) -> None:
        if self.tuner is not None:
            self.tuner.rebalance()

    @property
    def controller_name(self) -> str:
        return str(getattr(self.controller, "name", "none"))

    @property
    def learned(self) -> bool:
        """Whether this trial gave the ground truth a new record (a probe
        winner or an observation), so a refit has something new to learn."""
        return self.tuner is not None and self.tuner.recorded

    def close(self) -> None:
        if self.tuner is not None:
            self.tuner.close()
            self._refresh()

    def resume_stage(self, key: str, facts: Mapping[str, Any], *, epoch: int,
                     parent_batch_size: Any = None, batch_size: Any = None) -> None:
        hint = stage_hint(key, facts, epoch=epoch, parent_batch_size=parent_batch_size,
                          batch_size=batch_size)
        if hint is None:
            log.info("trial %s: parent stage %s left no tuner facts (%s); this stage is "
                     "profiled afresh", self.ref.trial, key, dict(facts))
            return
        if self.tuner is not None:
            self.tuner.resume_stage(hint)

    def reprofile(self, reason: str) -> None:
        if self.tuner is not None:
            self.tuner.reprofile(reason)

    def stage_facts(self) -> dict[str, Any]:
        if self.tuner is None:
            return super().stage_facts()
        return self.tuner.stage_facts()


def stage_hint(key: str, facts: Mapping[str, Any], *, epoch: int = 0,
               parent_batch_size: Any = None, batch_size: Any = None) -> Any:
    """A :class:`~pipetune.tuner.records.StageHint` from the plain facts a
    stage record keeps (:meth:`SystemPolicy.stage_facts`, read back from the
    stage store or the ``stage`` points of an earlier job); None when they
    name no tuner state or config this version can read (a v1/v2 trial's
    stage, a record older than the facts)."""
    from pipetune.tuner.records import StageHint
    from pipetune.types import EpochProfile

    try:
        phase = Phase(str(facts["phase"]))
        config = SystemConfig.parse(str(facts["config"]))
    except (KeyError, ValueError, PipetuneError):
        return None
    profile = None
    raw = facts.get("profile")
    if isinstance(raw, Mapping) and isinstance(raw.get("rates"), Mapping):
        try:
            profile = EpochProfile.from_dict(raw)
        except (TypeError, ValueError):
            profile = None
    return StageHint(key=key, config=config, phase=phase, profile=profile,
                     parent_batch_size=parent_batch_size, batch_size=batch_size,
                     how=str(facts.get("decision") or ""), epoch=int(epoch))
