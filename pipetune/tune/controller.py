"""Which controller a trial gets: the node daemon's, else its own.

:func:`trial_controller` is the one place that chooses, for every mode, so
baselines and pipetune trials are confined alike:

1. a node daemon answers on ``settings.socket`` with this API version →
   :class:`~pipetune.daemon.client.DaemonController` (the daemon applies,
   with its privileges and its node allocator);
2. else the local controller of ``settings.controller`` (cgroups when
   writable, else CPU affinity, or a dry run), wrapped in an
   :class:`~pipetune.control.AllocatingController` whose
   :class:`~pipetune.control.SharedNodeAllocator` table lives in
   ``PIPETUNE_HOME``: concurrent trials of one node get disjoint CPUs
   without a daemon too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipetune.config import Settings
from pipetune.control import (
    AllocatingController,
    Controller,
    SharedNodeAllocator,
    detect_controller,
)
from pipetune.control.base import safe_name
from pipetune.errors import PipetuneError

log = logging.getLogger(__name__)


def allocator_table(settings: Settings) -> Path:
    """The node's shared CPU table: per node, so a home shared by several
    nodes (NFS) keeps their CPUs apart."""
    return Path(settings.home) / "nodes" / f"{safe_name(settings.node)}.cpus.json"


def trial_controller(settings: Settings, *, job: str = "job") -> Controller:
    """The controller of a trial starting now on this node (module docstring).

    Never raises for an unusable host: a controller that cannot be had
    falls back to the dry run, which enforces nothing and says so.
    """
    if settings.controller != "dry-run":
        try:
            from pipetune.daemon.client import daemon_controller

            remote = daemon_controller(settings, job=job)
        except Exception as e:  # noqa: BLE001 - no daemon is a normal case
            log.info("no node daemon (%s): the trial controls itself", e)
            remote = None
        if remote is not None:
            return remote
    try:
        local = detect_controller(settings.controller)
    except PipetuneError as e:
        log.warning("no controller (%s): configs are only logged (dry run)", e)
        local = detect_controller("dry-run")
        local.degraded = f"no controller ({e}): configs are only logged (dry run)"
    return AllocatingController(local, SharedNodeAllocator(allocator_table(settings)))


def trial_meters(controller: Controller) -> list[Any] | None:
    """The energy meters of a trial: the node daemon's RAPL reading when the
    daemon serves one and this process cannot read RAPL itself (privileged
    energy reads, like privileged limits, go through the daemon), plus the
    local GPU meters; ``None``: the host's own meters."""
    if "rapl" not in getattr(controller, "energy", ()):
        return None
    try:
        from pipetune.daemon.client import DaemonController, DaemonRaplMeter
        from pipetune.energy import detect_meters

        if not isinstance(controller, DaemonController):
            return None
        local = detect_meters()
        if any(m.method == "rapl" for m in local):
            return local
        for m in local:
            if m.method != "nvml":
                m.close()
        return [DaemonRaplMeter(controller.client)] + [m for m in local if m.method == "nvml"]
    except Exception as e:  # noqa: BLE001 - energy is a figure
        log.info("energy meters via the daemon unavailable: %s", e)
        return None
