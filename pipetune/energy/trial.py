"""Per-trial energy attribution: :class:`TrialEnergy`.

Several trials share a node; the node's meters cannot tell them apart.  The
rule (DESIGN §12):

    trial CPU-side energy = node CPU-side energy in the interval
                            x trial CPU seconds / node busy CPU seconds
    trial GPU energy      = energy of the GPUs the trial holds, in full

The share is of *busy* node CPU time, so RAPL's idle power is carried by
whoever was busy in the interval.  CPU-side energy comes from RAPL when the
node has it, else from the estimate; GPU energy from NVML.  The label says
which sources contributed: ``"rapl"``, ``"estimated"``, ``"rapl+nvml"``,
``"estimated+nvml"``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence

from pipetune.energy.base import EnergyMeter, method_label
from pipetune.energy.cputime import PidsSource, ProcessTreeCpu, node_busy_s
from pipetune.energy.nvml import NvmlMeter

log = logging.getLogger(__name__)

GpusSource = Iterable[int] | Callable[[], Iterable[int]]


class TrialEnergy:
    """Joules of one trial, interval by interval (typically one epoch each).

    Args:
        meters: the node's meters (from :func:`~pipetune.energy.detect_meters`),
            shared with other trials and the power sampler.
        pids: the trial's root PIDs, or a callable giving them (descendants
            are followed: DataLoader workers count).
        gpus: GPU indices the trial holds, or a callable giving them.  Default:
            the GPUs on which NVML lists one of the trial's processes.

    Neither construction nor :meth:`interval` raises: attribution must not
    stop training.  A failure gives ``(0.0, "none")`` for that interval, and
    the next one starts from the next good reading.  The first interval runs
    from construction.  Thread-safe.
    """

    def __init__(self, meters: Sequence[EnergyMeter], pids: PidsSource,
                 *, gpus: GpusSource | None = None) -> None:
        rapl = [m for m in meters if m.method == "rapl"]
        # RAPL, when present, measures what the estimate guesses: never add both.
        self._cpu_meters = rapl or [m for m in meters if m.method == "estimated"]
        self._gpu_meters = [m for m in meters if isinstance(m, NvmlMeter)]
        if gpus is None:
            self._gpus: Callable[[], Iterable[int]] | None = None
        elif callable(gpus):
            self._gpus = gpus
        else:
            fixed = tuple(int(g) for g in gpus)
            self._gpus = lambda: fixed
        self._lock = threading.Lock()
        self._tree = ProcessTreeCpu(pids)
        self.total_j = 0.0
        self.last_cpu_share = 0.0
        self._failed = False
        self._has_baseline = False
        with self._lock:
            self._guarded(self._take_baseline)

    def _take_baseline(self) -> tuple[float, str]:
        self._last_cpu_s = self._tree.sample()
        self._last_node_busy_s = node_busy_s()
        self._last_cpu_j = self._read_cpu_j()
        self._last_gpu_j = self._read_gpus_j()
        self._has_baseline = True
        return 0.0, "none"

    def _guarded(self, step: Callable[[], tuple[float, str]]) -> tuple[float, str]:
        try:
            return step()
        except Exception:  # noqa: BLE001 - attribution must not stop training
            if not self._failed:
                log.warning("trial energy attribution failed; reporting 0 J with method "
                            "'none'", exc_info=True)
                self._failed = True
            return 0.0, "none"

    def _read_cpu_j(self) -> float:
        return sum(m.read_j() for m in self._cpu_meters)

    def _read_gpus_j(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for meter in self._gpu_meters:
            out.update(meter.read_gpus_j())  # type: ignore[attr-defined]
        return out

    def _held_gpus(self) -> set[int]:
        if self._gpus is not None:
            return {int(g) for g in self._gpus()}
        pids = self._tree.current_pids
        held: set[int] = set()
        for meter in self._gpu_meters:
            for index, gpu_pids in meter.gpu_pids().items():  # type: ignore[attr-defined]
                if gpu_pids & pids:
                    held.add(index)
        return held

    def interval(self) -> tuple[float, str]:
        """``(joules since the last call, method label)`` for this trial."""
        with self._lock:
            if not self._has_baseline:
                # No start point (the meters failed before): none can be invented.
                return self._guarded(self._take_baseline)
            return self._guarded(self._interval)

    def _interval(self) -> tuple[float, str]:
        cpu_s = self._tree.sample()
        busy_s = node_busy_s()
        cpu_j = self._read_cpu_j()
        gpu_j = self._read_gpus_j()
        d_trial = cpu_s - self._last_cpu_s
        d_node = busy_s - self._last_node_busy_s
        d_cpu_j = max(0.0, cpu_j - self._last_cpu_j)
        # Sampling the trial and the node is not atomic: a share a hair above 1
        # is rounding, and a trial cannot use more than the whole node.
        share = min(1.0, d_trial / d_node) if d_node > 0 else (1.0 if d_trial > 0 else 0.0)
        energy_j = d_cpu_j * max(0.0, share)
        methods = [m.method for m in self._cpu_meters]
        held = self._held_gpus() if self._gpu_meters else set()
        for index in held:
            if index in gpu_j:
                energy_j += max(0.0, gpu_j[index] - self._last_gpu_j.get(index, 0.0))
                methods.append("nvml")
        self._last_cpu_s, self._last_node_busy_s = cpu_s, busy_s
        self._last_cpu_j, self._last_gpu_j = cpu_j, gpu_j
        self.last_cpu_share = share
        self.total_j += energy_j
        return energy_j, method_label(methods)
