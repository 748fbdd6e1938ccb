"""Memory safety: never limit a trial below what it needs, and undo at once
a limit that hurt it.

- :func:`memory_floor_mb` — the smallest limit pipetune will set: observed
  peak × margin (plus a little headroom for small trials).
- :class:`MemoryGuard` — one per trial: refuses configs below the floor or
  already known to be infeasible, and :meth:`MemoryGuard.poll` detects OOM
  kills and memory pressure (v1: ``memory.oom_control`` oom_kill/under_oom,
  ``memory.failcnt``; v2: ``memory.events`` oom_kill/max/high, all read via
  :meth:`Controller.usage`), reverts to the last config that was safe and
  marks the offending one infeasible for the trial.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from pipetune.control.base import Applied, ControlInputError, Controller, TrialHandle, Usage
from pipetune.errors import ControlError
from pipetune.types import SystemConfig

log = logging.getLogger(__name__)

#: Default safety margin over the observed peak.
MARGIN = 1.25
#: Never limit below this many MB (interpreter, libraries, page cache).
MIN_MB = 64


def memory_floor_mb(peak_mb: float, margin: float = MARGIN, min_mb: int = MIN_MB) -> int:
    """Smallest memory limit (MB) that is safe for a trial whose peak so far
    is ``peak_mb``: ``ceil(peak × margin)``, and at least ``min_mb``."""
    if margin < 1:
        raise ControlInputError(f"memory margin {margin}: must be >= 1")
    return max(min_mb, math.ceil(max(0.0, peak_mb) * margin))


class MemoryEventKind(str, enum.Enum):
    OOM_KILL = "oom_kill"  # the kernel killed a process of the trial
    PRESSURE = "pressure"  # the limit was hit (reclaim/throttle) or the group is stuck at it


@dataclass(frozen=True)
class MemoryEvent:
    """What :meth:`MemoryGuard.poll` found, and what it did about it."""

    kind: MemoryEventKind
    config: SystemConfig  # the config in force when it happened
    count: int  # new OOM kills, or new limit hits
    reverted_to: SystemConfig | None = None
    reason: str = ""


class MemoryGuard:
    """Memory safety of one trial.  Thread safe.

    Call :meth:`check` before applying a config, :meth:`applied` after, and
    :meth:`poll` at least once per epoch (the tuner does it with every
    sample).  ``pressure_hits``: how many new limit hits between two polls
    count as pressure (v1 ``failcnt`` rises on every reclaim at the limit).
    """

    def __init__(self, trial_id: str, *, margin: float = MARGIN, min_mb: int = MIN_MB,
                 pressure_hits: int = 1000) -> None:
        memory_floor_mb(0, margin, min_mb)  # validates margin
        self.trial_id = trial_id
        self.margin = margin
        self.min_mb = min_mb
        self.pressure_hits = pressure_hits
        self.peak_mb = 0.0
        self.infeasible: set[SystemConfig] = set()
        self._current: SystemConfig | None = None
        self._safe: SystemConfig | None = None
        self._current_kw: dict[str, object] = {}
        self._safe_kw: dict[str, object] = {}
        self._last: Usage | None = None
        self._lock = threading.Lock()

    @property
    def floor_mb(self) -> int:
        return memory_floor_mb(self.peak_mb, self.margin, self.min_mb)

    def check(self, config: SystemConfig) -> None:
        """Raise ``ControlInputError`` when ``config`` is known infeasible or
        its memory limit is below the floor."""
        with self._lock:
            if config in self.infeasible:
                raise ControlInputError(
                    f"trial {self.trial_id}: config {config} caused an OOM kill or memory "
                    "pressure before and is marked infeasible"
                )
            if config.memory_mb is not None and config.memory_mb < self.floor_mb:
                raise ControlInputError(
                    f"trial {self.trial_id}: memory limit {config.memory_mb} MB is below the "
                    f"safe floor {self.floor_mb} MB (peak {self.peak_mb:.0f} MB × {self.margin})"
                )

    def applied(self, config: SystemConfig, **apply_kw: object) -> None:
        """Record that ``config`` (with the ``cpus=``/``cpu_quota=`` given to
        ``apply``) is now in force.  The config before it is the one
        :meth:`poll` reverts to."""
        with self._lock:
            if self._current is not None and self._current not in self.infeasible:
                self._safe, self._safe_kw = self._current, self._current_kw
            self._current, self._current_kw = config, dict(apply_kw)

    def apply(self, controller: Controller, handle: TrialHandle, config: SystemConfig,
              *, cpus: Sequence[int] | None = None, cpu_quota: float | None = None) -> Applied:
        """:meth:`check`, ``controller.apply``, :meth:`applied` in one call."""
        self.check(config)
        out = controller.apply(handle, config, cpus=cpus, cpu_quota=cpu_quota)
        self.applied(config, cpus=cpus, cpu_quota=cpu_quota)
        return out

    def observe(self, usage: Usage) -> MemoryEvent | None:
        """Update the peak from ``usage`` and say whether a new OOM kill or
        pressure shows since the last observation (no action taken)."""
        with self._lock:
            self.peak_mb = max(self.peak_mb, usage.memory_peak_mb, usage.memory_current_mb)
            last, self._last = self._last, usage
            config = self._current or SystemConfig(1)
            if last is None:
                if usage.oom_kills:
                    return MemoryEvent(MemoryEventKind.OOM_KILL, config, usage.oom_kills)
                return None
            if usage.oom_kills > last.oom_kills:
                return MemoryEvent(MemoryEventKind.OOM_KILL, config,
                                   usage.oom_kills - last.oom_kills)
            hits = usage.limit_hits - last.limit_hits
            if usage.under_oom or hits >= self.pressure_hits:
                return MemoryEvent(MemoryEventKind.PRESSURE, config, hits)
            return None

    def poll(self, controller: Controller, handle: TrialHandle) -> MemoryEvent | None:
        """Read the trial's usage; on a new OOM kill or pressure under a
        memory limit, mark the config infeasible and put the last safe config
        back at once (no memory limit when there was none before).  Returns
        what happened, or ``None``."""
        event = self.observe(controller.usage(handle))
        if event is None:
            return None
        with self._lock:
            bad = self._current
            if bad is None or bad.memory_mb is None:
                # Not our limit's doing (no limit in force): only report.
                log.warning("trial %s: %s without a pipetune memory limit", self.trial_id,
                            event.kind.value)
                return event
            self.infeasible.add(bad)
            if self._safe is not None and self._safe not in self.infeasible:
                target, kw = self._safe, self._safe_kw
            else:  # nothing known safe: the same cores without a memory limit
                target, kw = SystemConfig(bad.cores, None, bad.gpus), self._current_kw
        try:
            controller.apply(handle, target, **kw)  # type: ignore[arg-type]
        except ControlError as e:
            log.error("trial %s: could not revert %s after %s: %s", self.trial_id, bad,
                      event.kind.value, e)
            return MemoryEvent(event.kind, bad, event.count, None, f"revert failed: {e}")
        with self._lock:
            self._current, self._current_kw = target, kw
        reason = f"{event.kind.value} under {bad}: reverted to {target}, {bad} marked infeasible"
        log.warning("trial %s: %s", self.trial_id, reason)
        return MemoryEvent(event.kind, bad, event.count, target, reason)
