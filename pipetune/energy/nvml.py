"""GPU energy through NVML (``nvidia-ml-py``, imported as ``pynvml``): :class:`NvmlMeter`.

Per GPU, the meter uses ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules
since the driver loaded; Volta and newer) when the GPU supports it, and
otherwise integrates ``nvmlDeviceGetPowerUsage`` (milliwatts) over time
(trapezoids) in a poll thread.  The NVML module is a constructor argument, so
tests pass a fake module object; on a real host it is ``pynvml``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pipetune.energy.base import EnergyMeter, EnergyUnavailableError, PollThread

log = logging.getLogger(__name__)

DEFAULT_POWER_POLL_INTERVAL_S = 0.1


def import_nvml() -> ModuleType:
    """``pynvml`` from nvidia-ml-py; EnergyUnavailableError if it is not installed."""
    try:
        import pynvml
    except ImportError as e:
        raise EnergyUnavailableError(
            "no NVML: the nvidia-ml-py package is not installed (pip install nvidia-ml-py)"
        ) from e
    return pynvml


def _nvml_error(nvml: Any) -> type[BaseException]:
    return getattr(nvml, "NVMLError", Exception)


def nvml_available(nvml: Any = None) -> bool | str:
    """``True`` if NVML initialises and sees at least one GPU, else the reason why not."""
    try:
        nvml = nvml if nvml is not None else import_nvml()
    except EnergyUnavailableError as e:
        return str(e)
    try:
        nvml.nvmlInit()
    except _nvml_error(nvml) as e:
        return f"no NVML: nvmlInit failed: {e} (no NVIDIA driver on this host?)"
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except _nvml_error(nvml) as e:
        return f"no NVML: nvmlDeviceGetCount failed: {e}"
    finally:
        _shutdown(nvml)
    return True if count > 0 else "no NVML GPUs: the driver reports 0 devices"


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - shutting down is best effort
        log.debug("nvmlShutdown failed", exc_info=True)


@dataclass
class _Gpu:
    index: int
    handle: Any
    uses_counter: bool
    last_mj: int = 0  # counter mode: last raw counter
    last_t: float = 0.0  # power mode: time and power of the last poll
    last_w: float = 0.0
    total_j: float = 0.0
    warned: bool = False


class NvmlMeter(EnergyMeter):
    """Energy of the node's NVIDIA GPUs (sum), and per GPU via :meth:`read_gpus_j`.

    Args:
        nvml: the NVML module (``pynvml``); default imports it.
        gpus: indices of the GPUs to measure; default all.
        poll_interval_s: power-sampling period for GPUs without an energy
            counter; ``0`` starts no thread (tests call :meth:`poll`).
        clock: monotonic seconds; a test passes its own to make power × time exact.

    Raises:
        EnergyUnavailableError: NVML cannot start or no GPU can be measured.
    """

    method = "nvml"

    def __init__(
        self,
        nvml: Any = None,
        *,
        gpus: Sequence[int] | None = None,
        poll_interval_s: float = DEFAULT_POWER_POLL_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml if nvml is not None else import_nvml()
        self._error = _nvml_error(self._nvml)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._nvml.nvmlInit()
        except self._error as e:
            raise EnergyUnavailableError(f"no NVML: nvmlInit failed: {e}") from e
        self._open = True
        try:
            indices = list(gpus) if gpus is not None else range(
                int(self._nvml.nvmlDeviceGetCount()))
            self._gpus = [g for g in (self._open_gpu(i) for i in indices) if g is not None]
        except self._error as e:
            self.close()
            raise EnergyUnavailableError(f"no NVML: listing GPUs failed: {e}") from e
        if not self._gpus:
            self.close()
            raise EnergyUnavailableError("no NVML GPU can be measured (see the log for why)")
        needs_poll = any(not g.uses_counter for g in self._gpus)
        self._poller = (PollThread(self.poll, poll_interval_s, "pipetune-nvml-poll")
                        if needs_poll and poll_interval_s > 0 else None)

    def _open_gpu(self, index: int) -> _Gpu | None:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        try:
            return _Gpu(index, handle, True,
                        last_mj=int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle)))
        except self._error as e:
            log.info("GPU %d has no NVML energy counter (%s); integrating power over time",
                     index, e)
        try:
            watts = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
        except self._error as e:
            log.warning("GPU %d: neither energy counter nor power reading in NVML (%s); "
                        "not measured", index, e)
            return None
        return _Gpu(index, handle, False, last_t=self._clock(), last_w=watts)

    @property
    def description(self) -> str:
        parts = [f"GPU {g.index} ({'energy counter' if g.uses_counter else 'power x time'})"
                 for g in self._gpus]
        return "NVML " + ", ".join(parts)

    @property
    def gpu_indices(self) -> list[int]:
        return [g.index for g in self._gpus]

    def poll(self) -> None:
        """Read every GPU once: counters by difference, power by trapezoids."""
        with self._lock:
            if not self._open:
                return
            for gpu in self._gpus:
                try:
                    if gpu.uses_counter:
                        raw = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle))
                        delta = raw - gpu.last_mj
                        # A smaller value means the driver reloaded: count from zero.
                        gpu.total_j += (delta if delta >= 0 else raw) / 1000.0
                        gpu.last_mj = raw
                    else:
                        watts = self._nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0
                        now = self._clock()
                        gpu.total_j += (gpu.last_w + watts) / 2.0 * max(0.0, now - gpu.last_t)
                        gpu.last_t, gpu.last_w = now, watts
                except self._error as e:
                    if not gpu.warned:
                        log.warning("GPU %d: NVML read failed (%s); keeping its last value",
                                    gpu.index, e)
                        gpu.warned = True

    def read_gpus_j(self) -> dict[int, float]:
        """Joules per GPU index since the meter started."""
        self.poll()
        with self._lock:
            return {g.index: g.total_j for g in self._gpus}

    def read_j(self) -> float:
        return sum(self.read_gpus_j().values())

    def gpu_pids(self) -> dict[int, set[int]]:
        """PIDs with a compute context on each GPU (empty where NVML will not say).

        NVML reports host PIDs; inside a container they may not match the
        container's PIDs, so callers that know which GPUs a trial holds
        should say so instead (``TrialEnergy(gpus=...)``).
        """
        out: dict[int, set[int]] = {}
        for gpu in self._gpus:
            try:
                procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(gpu.handle)
                out[gpu.index] = {int(p.pid) for p in procs}
            except (self._error, AttributeError):
                out[gpu.index] = set()
        return out

    def close(self) -> None:
        poller, self._poller = getattr(self, "_poller", None), None
        if poller is not None:
            poller.stop()
        with self._lock:
            if getattr(self, "_open", False):
                self._open = False
                _shutdown(self._nvml)
