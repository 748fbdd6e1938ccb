"""Dry-run controller: records and logs what it would apply, changes nothing.

:class:`DryRunController` keeps the same bookkeeping and usage reading as the
affinity fallback (so a dry run still reports CPU time and memory), but never
touches an affinity mask or a cgroup.  Every knob of every :class:`Applied`
is listed in ``skipped`` so no caller mistakes a dry run for a limit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pipetune.control.affinity import AffinityController
from pipetune.control.base import Applied, TrialHandle
from pipetune.types import SystemConfig

log = logging.getLogger(__name__)


class DryRunController(AffinityController):
    """Logs every decision at INFO; enforces nothing."""

    name = "dry-run"
    enforcing = False

    def apply(self, handle: TrialHandle, config: SystemConfig, *,
              cpus: Sequence[int] | None = None, cpu_quota: float | None = None) -> Applied:
        applied = super().apply(handle, config, cpus=cpus, cpu_quota=cpu_quota)
        skipped = {"cores": "dry run: nothing changed"}
        if applied.cpu_quota is not None:
            skipped["cpu_quota"] = "dry run: nothing changed"
        if config.memory_mb is not None:
            skipped["memory_mb"] = "dry run: nothing changed"
        if config.gpus:
            skipped["gpus"] = applied.skipped["gpus"]
        log.info("dry-run: trial %s would get cpus %s, quota %s, memory %s MB", handle.trial_id,
                 list(applied.cpus), applied.cpu_quota, config.memory_mb)
        return Applied(applied.trial_id, self.name, config, applied.cpus, applied.cpu_quota,
                       applied.memory_mb, skipped)
