"""Stage-tree execution of hyperparameter schedules (seed: stage-based HPO).

- :mod:`~pipetune.stages.schedules` — schedule types for Tune's
  ``param_space`` and the per-epoch lookup :func:`value`;
- :mod:`~pipetune.stages.tree` — trials split into stages and merged by
  longest common prefix into a :class:`StageTree`.
"""

from __future__ import annotations

from pipetune.stages.schedules import (
    KINDS,
    Constant,
    GrowingBatch,
    Schedule,
    StepDecay,
    constant,
    growing_batch,
    is_schedule,
    parse,
    step_decay,
    value,
)
from pipetune.stages.tree import Stage, StageNode, StageTree, TrialPlan

__all__ = [
    "KINDS", "Constant", "GrowingBatch", "Schedule", "Stage", "StageNode", "StageTree",
    "StepDecay", "TrialPlan", "constant", "growing_batch", "is_schedule", "parse",
    "step_decay", "value",
]
