"""The probing interface: a strategy proposes configs and observes results.

A :class:`ProbeStrategy` is a small state machine the tuner drives:

``PROPOSING`` — :meth:`~ProbeStrategy.next` returns the config to measure
next (and :meth:`~ProbeStrategy.slot_windows` how long to measure it); the
tuner applies it, measures one slot and calls :meth:`~ProbeStrategy.observe`
(or :meth:`~ProbeStrategy.infeasible` if the config caused memory pressure).
→ ``DONE`` — ``next()`` returns ``None``; :meth:`~ProbeStrategy.best` names
the winner.

Slots are whole epochs for ``unit == "epoch"`` strategies and step windows
(reported by the training loop) for ``unit == "window"`` ones.  The
:meth:`~ProbeStrategy.slots_needed` bound lets the tuner check a plan against
the epochs a trial has left and :meth:`~ProbeStrategy.shorten` it.

Strategies are used from the tuner's worker thread only; they are not
thread-safe.
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Sequence

from pipetune.types import SystemConfig


class ProbeUnit(str, enum.Enum):
    EPOCH = "epoch"
    WINDOW = "window"


class ProbeState(str, enum.Enum):
    PROPOSING = "proposing"
    DONE = "done"


class ProbeStrategy(abc.ABC):
    """Base of every strategy; subclasses implement :meth:`next` and
    :meth:`slots_needed` (and :meth:`shorten` if they can)."""

    unit: ProbeUnit = ProbeUnit.EPOCH
    name: str = "probe"

    def __init__(self) -> None:
        self.values: dict[SystemConfig, float] = {}
        self.rejected: dict[SystemConfig, str] = {}

    @abc.abstractmethod
    def next(self) -> SystemConfig | None:
        """The config to measure next, or None when done."""

    @abc.abstractmethod
    def slots_needed(self) -> int:
        """Upper bound on the slots (epochs or windows) still needed."""

    def slot_windows(self) -> int:
        """How many step windows the next slot lasts (window strategies)."""
        return 1

    def shorten(self, max_slots: int) -> bool:
        """Cut the plan to at most ``max_slots`` slots; False if it cannot."""
        return self.slots_needed() <= max_slots

    @property
    def candidates(self) -> tuple[SystemConfig, ...]:
        return tuple(self.values)

    @property
    def state(self) -> ProbeState:
        return ProbeState.DONE if self.next() is None else ProbeState.PROPOSING

    def observe(self, config: SystemConfig, value: float) -> None:
        """Record ``config``'s objective value (lower is better)."""
        if not math.isfinite(value):
            self.infeasible(config, f"objective value {value}")
            return
        self.values[config] = float(value)

    def infeasible(self, config: SystemConfig, reason: str) -> None:
        """Never propose or choose ``config`` again (OOM, memory pressure, …)."""
        self.values.pop(config, None)
        self.rejected[config] = reason

    def best(self) -> tuple[SystemConfig, float] | None:
        """The observed config with the lowest value; ties go to the smaller config."""
        if not self.values:
            return None
        cfg = min(self.values, key=lambda c: (self.values[c], _size(c)))
        return cfg, self.values[cfg]


def _size(c: SystemConfig) -> tuple[int, int, int]:
    return (c.gpus, c.cores, c.memory_mb if c.memory_mb is not None else 1 << 62)


def spread(configs: Sequence[SystemConfig], n: int,
           keep: SystemConfig | None = None) -> list[SystemConfig]:
    """``n`` configs evenly spaced over ``configs`` (sorted by size), always
    with the smallest, the largest and ``keep``; used to shorten plans."""
    ordered = sorted(configs, key=_size)
    if n >= len(ordered):
        return list(configs)
    if n <= 0:
        return []
    picks: list[SystemConfig] = []
    if keep is not None and keep in ordered:
        picks.append(keep)
    if n - len(picks) >= 1:
        idx = [round(i * (len(ordered) - 1) / max(n - 1, 1)) for i in range(n)]
        for i in idx:
            if len(picks) >= n:
                break
            if ordered[i] not in picks:
                picks.append(ordered[i])
        for c in ordered:  # fill when rounding repeated an index
            if len(picks) >= n:
                break
            if c not in picks:
                picks.append(c)
    # Keep the caller's order (it may carry a hint: what similar workloads won).
    return [c for c in configs if c in picks]
