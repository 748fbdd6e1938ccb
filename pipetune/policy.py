"""Who decides a trial's system config, behind one small interface.

- :class:`SystemPolicy` — driven by epoch boundaries from the training
  thread; implemented by a fixed config (baselines V1/V2), the trial's
  SystemTuner (pipetune), or a client of the node daemon that hosts either.
- :class:`FixedPolicy` — applies one config through the controller at start.

Core module: no Ray, no torch, so the daemon can host policies too.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from typing import Any

from pipetune.config import Settings
from pipetune.errors import ConfigError
from pipetune.types import EpochResult, SystemConfig, SystemSpace, TrialRef

log = logging.getLogger(__name__)

MODES = ("pipetune", "v1", "v2")


class SystemPolicy(abc.ABC):
    """Decides the system config of one trial; driven by epoch boundaries.

    Called from the training thread: every method must return in
    milliseconds (real work goes to a thread of the policy's own).
    """

    phase: str = "fixed"
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

    def threads(self) -> int:
        """Threads the training thread should use now (follows the cores)."""
        return self.config().cores

    def close(self) -> None:  # noqa: B027 - optional hook
        """The trial ended (or crashed): restore and release everything."""


class FixedPolicy(SystemPolicy):
    """One config for the whole trial: baseline V1 (the same default config
    for every trial) and V2 (the config Tune sampled for this trial)."""

    def __init__(
        self, config: SystemConfig, *, trial_id: str, controller: str = "auto", phase: str = "fixed"
    ) -> None:
        self._config = config
        self._trial_id = trial_id
        self._controller_kind = controller
        self._controller: Any = None
        self._handle: Any = None
        self.phase = phase

    def start(self, pids: list[int]) -> None:
        try:
            from pipetune.control import detect_controller

            self._controller = detect_controller(self._controller_kind)
            self._handle = self._controller.open_trial(self._trial_id, pids)
            self._controller.apply(self._handle, self._config)
            self.reason = f"{self.phase}: {self._config} via {self._controller.name}"
        except Exception as e:  # noqa: BLE001 - never fail the trial for the system side
            self.phase = "degraded"
            self.reason = f"could not apply {self._config}: {e}"
            log.warning("trial %s: %s; training continues untouched", self._trial_id, self.reason)

    def epoch_end(self, result: EpochResult) -> None:
        return None

    def config(self) -> SystemConfig:
        return self._config

    def close(self) -> None:
        if self._controller is not None and self._handle is not None:
            try:
                self._controller.close_trial(self._handle)
            except Exception as e:  # noqa: BLE001
                log.warning("trial %s: cleanup failed: %s", self._trial_id, e)
            self._handle = None


def make_policy(
    mode: str,
    space: SystemSpace,
    trial_config: Mapping[str, Any],
    ref: TrialRef,
    settings: Settings,
    **tuner_kwargs: Any,
) -> SystemPolicy:
    """The system policy of one trial for ``mode`` (see :func:`wrap`)."""
    if mode == "v1":
        return FixedPolicy(
            space.default, trial_id=ref.trial, controller=settings.controller, phase="v1"
        )
    if mode == "v2":
        try:
            config = SystemConfig(
                int(trial_config["cores"]),
                trial_config.get("memory_mb"),
                int(trial_config.get("gpus", 0)),
            )
        except KeyError as e:
            raise ConfigError("mode v2 needs 'cores' in the trial's Tune config") from e
        return FixedPolicy(config, trial_id=ref.trial, controller=settings.controller, phase="v2")
    if mode == "pipetune":
        from pipetune.tuner import tuner_policy

        return tuner_policy(space, ref, settings, **tuner_kwargs)
    raise ConfigError(f"mode {mode!r}: must be one of {', '.join(MODES)}")
