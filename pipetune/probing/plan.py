"""Planning a probe: which strategy, in which order, and how many slots fit.

The tuner's state machine (:mod:`pipetune.tuner.machine`) asks these pure
functions what a plan needs; the knowledge of each strategy's slots —
whole epochs, or step windows for sub-epoch successive halving — stays
here, beside the strategies.

- :func:`probe_order` — safe candidates, the hint (what the nearest known
  workload won) first.
- :func:`strategy_for` — the strategy to build now: halving falls back to
  grid while the loop reports no step windows.
- :func:`epochs_for` / :func:`slot_budget` — epochs a plan of ``n`` slots
  needs, and slots the epochs left allow (the winner keeps an epoch).
- :func:`profiles_at_window` — whether a profile may be taken at a step
  window before the first epoch ended.
- :func:`counted_intervals` — which measured intervals count for a probe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from pipetune.probing.base import ProbeUnit
from pipetune.types import SystemConfig

#: Strategies whose slots are step windows: they need a loop that reports them.
WINDOW_STRATEGIES = frozenset({"halving"})


def probe_order(safe: Sequence[SystemConfig], hint: SystemConfig | None) -> list[SystemConfig]:
    """``safe`` with ``hint`` first when it is one of them: what the nearest
    known workload won is the likeliest winner."""
    return ([hint] if hint in safe else []) + [c for c in safe if c != hint]


def strategy_for(name: str, windows_per_epoch: int) -> tuple[str, str]:
    """(strategy to build, note) for ``name`` on a loop reporting
    ``windows_per_epoch`` windows: a window strategy needs at least two."""
    if name in WINDOW_STRATEGIES and windows_per_epoch < 2:
        return "grid", f"; {name} needs step windows (window_end), probing whole epochs (grid)"
    return name, ""


def profiles_at_window(name: str, windows_per_epoch: int) -> bool:
    """Whether a profile may be taken at a step window: a window strategy
    must first see a whole epoch to learn how many windows one has."""
    return not (name in WINDOW_STRATEGIES and windows_per_epoch < 2)


def epochs_for(slots: int, unit: ProbeUnit, windows_per_epoch: int) -> int:
    """Epochs a plan of ``slots`` needs, the winner's included (the inverse
    of :func:`slot_budget`)."""
    if unit is ProbeUnit.WINDOW:
        wpe = max(windows_per_epoch, 1)
        return math.ceil((slots + max(wpe // 2, 1)) / wpe)
    return slots + 1


def slot_budget(epochs_left: int | None, unit: ProbeUnit, windows_per_epoch: int) -> int | None:
    """Slots a plan may still use in ``epochs_left``, leaving the winner at
    least one epoch (half an epoch of windows for sub-epoch probing); None
    when the trial's length is unknown."""
    if epochs_left is None:
        return None
    if unit is ProbeUnit.WINDOW:
        wpe = max(windows_per_epoch, 1)
        return max(epochs_left * wpe - max(wpe // 2, 1), 0)
    return max(epochs_left - 1, 0)


class Interval(Protocol):
    t0: float
    t1: float
    steps: int


def counted_intervals(intervals: Sequence[Any], applied_at: float, *, warmup_s: float,
                      grace: float, allow_loose: bool) -> list[Any]:
    """Intervals that count for a config applied at ``applied_at``: those
    that started after the warm-up; failing that (``allow_loose``: an
    epoch-only loop at the end of its epoch), those the config was in force
    for all but ``grace`` of, warm-up then included (DESIGN §6)."""
    strict = [iv for iv in intervals if iv.t0 >= applied_at + warmup_s and iv.steps > 0]
    if strict or not allow_loose:
        return strict
    return [iv for iv in intervals
            if iv.steps > 0 and iv.t0 + grace * (iv.t1 - iv.t0) >= applied_at]
