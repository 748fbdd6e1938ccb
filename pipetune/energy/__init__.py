"""Energy: node meters, per-trial attribution and power sampling.

- :class:`EnergyMeter` (``base.py``): cumulative node joules of one source,
  labelled ``rapl``, ``nvml`` or ``estimated``.
- :class:`RaplMeter` (``rapl.py``), :class:`NvmlMeter` (``nvml.py``),
  :class:`EstimatedMeter` (``estimate.py``): the sources.
- :func:`detect_meters`: what this host has, probed once; each missing
  source is logged once with the reason.
- :class:`TrialEnergy` (``trial.py``): a trial's share, interval by interval.
- :class:`PowerSampler` (``sampler.py``): node watts into the store at 1 Hz.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pipetune.energy.base import (
    METHODS,
    EnergyError,
    EnergyMeter,
    EnergyUnavailableError,
    method_label,
)
from pipetune.energy.cputime import ProcessTreeCpu, node_busy_s
from pipetune.energy.estimate import (
    DEFAULT_WATTS_PER_CPU,
    TDP_TABLE,
    CpuPower,
    EstimatedMeter,
    cpu_model,
)
from pipetune.energy.nvml import NvmlMeter, nvml_available
from pipetune.energy.rapl import RaplMeter, RaplZone, rapl_available, rapl_zones
from pipetune.energy.sampler import PowerSampler
from pipetune.energy.trial import TrialEnergy

__all__ = [
    "trial_energy",
    "DEFAULT_WATTS_PER_CPU",
    "METHODS",
    "TDP_TABLE",
    "CpuPower",
    "EnergyError",
    "EnergyMeter",
    "EnergyUnavailableError",
    "EstimatedMeter",
    "NvmlMeter",
    "PowerSampler",
    "ProcessTreeCpu",
    "RaplMeter",
    "RaplZone",
    "TrialEnergy",
    "cpu_model",
    "detect_meters",
    "energy_sources",
    "method_label",
    "node_busy_s",
    "nvml_available",
    "rapl_available",
    "rapl_zones",
]

log = logging.getLogger(__name__)

_logged_lock = threading.Lock()
_logged: set[str] = set()


def _log_once(message: str) -> None:
    """Log a missing source once per process: detection runs per job, the reason
    does not change."""
    with _logged_lock:
        if message in _logged:
            return
        _logged.add(message)
    log.info("%s", message)


def energy_sources(*, sysfs_root: Path = Path("/"), nvml: Any = None) -> dict[str, bool | str]:
    """Each source's availability: ``True`` or the reason it is missing.

    ``estimated`` is always available.  For ``pipetune doctor``.
    """
    return {
        "rapl": rapl_available(sysfs_root),
        "nvml": nvml_available(nvml),
        "estimated": True,
    }


def detect_meters(*, sysfs_root: Path = Path("/"), nvml: Any = None) -> list[EnergyMeter]:
    """The meters this host supports: RAPL or else the estimate, plus NVML if present.

    Args:
        sysfs_root: root of the sysfs tree (``/``; a fake tree in tests).
        nvml: the NVML module; default ``pynvml`` if installed.

    Returns:
        Open meters; the caller closes them.  Never empty: without RAPL the
        CPU side is an :class:`EstimatedMeter` of the whole node.
    """
    meters: list[EnergyMeter] = []
    reason = rapl_available(sysfs_root)
    if reason is True:
        try:
            meters.append(RaplMeter(sysfs_root))
        except EnergyUnavailableError as e:
            reason = str(e)
    if reason is not True:
        estimated = EstimatedMeter()
        _log_once(f"RAPL energy unavailable ({reason}); CPU energy is estimated: "
                  f"{estimated.model_description}")
        meters.append(estimated)
    reason = nvml_available(nvml)
    if reason is True:
        try:
            meters.append(NvmlMeter(nvml))
        except EnergyUnavailableError as e:
            reason = str(e)
    if reason is not True:
        _log_once(f"GPU energy unavailable ({reason})")
    return meters


def trial_energy(pids: Any, meters: list[EnergyMeter] | None = None, *,
                 gpus: Any = None) -> TrialEnergy | None:
    """A :class:`TrialEnergy` for ``pids`` (a list or a callable) on
    ``meters`` (default: this host's, :func:`detect_meters`; a trial whose
    node daemon reads RAPL for it passes the daemon's), or None, logged,
    when no meter can be opened: energy is a figure, never a reason to stop
    a trial.  Each consumer gets its own, since intervals are per object.
    ``gpus``: the NVML indices the trial holds (or a callable giving them);
    default: the GPUs NVML lists one of its processes on."""
    try:
        return TrialEnergy(meters if meters is not None else detect_meters(), pids, gpus=gpus)
    except Exception as e:  # noqa: BLE001 - see the docstring
        log.info("no energy figures for pids %s: %s", pids, e)
        return None
