"""Stepping the tuner's pure state machine from recorded events, shared by
the machine's tests: a step whose answers are all recorded, and what its
effects decided."""

from __future__ import annotations

from pipetune.probing import Objective
from pipetune.tuner import records as r
from pipetune.tuner.machine import step
from pipetune.types import DecisionKind, SystemConfig, SystemSpace


def fresh(space: SystemSpace, objective: Objective = Objective.RUNTIME,
          **params: object) -> r.Machine:
    """A machine whose waits are all zero but the profile's 1 s: recorded
    events then decide without real time passing."""
    return r.initial(r.Params(space=space, warmup_s=0.0, probe_min_s=0.0, profile_min_s=1.0,
                              **params), objective)  # type: ignore[arg-type]


def settle(m: r.Machine, e: r.Event) -> tuple[r.Machine, tuple[object, ...]]:
    """One step whose answers are all recorded in ``e``: it must ask nothing more."""
    new, effects = step(m, e)
    assert not effects or not isinstance(effects[-1], r.Ask), effects[-1]
    return new, effects


def of(effects: tuple[object, ...], kind: type) -> list[object]:
    return [x for x in effects if isinstance(x, kind)]


def decisions(effects: tuple[object, ...]) -> list[tuple[DecisionKind, SystemConfig]]:
    return [(d.decision.kind, d.decision.config) for d in of(effects, r.Decide)]
