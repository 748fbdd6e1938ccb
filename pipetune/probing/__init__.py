"""Probing: try system configs, measure, choose by an objective.

- :mod:`.base` — :class:`ProbeStrategy` (the proposing/observing state machine).
- :mod:`.strategies` — :class:`GridProbe`, :class:`OneAtATimeProbe`,
  :class:`SuccessiveHalvingProbe`, :func:`make_strategy`.
- :mod:`.objectives` — :class:`Objective` (runtime, energy, edp,
  resource_time) over a :class:`Measurement`.
- :mod:`.safety` — memory candidates never below the observed peak × margin.
"""

from pipetune.probing.base import ProbeState, ProbeStrategy, ProbeUnit, spread
from pipetune.probing.objectives import Measurement, Objective, resource_share
from pipetune.probing.safety import (
    DEFAULT_MEMORY_MARGIN,
    is_memory_safe,
    memory_floor_mb,
    safe_candidates,
)
from pipetune.probing.strategies import (
    STRATEGIES,
    GridProbe,
    OneAtATimeProbe,
    SuccessiveHalvingProbe,
    make_strategy,
)

__all__ = [
    "DEFAULT_MEMORY_MARGIN",
    "STRATEGIES",
    "GridProbe",
    "Measurement",
    "Objective",
    "OneAtATimeProbe",
    "ProbeState",
    "ProbeStrategy",
    "ProbeUnit",
    "SuccessiveHalvingProbe",
    "is_memory_safe",
    "make_strategy",
    "memory_floor_mb",
    "resource_share",
    "safe_candidates",
    "spread",
]
