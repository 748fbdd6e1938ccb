"""A fake NVML module: the subset of pynvml that NvmlMeter uses (this host has no GPU).

Signatures, return units (mJ, mW) and the error type (``NVMLError`` with the
return code in ``.value``) follow nvidia-ml-py's ``pynvml.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NOT_SUPPORTED = 3


class FakeNVMLError(Exception):
    """Like pynvml.NVMLError: carries the NVML return code in ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 9: "Driver Not Loaded"}.get(self.value, str(self.value))


@dataclass
class FakeGpu:
    energy_mj: int | None  # None: no total-energy counter (pre-Volta)
    power_mw: int = 0
    pids: list[int] = field(default_factory=list)


@dataclass
class _Proc:
    pid: int
    usedGpuMemory: int = 0  # noqa: N815 - NVML's name


class FakeNvml:
    """The subset of pynvml that NvmlMeter uses, over settable fake GPUs."""

    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = NOT_SUPPORTED

    def __init__(self, gpus: list[FakeGpu], *, init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:  # noqa: N802
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        return self.gpus[index]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:  # noqa: N802
        if handle.energy_mj is None:
            raise FakeNVMLError(NOT_SUPPORTED)
        return handle.energy_mj

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:  # noqa: N802
        return handle.power_mw

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list[Any]:  # noqa: N802
        return [_Proc(p) for p in handle.pids]
