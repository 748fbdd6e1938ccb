"""A trial's GPUs: :class:`TrialGpus` (visibility at start, power limit live).

The GPU side of a system config, as DESIGN §10 has it:

- **count and visibility** are decided when the trial starts (the config in
  force after the tuner's first decision: the ground truth's when matched, the
  space's default otherwise) and applied through ``CUDA_VISIBLE_DEVICES`` in
  the trial process *before its framework touches CUDA*; the worker ranks a
  parallel strategy spawns inherit it, and each takes one of the visible GPUs
  (``cuda:{rank}``, NCCL: :mod:`pipetune.parallel.device`).  Indices count
  the GPUs visible to the trial process already (Ray sets
  ``CUDA_VISIBLE_DEVICES`` for a trial that reserved GPUs), so trials Ray
  gave disjoint GPUs stay disjoint;
- the **power limit** (``gpu_power_w``) is applied through NVML, live, at an
  epoch boundary: by the trial itself when it runs as root, else through the
  node daemon (:class:`~pipetune.daemon.client.DaemonPowerLimit`);
- **energy** of those GPUs comes from NVML (:class:`~pipetune.energy.trial.TrialEnergy`
  is given :attr:`TrialGpus.nvml_indices`).

Nothing here may fail a trial once it trains: a power limit NVML or the
daemon refuses is logged with the reason and reported as not in force.
A GPU count the node cannot give is refused at trial start (ControlInputError).
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from typing import Any

from pipetune.control.gpu import (
    ENV,
    GpuAllocator,
    NoPowerLimit,
    PowerLimitKnob,
    parse_visible_devices,
    power_limit_knob,
    visible_devices_env,
)

log = logging.getLogger(__name__)


def gpus_here(env: MutableMapping[str, str], nvml: Any = None) -> int:
    """GPUs this process may use: those ``CUDA_VISIBLE_DEVICES`` names when set,
    else what NVML counts (0 without NVML)."""
    visible = parse_visible_devices(env.get(ENV))
    if visible is not None:
        return len(visible)
    knob = power_limit_knob(nvml)
    try:
        return knob.count()
    finally:
        close = getattr(knob, "close", None)
        if close is not None:
            close()


class TrialGpus:
    """The GPUs one trial holds; see the module docstring.  Not thread-safe:
    the training thread calls :meth:`sync` at its boundaries."""

    def __init__(self, trial_id: str, names: list[str], knob: PowerLimitKnob,
                 allocator: GpuAllocator | None = None) -> None:
        self.trial_id = trial_id
        self.names = names
        #: NVML indices of the trial's GPUs (names that are UUIDs have none here).
        self.nvml_indices = [int(n) for n in names if n.isdigit()]
        self.knob = knob
        self._allocator = allocator
        self._wanted_w: float | None = None
        self._pending = False
        self.power_w: float | None = None  # in force on every GPU of the trial
        self.reason = ""
        self._before: dict[int, float] = {}

    @classmethod
    def open(cls, trial_id: str, count: int, *, power_w: float | None = None,
             nvml: Any = None, daemon: Any = None,
             env: MutableMapping[str, str] | None = None) -> TrialGpus:
        """Give trial ``trial_id`` ``count`` GPUs now (before CUDA is touched).

        Args:
            count: GPUs for the trial (0 hides every GPU from it).
            power_w: a power limit for each of them (None: leave as is).
            nvml: the NVML module (default ``pynvml``; tests pass a fake).
            daemon: a :class:`~pipetune.daemon.client.DaemonClient`; used for the
                power limit when this process is not root.
            env: the environment to set (default ``os.environ``: the trial
                process's, which its worker ranks inherit).

        Raises:
            ControlInputError: more GPUs asked for than this process can see.
        """
        env = os.environ if env is None else env
        have = gpus_here(env, nvml) if count else 0
        allocator = GpuAllocator(have)
        indices = allocator.allocate(trial_id, count)
        new = visible_devices_env(indices, base=env)
        env[ENV] = new[ENV]
        env.setdefault("CUDA_DEVICE_ORDER", new["CUDA_DEVICE_ORDER"])
        names = [n for n in new[ENV].split(",") if n]
        knob: PowerLimitKnob
        if not names:
            knob = NoPowerLimit("the trial holds no GPU")
        elif daemon is not None and os.geteuid() != 0:
            from pipetune.daemon.client import DaemonPowerLimit

            knob = DaemonPowerLimit(daemon, trial_id, [int(n) for n in names if n.isdigit()])
        else:
            knob = power_limit_knob(nvml)
        gpus = cls(trial_id, names, knob, allocator)
        log.info("trial %s: GPUs %s (%s=%s)", trial_id, names or "none", ENV, env[ENV])
        if power_w is not None:
            gpus.request_power_w(power_w)
            gpus.sync()
        return gpus

    def request_power_w(self, watts: float | None) -> None:
        """Set every GPU of the trial to ``watts`` at the next boundary (:meth:`sync`)."""
        self._wanted_w = None if watts is None else float(watts)
        self._pending = True

    def sync(self) -> None:
        """Apply a requested power limit now (an epoch boundary).  Never raises."""
        if not self._pending:
            return
        self._pending = False
        watts = self._wanted_w
        if watts is None:
            return
        try:
            for i in self.nvml_indices:
                if i not in self._before:
                    self._before[i] = self.knob.get_w(i)
                self.power_w = self.knob.set_w(i, watts)
            self.reason = ""
            log.info("trial %s: GPU power limit %.0f W on %s (%s)", self.trial_id, watts,
                     self.nvml_indices, self.knob.name)
        except Exception as e:  # noqa: BLE001 - a knob refused is reported, not fatal
            self.power_w = None
            self.reason = f"GPU power limit {watts:.0f} W not applied: {e}"
            log.warning("trial %s: %s", self.trial_id, self.reason)

    def report(self) -> dict[str, Any]:
        """``pt_*`` keys: the GPUs held and the power limit in force."""
        out: dict[str, Any] = {"pt_gpus": len(self.names),
                               "pt_gpu_devices": ",".join(self.names),
                               "pt_gpu_power_w": self.power_w}
        if self.reason:
            out["pt_gpu_reason"] = self.reason
        return out

    def metrics(self) -> dict[str, float]:
        """Numeric facts for the store's epoch record."""
        out = {"gpus": float(len(self.names))}
        if self.power_w is not None:
            out["gpu_power_w"] = float(self.power_w)
        return out

    def close(self) -> None:
        """Give the GPUs back: the power limits they had before.  Never raises."""
        for i, watts in self._before.items():
            try:
                self.knob.set_w(i, watts)
            except Exception as e:  # noqa: BLE001
                log.warning("trial %s: GPU %d power limit not restored: %s", self.trial_id, i, e)
        self._before.clear()
        if self._allocator is not None:
            self._allocator.release(self.trial_id)
        close = getattr(self.knob, "close", None)
        if close is not None:
            try:
                close()
            except Exception as e:  # noqa: BLE001
                log.debug("GPU knob close: %s", e)
