"""GPUs of a trial: which ones it sees, and their power limit.

- :func:`visible_devices_env` / :func:`parse_visible_devices` —
  ``CUDA_VISIBLE_DEVICES`` for a trial.  Visibility is fixed when a process
  starts (the CUDA runtime reads it once), so it is chosen before the trial
  starts, never changed live.
- :class:`GpuAllocator` — disjoint GPU indices for concurrent trials.
- :class:`PowerLimitKnob` — the live GPU knob: the NVML power limit.
  :class:`NvmlPowerLimit` drives it through nvidia-ml-py (``pynvml``, or any
  object with the same functions: tests pass a fake); :class:`NoPowerLimit`
  stands for a host without NVML and says why when used.
  :func:`power_limit_knob` picks one, probing NVML once.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from pipetune.control.base import ControlInputError
from pipetune.errors import ControlError, NotSupportedError, PrivilegeError

log = logging.getLogger(__name__)

ENV = "CUDA_VISIBLE_DEVICES"


def parse_visible_devices(value: str | None) -> list[str] | None:
    """Devices named by a ``CUDA_VISIBLE_DEVICES`` value: ``None`` when unset
    (every GPU visible), ``[]`` when it hides them all."""
    if value is None:
        return None
    out = []
    for v in value.split(","):
        v = v.strip()
        if not v:
            continue
        if v == "-1":  # CUDA stops at the first invalid index
            break
        out.append(v)
    return out


def visible_devices_env(devices: Sequence[int | str],
                        base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a trial that should see exactly ``devices`` (indices or
    UUIDs), relative to what ``base`` (default: this process's environment)
    already shows: index ``i`` means the i-th GPU *visible here*.  No
    devices hides every GPU (``""``)."""
    env = dict(os.environ if base is None else base)
    seen = parse_visible_devices(env.get(ENV))
    names: list[str] = []
    for d in devices:
        if isinstance(d, int) and not isinstance(d, bool):
            if d < 0:
                raise ControlInputError(f"GPU index {d}: must be >= 0")
            if seen is not None:
                if d >= len(seen):
                    raise ControlInputError(
                        f"GPU index {d}: only {len(seen)} GPU(s) visible ({','.join(seen)})"
                    )
                names.append(seen[d])
            else:
                names.append(str(d))
        else:
            names.append(str(d))
    if len(set(names)) != len(names):
        raise ControlInputError(f"GPUs {list(devices)}: repeated")
    env[ENV] = ",".join(names)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # indices as nvidia-smi counts them
    return env


class GpuAllocator:
    """Disjoint GPU indices for the trials of one node.  Thread safe.
    Unlike CPUs, GPUs are never shared: asking for more than are free raises."""

    def __init__(self, count: int) -> None:
        if count < 0:
            raise ControlInputError(f"GPU count {count}: must be >= 0")
        self.count = count
        self._held: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()

    def allocate(self, trial_id: str, gpus: int) -> list[int]:
        if gpus < 0:
            raise ControlInputError(f"gpus={gpus}: must be >= 0")
        with self._lock:
            self._held.pop(trial_id, None)
            used = {g for held in self._held.values() for g in held}
            free = [g for g in range(self.count) if g not in used]
            if gpus > len(free):
                raise ControlInputError(
                    f"trial {trial_id} asks for {gpus} GPU(s); {len(free)} of {self.count} free"
                )
            self._held[trial_id] = tuple(free[:gpus])
            return list(free[:gpus])

    def release(self, trial_id: str) -> None:
        with self._lock:
            self._held.pop(trial_id, None)


class PowerLimitKnob(abc.ABC):
    """GPU power limit, in watts, per GPU index (as NVML counts them)."""

    name = "abstract"

    @abc.abstractmethod
    def count(self) -> int: ...

    @abc.abstractmethod
    def get_w(self, index: int) -> float: ...

    @abc.abstractmethod
    def constraints_w(self, index: int) -> tuple[float, float]:
        """(min, max) the device accepts."""

    @abc.abstractmethod
    def set_w(self, index: int, watts: float) -> float:
        """Set the limit; returns the value now in force."""

    def reset(self, index: int) -> float:  # noqa: B027 - optional
        """Back to the device default."""
        raise NotSupportedError(f"{self.name}: cannot reset power limits")

    def processes(self, index: int) -> list[int]:  # noqa: B027 - optional
        """PIDs computing on GPU ``index`` now (whose work its limit throttles)."""
        raise NotSupportedError(f"{self.name}: cannot list a GPU's processes")


class NoPowerLimit(PowerLimitKnob):
    """A host without a usable NVML: every call says why."""

    name = "none"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def count(self) -> int:
        return 0

    def _no(self) -> NotSupportedError:
        return NotSupportedError(f"GPU power limit unavailable: {self.reason}")

    def get_w(self, index: int) -> float:
        raise self._no()

    def constraints_w(self, index: int) -> tuple[float, float]:
        raise self._no()

    def set_w(self, index: int, watts: float) -> float:
        raise self._no()


class NvmlPowerLimit(PowerLimitKnob):
    """Power limit through NVML.  ``nvml``: the ``pynvml`` module (imported
    when not given) or an object with the same functions and ``NVMLError``.
    Initialises NVML on construction; :meth:`close` shuts it down."""

    name = "nvml"

    def __init__(self, nvml: Any = None) -> None:
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as e:
                raise NotSupportedError("nvidia-ml-py (pynvml) is not installed") from e
        self.nvml = nvml
        self._lock = threading.Lock()
        self._call("nvmlInit")

    def _call(self, fn: str, *args: Any) -> Any:
        nvml = self.nvml
        try:
            with self._lock:
                return getattr(nvml, fn)(*args)
        except nvml.NVMLError as e:
            code = getattr(e, "value", None)
            if code == getattr(nvml, "NVML_ERROR_NO_PERMISSION", 4):
                raise PrivilegeError(f"NVML {fn}: no permission (needs root)") from e
            if code == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3):
                raise NotSupportedError(f"NVML {fn}: not supported by this GPU") from e
            if code == getattr(nvml, "NVML_ERROR_INVALID_ARGUMENT", 2):
                raise ControlInputError(f"NVML {fn}{args[1:]}: invalid argument") from e
            raise ControlError(f"NVML {fn}: {e}") from e

    def _handle(self, index: int) -> Any:
        n = self.count()
        if not 0 <= index < n:
            raise ControlInputError(f"GPU index {index}: this node has {n} GPU(s)")
        return self._call("nvmlDeviceGetHandleByIndex", index)

    def count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def get_w(self, index: int) -> float:
        return self._call("nvmlDeviceGetPowerManagementLimit", self._handle(index)) / 1000.0

    def constraints_w(self, index: int) -> tuple[float, float]:
        lo, hi = self._call("nvmlDeviceGetPowerManagementLimitConstraints", self._handle(index))
        return lo / 1000.0, hi / 1000.0

    def set_w(self, index: int, watts: float) -> float:
        lo, hi = self.constraints_w(index)
        if not lo <= watts <= hi:
            raise ControlInputError(
                f"GPU {index}: power limit {watts:.0f} W outside {lo:.0f}-{hi:.0f} W"
            )
        h = self._handle(index)
        self._call("nvmlDeviceSetPowerManagementLimit", h, int(round(watts * 1000)))
        now = self._call("nvmlDeviceGetPowerManagementLimit", h) / 1000.0
        log.info("GPU %d power limit set to %.0f W", index, now)
        return now

    def processes(self, index: int) -> list[int]:
        running = self._call("nvmlDeviceGetComputeRunningProcesses", self._handle(index))
        return sorted({int(p.pid) for p in running})

    def reset(self, index: int) -> float:
        h = self._handle(index)
        default = self._call("nvmlDeviceGetPowerManagementDefaultLimit", h)
        self._call("nvmlDeviceSetPowerManagementLimit", h, default)
        return default / 1000.0

    def close(self) -> None:
        try:
            self._call("nvmlShutdown")
        except ControlError as e:
            log.debug("nvmlShutdown: %s", e)


def power_limit_knob(nvml: Any = None) -> PowerLimitKnob:
    """NVML when it initialises and sees a GPU, else a :class:`NoPowerLimit`
    that says why (logged once here)."""
    try:
        knob = NvmlPowerLimit(nvml)
        if knob.count() == 0:
            knob.close()
            raise NotSupportedError("NVML sees no GPU")
        return knob
    except (NotSupportedError, ControlError) as e:
        log.info("GPU power limit unavailable: %s", e)
        return NoPowerLimit(str(e))
