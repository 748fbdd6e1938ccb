"""Parallel strategies and the ground truth / the objective, on the pure
machine (issue 17): recorded events, answers included, no threads or clocks.

- A trial whose strategy is fixed (``--parallel ddp``, not ``auto``) that
  matches a cluster whose winner names another strategy takes the winner's
  cores/memory/GPUs and keeps its own strategy, instead of probing.
- With the memory objective, ``--parallel auto`` settles on the strategy
  whose heaviest rank peaked lowest.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from support.machine_steps import decisions, fresh, of, settle

from pipetune.errors import NotSupportedError
from pipetune.groundtruth import Hint, Match
from pipetune.probing import Measurement, Objective
from pipetune.tuner import records as r
from pipetune.tuner.machine import step
from pipetune.tuner.rules import for_this_trial
from pipetune.types import (
    DecisionKind,
    EpochProfile,
    EpochResult,
    Phase,
    SystemConfig,
    SystemSpace,
)

C1, C2 = SystemConfig(1), SystemConfig(2)
RATES = {"task-clock": 1900.0, "context-switches": 120.0}
FIXED = SystemSpace(cores=(1, 2))  # --parallel ddp: the tuner does not choose the strategy
AUTO = SystemSpace(cores=(1, 2), parallel=("none", "ddp", "mp"), workers=(2,))


machine = fresh


def answer(m: r.Machine, e: r.Event, match: Match | None = None,
           hint: Hint | None = None) -> tuple[r.Machine, tuple[object, ...]]:
    """Step ``e``, answering each question as a quiet node would."""
    answers: list[object] = []
    done: list[object] = []
    while True:
        new, effects = step(m, replace(e, answers=tuple(answers)))
        body = effects[:-1] if effects and isinstance(effects[-1], r.Ask) else effects
        done += list(body[len(done):])
        if body is effects:
            return new, tuple(done)
        q = effects[-1].query
        answers.append(
            r.Applied(q.config, e.t) if isinstance(q, r.Apply)
            else (100.0, 0) if isinstance(q, r.Usage)
            else (EpochProfile(RATES, q.lo, q.hi or e.t, 4), q.hi or e.t)
            if isinstance(q, r.TakeProfile)
            else (match or Match(None, 0.0, None, "empty model"), "")
            if isinstance(q, r.MatchProfile)
            else hint if isinstance(q, r.KnownWorkload)
            else None)


def started(m: r.Machine, hint: Hint | None = None) -> tuple[r.Machine, tuple[object, ...]]:
    m, fx = answer(m, r.Event(r.Kind.START, 0.0), hint=hint)
    m, _ = settle(m, r.Event(r.Kind.PROFILER_STARTED, 0.0, wait_s=2.0))
    return m, fx


def first_epoch(m: r.Machine, match: Match) -> tuple[r.Machine, tuple[object, ...]]:
    m, _ = answer(m, r.Event(r.Kind.EPOCH_START, 0.0, 0))
    return answer(m, r.Event(r.Kind.EPOCH_END, 4.0, 0, 40, posted=1), match)


# -- a fixed strategy keeps itself when the cluster's winner names another -------------------


def test_a_fixed_strategy_trial_takes_the_winners_cores_and_keeps_its_strategy():
    m, _ = started(machine(FIXED, total_epochs=5))
    winner = SystemConfig(1, parallel="mp")  # an auto trial's winner
    m, effects = first_epoch(m, Match(cluster=3, score=0.95, config=winner, reason="close"))
    assert m.phase is Phase.SETTLED and m.ledger.config == C1  # 1 core, its own strategy
    assert decisions(effects) == [(DecisionKind.MATCHED, C1)]  # no PROBE
    (d,) = of(effects, r.Decide)
    assert "strategy mp left out: this trial's strategy is fixed" in d.decision.reason
    (record,) = of(effects, r.WriteGroundTruth)
    assert record.config == C1 and not record.probed  # observed at what it ran


def test_a_fixed_strategy_from_the_space_keeps_it_too():
    # --space parallel=ddp: one strategy in the space, so not the tuner's either
    m, _ = started(machine(SystemSpace(cores=(1, 2), parallel=("ddp",)), total_epochs=5))
    m, effects = first_epoch(m, Match(cluster=3, score=0.95,
                                      config=SystemConfig(1, parallel="gpipe"), reason="close"))
    # ...and its decisions and ground-truth record name it: what it trained with
    ddp1 = SystemConfig(1, parallel="ddp")
    assert decisions(effects) == [(DecisionKind.MATCHED, ddp1)]
    (record,) = of(effects, r.WriteGroundTruth)
    assert record.config == ddp1


def test_a_space_with_one_strategy_names_it_in_every_config():
    space = SystemSpace(cores=(1, 2), parallel=("ddp",), workers=(2,))
    assert {c.parallel for c in space.configs()} == {"ddp"}
    assert space.default == SystemConfig(2, parallel="ddp")
    # a default given before the strategy was fixed takes it
    assert SystemSpace(cores=(1, 2), default=C1, parallel=("gpipe",)).default == SystemConfig(
        1, parallel="gpipe")
    auto = SystemSpace(cores=(1, 2), parallel=("none", "ddp"))  # probed beside the grid
    assert {c.parallel for c in auto.configs()} == {"none"}


def test_a_fixed_strategy_trial_is_hinted_at_the_winners_cores():
    hint = Hint("w", cluster=3, config=SystemConfig(1, parallel="mp"), records=3, total=3)
    m, effects = started(machine(FIXED, workload="w", total_epochs=5), hint=hint)
    assert decisions(effects) == [(DecisionKind.HINTED, C1)]
    m, effects = first_epoch(m, Match(cluster=3, score=0.95, config=hint.config,
                                      reason="close"))
    assert m.phase is Phase.SETTLED and m.ledger.config == C1
    (d,) = of(effects, r.Decide)
    assert d.decision.reason.startswith("confirmed")  # no second apply, no probe


def test_auto_still_takes_the_winners_strategy_and_refuses_one_outside_its_space():
    m, _ = started(machine(AUTO, total_epochs=5))
    mp1 = SystemConfig(1, parallel="mp")
    _, effects = first_epoch(m, Match(cluster=3, score=0.95, config=mp1, reason="close"))
    assert decisions(effects) == [(DecisionKind.MATCHED, mp1)]
    gpipe1 = SystemConfig(1, parallel="gpipe")  # not among this job's strategies
    _, effects = first_epoch(m, Match(cluster=3, score=0.95, config=gpipe1, reason="close"))
    assert [k for k, _ in decisions(effects)] == [DecisionKind.PROBE]
    (d,) = of(effects, r.Decide)
    assert "outside this trial's space" in d.decision.reason


def test_for_this_trial_changes_nothing_where_the_tuner_chooses_or_strategies_agree():
    fixed, auto = machine(FIXED), machine(AUTO)
    assert for_this_trial(fixed, C1) == (C1, "")
    assert for_this_trial(auto, SystemConfig(1, parallel="mp")) == (
        SystemConfig(1, parallel="mp"), "")
    cfg, note = for_this_trial(fixed, SystemConfig(1, 512, parallel="ddp"))
    assert cfg == SystemConfig(1, 512) and "strategy ddp left out" in note


# -- the memory objective: the lowest peak per rank ------------------------------------------


def train_strategies(m: r.Machine, epochs: range, spe: dict[str, float],
                     peak_mb: dict[str, float], t: float = 4.0
                     ) -> tuple[r.Machine, list[object]]:
    """Epochs of 10 steps; each epoch's result carries the heaviest rank's
    peak of the strategy in force, as the trial session reports it."""
    out: list[object] = []
    for e in epochs:
        m, fx = answer(m, r.Event(r.Kind.EPOCH_START, t, e, posted=e))
        out += fx
        strategy = m.ledger.config.parallel
        t += 10 * spe[strategy]
        result = EpochResult(e, m.ledger.config, 0.0, 10,
                             metrics={"rss_peak_per_rank_mb": peak_mb[strategy]})
        m, fx = answer(m, r.Event(r.Kind.EPOCH_END, t, e, 10, posted=e + 1, result=result))
        out += fx
    return m, out


def test_the_memory_objective_settles_on_the_strategy_with_the_lowest_peak_per_rank():
    m, _ = started(machine(AUTO, Objective.MEMORY, total_epochs=6))
    # mp is the slowest but splits the model: its heaviest rank needs least
    m, effects = train_strategies(m, range(5), spe={"none": 1.0, "ddp": 0.5, "mp": 1.5},
                                  peak_mb={"none": 900.0, "ddp": 950.0, "mp": 500.0})
    assert isinstance(m.state, r.Settled)
    assert decisions(tuple(effects))[-1] == (DecisionKind.SETTLED, replace(C2, parallel="mp"))
    assert dict(m.state.probed) == {C2: 900.0, replace(C2, parallel="ddp"): 950.0,
                                    replace(C2, parallel="mp"): 500.0}
    (record,) = of(tuple(effects), r.WriteGroundTruth)
    assert record.objective == "memory" and record.value == 500.0


def test_the_same_trial_by_runtime_settles_on_the_fastest():
    m, _ = started(machine(AUTO, Objective.RUNTIME, total_epochs=6))
    m, effects = train_strategies(m, range(5), spe={"none": 1.0, "ddp": 0.5, "mp": 1.5},
                                  peak_mb={"none": 900.0, "ddp": 950.0, "mp": 500.0})
    assert decisions(tuple(effects))[-1] == (DecisionKind.SETTLED, replace(C2, parallel="ddp"))


def test_by_runtime_mp_is_not_probed_beside_none():
    """mp computes its ranks one after another: under any objective but
    memory it cannot beat none, so its probe epoch (and restart) is saved —
    even where (as here, made up) it would have measured fastest."""
    m, _ = started(machine(AUTO, Objective.RUNTIME, total_epochs=6))
    m, effects = train_strategies(m, range(5), spe={"none": 1.0, "ddp": 0.5, "mp": 0.1},
                                  peak_mb={"none": 900.0, "ddp": 950.0, "mp": 500.0})
    assert isinstance(m.state, r.Settled)
    assert {c.parallel for c, _ in m.state.probed} == {"none", "ddp"}
    assert decisions(tuple(effects))[-1] == (DecisionKind.SETTLED, replace(C2, parallel="ddp"))
    reasons = [e.decision.reason for e in of(tuple(effects), r.Decide)]
    assert any("mp not probed" in why for why in reasons)


def test_the_memory_objective_without_strategies_to_compare_uses_runtime():
    with pytest.raises(NotSupportedError, match="peak memory per rank"):
        Objective.MEMORY.cost(Measurement(C1, seconds=1.0, steps=1))
    assert Objective.MEMORY.cost(Measurement(C1, 1.0, 1, rss_peak_per_rank_mb=320.0)) == 320.0
    m, _ = started(machine(FIXED, Objective.MEMORY, total_epochs=5))
    m, effects = train_strategies(m, range(4), spe={"none": 1.0}, peak_mb={"none": 400.0})
    notes = [n.message for n in of(tuple(effects), r.Note)]
    assert any("using runtime" in n for n in notes)
    assert m.ledger.objective is Objective.RUNTIME
