"""Stage-tree execution of hyperparameter schedules (seed: stage-based HPO).

- :mod:`~pipetune.stages.schedules` — schedule types for Tune's
  ``param_space`` and the per-epoch lookup :func:`value`;
- :mod:`~pipetune.stages.tree` — trials split into stages and merged by
  longest common prefix into a :class:`StageTree`;
- :mod:`~pipetune.stages.run` — execution on Ray Tune (the design is in its
  docstring): :class:`StageRunner` on the driver, a :class:`StageStore`
  actor per job;
- :mod:`~pipetune.stages.session` — the trial side: :func:`resume` and
  :func:`report` in the training loop.
"""

from __future__ import annotations

from pipetune.stages.run import StageRunner, order_trials, plan_for
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
from pipetune.stages.session import StageSession, report, resume
from pipetune.stages.store import Acquired, StageStore
from pipetune.stages.tree import Stage, StageNode, StageTree, TrialPlan

__all__ = [
    "KINDS", "Acquired", "Constant", "StageRunner", "StageSession", "StageStore", "order_trials",
    "plan_for",
    "report", "resume", "GrowingBatch", "Schedule", "Stage", "StageNode", "StageTree",
    "StepDecay", "TrialPlan", "constant", "growing_batch", "is_schedule", "parse",
    "step_decay", "value",
]
