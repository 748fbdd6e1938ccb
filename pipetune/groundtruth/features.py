"""Profile → feature vector, made comparable across runs and trials.

Raw rates are a poor distance space: one huge counter (page faults, context
switches) decides every cluster, and the same workload on 1 or 2 cores has
twice the rates.  So :class:`FeatureScaler`

1. keeps only events every training record has (and, at match time, the
   events the new profile has too);
2. divides count-like rates by the CPU time rate (``task-clock`` …), so a
   feature is "events per CPU-second", independent of the cores granted —
   level-like figures (RSS, threads) and the CPU rate itself are kept as is;
3. takes ``log1p`` (rates span orders of magnitude; ratios matter, not
   differences);
4. standardises each feature with the training mean and a floored standard
   deviation, so a feature that happens to be constant in the history cannot
   explode a distance.

Its parameters are plain lists, so a fitted scaler is saved as JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipetune.errors import GroundTruthError

#: CPU-time rate events, in order of preference (perf software events, then
#: procfs figures of the profiler).  Their rate is "CPU-seconds per second"
#: up to a unit factor, which cancels after standardisation.
CPU_EVENTS: tuple[str, ...] = (
    "task-clock",
    "cpu-clock",
    "proc.cpu_s",
    "proc.cpu_time",
    "cpu_s",
    "cpu_time",
)

#: CPU-seconds per unit of a CPU event (perf counts task-clock in msec), so
#: features are counts per CPU-*second*: log1p compresses values below 1, so
#: the unit matters (per CPU-millisecond every rate would look like zero).
CPU_EVENT_SECONDS: dict[str, float] = {"task-clock": 1e-3, "cpu-clock": 1e-3}

#: Substrings that mark level-like figures (not counts): not divided by CPU time.
LEVEL_MARKERS: tuple[str, ...] = ("rss", "vms", "memory", "mem_mb", "threads", "num_fds", "util")


def is_level(event: str, markers: Sequence[str] = LEVEL_MARKERS) -> bool:
    e = event.lower()
    return any(m in e for m in markers)


@dataclass(frozen=True)
class FeatureScaler:
    """Fitted feature transformation (see the module docstring)."""

    events: tuple[str, ...]
    cpu_event: str | None
    levels: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    # -- fitting -------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        rates: Sequence[Mapping[str, float]],
        *,
        min_std: float = 0.1,
        cpu_events: Sequence[str] = CPU_EVENTS,
        level_markers: Sequence[str] = LEVEL_MARKERS,
    ) -> FeatureScaler:
        """Fit on the rates of the training records.

        ``min_std`` is in log units: differences smaller than about
        ``min_std`` × 100 % between runs count as noise.

        Raises:
            GroundTruthError: no records, or no event that every record has.
        """
        if not rates:
            raise GroundTruthError("no profiles to fit features on")
        common = set(rates[0])
        for r in rates[1:]:
            common &= set(r)
        if not common:
            raise GroundTruthError(
                "the profiles share no event; were they made on hosts with different perf events?"
            )
        cpu_event = next((e for e in cpu_events if e in common), None)
        events = tuple(sorted(common))
        levels = tuple(e for e in events if is_level(e, level_markers))
        partial = cls(events, cpu_event, levels, (0.0,) * len(events), (1.0,) * len(events))
        raw = np.vstack([partial._raw(r, events) for r in rates])
        mean = raw.mean(axis=0)
        std = np.maximum(raw.std(axis=0), min_std)
        return cls(events, cpu_event, levels, tuple(map(float, mean)), tuple(map(float, std)))

    # -- transforming ----------------------------------------------------------------

    def _raw(self, rates: Mapping[str, float], events: Sequence[str]) -> np.ndarray:
        cpu = rates.get(self.cpu_event) if self.cpu_event else None
        if cpu is not None and cpu > 0:
            cpu = cpu * CPU_EVENT_SECONDS.get(self.cpu_event or "", 1.0)
        else:
            cpu = None
        level = set(self.levels)
        out = np.empty(len(events))
        for i, e in enumerate(events):
            v = max(float(rates.get(e, 0.0)), 0.0)
            if cpu is not None and e != self.cpu_event and e not in level:
                v = v / cpu
            out[i] = math.log1p(v)
        return out

    def shared(self, rates: Mapping[str, float]) -> np.ndarray:
        """Boolean mask of the scaler's events that ``rates`` has."""
        return np.array([e in rates for e in self.events], dtype=bool)

    def transform(self, rates: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """(standardised vector over all scaler events, mask of events present).

        Missing events are 0 in the vector and False in the mask: callers
        compare only the masked dimensions.
        """
        mask = self.shared(rates)
        if self.cpu_event and self.cpu_event not in rates:
            # Without the CPU rate the per-CPU-second features are not comparable.
            level = set(self.levels)
            mask &= np.array([e in level for e in self.events], dtype=bool)
        raw = self._raw(rates, self.events)
        z = (raw - np.asarray(self.mean)) / np.asarray(self.std)
        z[~mask] = 0.0
        return z, mask

    def transform_many(self, rates: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Matrix of standardised vectors; every record must have every event."""
        rows = []
        for r in rates:
            z, mask = self.transform(r)
            if not mask.all():
                missing = [e for e, m in zip(self.events, mask, strict=True) if not m]
                raise GroundTruthError(f"a record lacks events {missing[:5]}")
            rows.append(z)
        return np.vstack(rows) if rows else np.empty((0, len(self.events)))

    # -- persistence -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": list(self.events),
            "cpu_event": self.cpu_event,
            "levels": list(self.levels),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureScaler:
        events = tuple(str(e) for e in d["events"])
        mean = tuple(float(x) for x in d["mean"])
        std = tuple(float(x) for x in d["std"])
        if not (len(events) == len(mean) == len(std)) or not events:
            raise ValueError("features: events, mean and std differ in length or are empty")
        if any(not math.isfinite(s) or s <= 0 for s in std):
            raise ValueError("features: std must be positive")
        cpu = d.get("cpu_event")
        return cls(events, None if cpu is None else str(cpu),
                   tuple(str(e) for e in d.get("levels", ())), mean, std)
