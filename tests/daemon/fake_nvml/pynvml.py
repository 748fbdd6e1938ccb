"""A fake ``pynvml`` for a daemon process on a host without GPUs.

Put this folder first on the daemon's ``PYTHONPATH`` and name a JSON file in
``PIPETUNE_FAKE_NVML``; the file is the "hardware": the test writes the GPUs
(limits and constraints in milliwatts, as NVML counts, and the PIDs computing
on each) and reads back what the daemon set.  Signatures, units and
``NVMLError`` (return code in ``.value``) follow nvidia-ml-py's ``pynvml.py``.

    {"gpus": [{"limit_mw": 300000, "min_mw": 100000, "max_mw": 400000,
               "default_mw": 300000, "pids": [], "energy_mj": 0}],
     "sets": [[index, mw], ...]}
"""

from __future__ import annotations

import json
import os
import threading
from types import SimpleNamespace
from typing import Any

NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4

_lock = threading.Lock()


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value


def _path() -> str:
    return os.environ["PIPETUNE_FAKE_NVML"]


def _read() -> dict[str, Any]:
    with open(_path()) as fh:
        return json.load(fh)


def _gpu(handle: int) -> dict[str, Any]:
    return _read()["gpus"][handle]


def nvmlInit() -> None:  # noqa: N802 - NVML's names
    _read()


def nvmlShutdown() -> None:  # noqa: N802
    pass


def nvmlDeviceGetCount() -> int:  # noqa: N802
    return len(_read()["gpus"])


def nvmlDeviceGetHandleByIndex(index: int) -> int:  # noqa: N802
    if not 0 <= index < nvmlDeviceGetCount():
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return index


def nvmlDeviceGetPowerManagementLimit(handle: int) -> int:  # noqa: N802
    return int(_gpu(handle)["limit_mw"])


def nvmlDeviceGetPowerManagementLimitConstraints(handle: int) -> tuple[int, int]:  # noqa: N802
    g = _gpu(handle)
    return int(g["min_mw"]), int(g["max_mw"])


def nvmlDeviceGetPowerManagementDefaultLimit(handle: int) -> int:  # noqa: N802
    return int(_gpu(handle)["default_mw"])


def nvmlDeviceSetPowerManagementLimit(handle: int, mw: int) -> None:  # noqa: N802
    with _lock:
        state = _read()
        g = state["gpus"][handle]
        if not g["min_mw"] <= mw <= g["max_mw"]:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        g["limit_mw"] = int(mw)
        state.setdefault("sets", []).append([handle, int(mw)])
        tmp = _path() + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(state, fh)
        os.replace(tmp, _path())


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[Any]:  # noqa: N802
    return [SimpleNamespace(pid=p, usedGpuMemory=0) for p in _gpu(handle).get("pids", [])]


def nvmlDeviceGetTotalEnergyConsumption(handle: int) -> int:  # noqa: N802
    return int(_gpu(handle).get("energy_mj", 0))


def nvmlDeviceGetPowerUsage(handle: int) -> int:  # noqa: N802
    return 0
