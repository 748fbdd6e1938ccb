"""Probe strategies: grid (the paper), one-dimension-at-a-time, and sub-epoch
successive halving.

- :class:`GridProbe` — every candidate once, one slot (epoch) each.
- :class:`OneAtATimeProbe` — coordinate descent: vary cores with the rest
  fixed, keep the best, then memory, then GPUs.  Needs
  Σ len(dimension) slots instead of Π.
- :class:`SuccessiveHalvingProbe` — sub-epoch windows: rung 0 gives every
  candidate one short slot, keeps the better ``1/eta``, and each later rung
  gives the survivors ``eta``× longer slots until one is left.  On long
  epochs this probes a whole space inside one or two epochs, which is how
  pipetune beats the paper's one-epoch-per-config probing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from pipetune.errors import ConfigError
from pipetune.probing.base import ProbeStrategy, ProbeUnit, spread
from pipetune.types import SystemConfig, SystemSpace


def _dedupe(configs: Sequence[SystemConfig]) -> list[SystemConfig]:
    out: list[SystemConfig] = []
    for c in configs:
        if c not in out:
            out.append(c)
    return out


class GridProbe(ProbeStrategy):
    """Each candidate once, in the given order (put hints first)."""

    name = "grid"

    def __init__(self, candidates: Sequence[SystemConfig], *, keep: SystemConfig | None = None,
                 unit: ProbeUnit = ProbeUnit.EPOCH) -> None:
        super().__init__()
        self.plan = _dedupe(candidates)
        if not self.plan:
            raise ConfigError("probe: no candidate configs")
        self.keep = keep
        self.unit = unit

    def next(self) -> SystemConfig | None:
        for c in self.plan:
            if c not in self.values and c not in self.rejected:
                return c
        return None

    def slots_needed(self) -> int:
        return sum(1 for c in self.plan if c not in self.values and c not in self.rejected)

    def shorten(self, max_slots: int) -> bool:
        todo = [c for c in self.plan if c not in self.values and c not in self.rejected]
        if len(todo) <= max_slots:
            return True
        if max_slots < 1:
            return False
        keep = spread(todo, max_slots, keep=self.keep)
        self.plan = [c for c in self.plan if c in self.values or c in keep]
        return True

    @property
    def candidates(self) -> tuple[SystemConfig, ...]:
        return tuple(self.plan)


class OneAtATimeProbe(ProbeStrategy):
    """Coordinate descent over the space's dimensions, starting at ``start``."""

    name = "one_at_a_time"
    DIMENSIONS = ("cores", "memory_mb", "gpus")

    def __init__(self, space: SystemSpace, *, start: SystemConfig | None = None,
                 allowed: Callable[[SystemConfig], bool] | None = None) -> None:
        super().__init__()
        self.space = space
        self.base = start or space.default
        assert self.base is not None  # SystemSpace always sets a default
        self.allowed = allowed or (lambda c: True)
        self.values_per_dim: dict[str, list] = {
            d: list(getattr(space, d)) for d in self.DIMENSIONS if len(getattr(space, d)) > 1
        }
        self.dims = list(self.values_per_dim)
        self._dim = 0

    def _along(self, dim: str) -> list[SystemConfig]:
        out = []
        for v in self.values_per_dim[dim]:
            d = self.base.to_dict()
            d[dim] = v
            c = SystemConfig(d["cores"], d["memory_mb"], d["gpus"])
            if self.allowed(c):
                out.append(c)
        return out

    def next(self) -> SystemConfig | None:
        while self._dim < len(self.dims):
            line = self._along(self.dims[self._dim])
            for c in line:
                if c not in self.values and c not in self.rejected:
                    return c
            seen = [c for c in line if c in self.values]
            if seen:
                self.base = min(seen, key=lambda c: self.values[c])
            self._dim += 1
        return None

    def slots_needed(self) -> int:
        n = 0
        for i, dim in enumerate(self.dims[self._dim:]):
            line = self._along(dim)
            todo = [c for c in line if c not in self.values and c not in self.rejected]
            # Later dimensions start from a base not known yet: all but one
            # of their values may be new (the base itself was measured).
            n += len(todo) if i == 0 else max(len(line) - 1, 0)
        return n

    def shorten(self, max_slots: int) -> bool:
        while self.slots_needed() > max_slots:
            # Trim the longest remaining dimension, keeping its ends and the base value.
            todo_dims = self.dims[self._dim:]
            if not todo_dims:
                return False
            dim = max(todo_dims, key=lambda d: len(self.values_per_dim[d]))
            vals = self.values_per_dim[dim]
            if len(vals) <= 2:
                if len(todo_dims) == 1:
                    return False
                self.dims.remove(dim)
                continue
            base_v = getattr(self.base, dim)
            idx = [round(i * (len(vals) - 1) / (len(vals) - 2)) for i in range(len(vals) - 1)]
            new = _dedupe([vals[i] for i in idx] + ([base_v] if base_v in vals else []))
            if len(new) >= len(vals):
                new = [v for v in vals if v != vals[len(vals) // 2] or v == base_v]
            self.values_per_dim[dim] = [v for v in vals if v in new]
        return True


class SuccessiveHalvingProbe(ProbeStrategy):
    """Sub-epoch successive halving over step windows.

    Rung ``r`` measures each survivor for ``min_windows × eta**r`` windows;
    after a rung, the best ``ceil(n / eta)`` survive.  The value that ranks a
    config is its latest (longest, so most precise) measurement.
    """

    name = "halving"
    unit = ProbeUnit.WINDOW

    def __init__(self, candidates: Sequence[SystemConfig], *, eta: int = 2,
                 min_windows: int = 1, keep: SystemConfig | None = None) -> None:
        super().__init__()
        if eta < 2:
            raise ConfigError(f"halving eta={eta}: must be >= 2")
        if min_windows < 1:
            raise ConfigError(f"halving min_windows={min_windows}: must be >= 1")
        self.survivors = _dedupe(candidates)
        if not self.survivors:
            raise ConfigError("probe: no candidate configs")
        self.eta = eta
        self.min_windows = min_windows
        self.keep = keep
        self.rung = 0
        self._measured: set[SystemConfig] = set()  # in this rung

    def next(self) -> SystemConfig | None:
        while True:
            live = [c for c in self.survivors if c not in self.rejected]
            if len(live) <= 1 and (self.rung > 0 or not live or live[0] in self.values):
                return None
            for c in live:
                if c not in self._measured:
                    return c
            # Rung complete: keep the better 1/eta.
            ranked = sorted(live, key=lambda c: self.values[c])
            self.survivors = ranked[: max(1, math.ceil(len(ranked) / self.eta))]
            self.rung += 1
            self._measured = set()
            if len(self.survivors) <= 1:
                return None

    def observe(self, config: SystemConfig, value: float) -> None:
        super().observe(config, value)
        self._measured.add(config)

    def infeasible(self, config: SystemConfig, reason: str) -> None:
        super().infeasible(config, reason)
        self._measured.add(config)

    def slot_windows(self) -> int:
        return self.min_windows * self.eta**self.rung

    def slots_needed(self) -> int:
        """Windows still needed (slots of later rungs are longer)."""
        live = [c for c in self.survivors if c not in self.rejected]
        n, rung, total = len(live), self.rung, 0
        todo = len([c for c in live if c not in self._measured])
        while n > 1:
            total += todo * self.min_windows * self.eta**rung
            n = math.ceil(n / self.eta)
            todo = n
            rung += 1
        return total

    def shorten(self, max_slots: int) -> bool:
        while self.slots_needed() > max_slots:
            if self.rung > 0 or len(self.survivors) <= 2:
                return False
            self.survivors = spread(self.survivors, len(self.survivors) - 1, keep=self.keep)
        return True

    def best(self) -> tuple[SystemConfig, float] | None:
        live = [c for c in self.survivors if c in self.values]
        if not live:
            return super().best()
        cfg = min(live, key=lambda c: self.values[c])
        return cfg, self.values[cfg]


STRATEGIES = ("grid", "one_at_a_time", "halving")


def make_strategy(
    name: str,
    space: SystemSpace,
    candidates: Sequence[SystemConfig],
    *,
    start: SystemConfig | None = None,
    allowed: Callable[[SystemConfig], bool] | None = None,
    **kwargs: int,
) -> ProbeStrategy:
    """Build a strategy by name over ``candidates`` (already filtered for
    memory safety and ordered by hint)."""
    if name == "grid":
        return GridProbe(candidates, keep=start)
    if name == "one_at_a_time":
        ok = set(candidates)
        return OneAtATimeProbe(space, start=start,
                               allowed=lambda c: c in ok and (allowed is None or allowed(c)))
    if name == "halving":
        return SuccessiveHalvingProbe(candidates, keep=start, **kwargs)
    raise ConfigError(f"probe strategy {name!r}: must be one of {', '.join(STRATEGIES)}")
