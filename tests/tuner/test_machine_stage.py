"""The system tuner per stage (issue 16 item 4): a trial that resumes from a
parent stage of a stage tree is decided once from the parent's settled
config and profile — no profiling epoch, no probing — within the node
share; a child whose batch size changes at the branch point, or whose
parent was not settled, is profiled afresh.  Recorded events through the
pure machine, as in test_machine_hint.py: no threads, clocks or fakes."""

from __future__ import annotations

from support.machine_steps import decisions, of, settle

from pipetune.groundtruth import Match
from pipetune.policy import stage_hint
from pipetune.probing import Objective
from pipetune.tuner import records as r
from pipetune.tuner.machine import step
from pipetune.types import DecisionKind, EpochProfile, Phase, SystemConfig, SystemSpace

C1, C2 = SystemConfig(1), SystemConfig(2)
SPACE = SystemSpace(cores=(1, 2))  # default: 2 cores
RATES = {"task-clock": 1900.0, "context-switches": 120.0}
PROFILE = EpochProfile(rates=RATES, start=0.0, end=4.0, n_samples=4)


def parent(**kw: object) -> r.StageHint:
    args: dict[str, object] = {"key": "k3", "config": C1, "phase": Phase.SETTLED,
                               "profile": PROFILE, "parent_batch_size": 32,
                               "batch_size": 32, "how": "settled", "epoch": 3}
    args.update(kw)
    return r.StageHint(**args)  # type: ignore[arg-type]


def started() -> r.Machine:
    """A trial of an unknown workload after START (default applied) and the
    profiler's start: where a resumed trial's tuner stands when its stage
    session hands it the parent stage."""
    m = r.initial(r.Params(space=SPACE, warmup_s=0.0, probe_min_s=0.0, profile_min_s=1.0,
                           total_epochs=6), Objective.RUNTIME)
    m, _ = settle(m, r.Event(r.Kind.START, 0.0, answers=(None, r.Applied(C2, 0.0))))
    m, _ = settle(m, r.Event(r.Kind.PROFILER_STARTED, 0.0, wait_s=2.0))
    m, _ = settle(m, r.Event(r.Kind.EPOCH_START, 0.0, 0))
    return m


def resumed(m: r.Machine, hint: r.StageHint, *answers: object
            ) -> tuple[r.Machine, tuple[object, ...]]:
    return settle(m, r.Event(r.Kind.PARENT_STAGE, 1.0, stage=hint, answers=answers))


def test_a_child_of_a_settled_parent_is_decided_at_once_from_it():
    m = started()
    new, effects = step(m, r.Event(r.Kind.PARENT_STAGE, 1.0, stage=parent()))
    assert new is m and effects == (r.Ask(r.Capacity(1)),)  # capped like a known workload
    m, effects = resumed(m, parent(), None, r.Applied(C1, 1.0))
    assert m.phase is Phase.SETTLED and m.ledger.config == C1
    assert decisions(effects) == [(DecisionKind.MATCHED, C1)]
    (d,) = of(effects, r.Decide)
    assert d.decision.reason.startswith("parent stage k3")
    assert "not profiled" in d.decision.reason and d.decision.epoch == 3
    assert m.ledger.profile == PROFILE  # the child carries its parent's profile on
    assert of(effects, r.StopProfiler) == [r.StopProfiler(late=True)]
    assert not of(effects, r.WriteGroundTruth)  # the parent's profile is recorded already


def test_the_child_then_trains_settled_without_profiling_or_probing():
    m, _ = resumed(started(), parent(), None, r.Applied(C1, 1.0))
    m, _ = settle(m, r.Event(r.Kind.EPOCH_START, 1.0, 3))
    m, effects = settle(m, r.Event(r.Kind.EPOCH_END, 5.0, 3, 40, posted=4))
    assert m.phase is Phase.SETTLED and not of(effects, r.Decide)
    (w,) = of(effects, r.WriteEpoch)
    assert w.phase is Phase.SETTLED and w.profile is None


def test_the_parents_config_is_capped_by_the_node_share():
    hint = parent(config=C2)
    m, effects = resumed(started(), hint, 1, r.Applied(C1, 1.0))
    assert decisions(effects) == [(DecisionKind.MATCHED, C1)]
    (d,) = of(effects, r.Decide)
    assert "node share" in d.decision.reason


def test_a_batch_size_changed_at_the_branch_point_is_profiled_afresh():
    m = started()
    new, effects = resumed(m, parent(batch_size=64))
    assert new.phase is Phase.PROFILING and not of(effects, r.Decide)
    assert "batch size 32 there, 64 here" in new.state.reason
    assert not of(effects, r.StopProfiler)
    # ... and at its first epoch's end it matches (or probes) as a new trial
    answers: list[object] = []
    e = r.Event(r.Kind.EPOCH_END, 4.0, 3, 40, posted=4)
    while True:
        m2, effects = step(new, r.Event(**{**e.__dict__, "answers": tuple(answers)}))
        if not effects or not isinstance(effects[-1], r.Ask):
            break
        q = effects[-1].query
        answers.append((PROFILE, 4.0) if isinstance(q, r.TakeProfile)
                       else (Match(cluster=1, score=0.9, config=C1, reason="close"), "")
                       if isinstance(q, r.MatchProfile)
                       else r.Applied(q.config, 4.0) if isinstance(q, r.Apply)
                       else (100.0, 0) if isinstance(q, r.Usage) else None)
    assert m2.phase is Phase.SETTLED
    (d,) = of(effects, r.Decide)
    assert d.decision.kind is DecisionKind.MATCHED and "parent stage" not in d.decision.reason
    (w,) = of(effects, r.WriteEpoch)
    assert w.phase is Phase.PROFILING and w.profile == PROFILE


def test_a_parent_not_settled_at_its_end_is_no_decision():
    for phase in (Phase.PROFILING, Phase.PROBING, Phase.DEGRADED):
        new, effects = resumed(started(), parent(phase=phase))
        assert new.phase is Phase.PROFILING and not of(effects, r.Decide)
        assert f"was {phase.value} at its end" in new.state.reason


def test_a_parents_config_outside_the_space_is_no_decision():
    new, effects = resumed(started(), parent(config=SystemConfig(8)))
    assert new.phase is Phase.PROFILING and not of(effects, r.Decide)


def test_a_tuner_past_its_profile_ignores_the_parent():
    m = started()
    m = r.Machine(m.params, m.ledger, r.Settled("matched", C1))
    new, effects = resumed(m, parent())
    assert new is m and not of(effects, r.Decide) and of(effects, r.Note)


def test_a_degraded_tuner_stays_degraded():
    m = started()
    m = r.Machine(m.params, m.ledger, r.Degraded("perf missing"))
    new, effects = resumed(m, parent())
    assert new is m and effects == ()


def test_a_parent_stage_before_start_is_no_transition():
    m = r.initial(r.Params(space=SPACE), Objective.RUNTIME)
    new, effects = resumed(m, parent())
    assert new is m and not of(effects, r.Decide) and of(effects, r.Note)


def test_stage_facts_read_back_as_a_hint():
    facts = {"config": "1c/-m/0g", "phase": "settled", "decision": "fallback",
             "profile": {"rates": RATES, "start": 0.0, "end": 4.0, "n_samples": 4,
                         "epoch": 0}}
    hint = stage_hint("k3", facts, epoch=3, parent_batch_size=32, batch_size=64)
    assert hint == r.StageHint("k3", C1, Phase.SETTLED, PROFILE, 32, 64, "fallback", 3)
    assert hint.batch_changed
    assert stage_hint("k3", {}) is None  # a v1 trial's stage, a version-1 record
    assert stage_hint("k3", {"config": "1c/-m/0g", "phase": "fixed"}).phase is Phase.FIXED


def test_a_batch_size_change_inside_the_run_reprofiles_a_settled_trial():
    m, _ = resumed(started(), parent(), None, r.Applied(C1, 1.0))
    m, _ = settle(m, r.Event(r.Kind.EPOCH_START, 1.0, 3))
    m, _ = settle(m, r.Event(r.Kind.EPOCH_END, 5.0, 3, 40, posted=4))
    why = "batch size 32 -> 64 from epoch 4"
    new, effects = step(m, r.Event(r.Kind.REPROFILE, 5.0, reason=why))
    assert new is m and effects == (r.Ask(r.Apply(C2)),)  # the default, as for a new trial
    m, effects = settle(m, r.Event(r.Kind.REPROFILE, 5.0, reason=why,
                                   answers=(r.Applied(C2, 5.0),)))
    assert m.phase is Phase.PROFILING and m.ledger.config == C2
    assert m.state.reason == f"re-profiling: {why}" and m.ledger.profile is None
    assert of(effects, r.StartProfiler) == [r.StartProfiler()] and not of(effects, r.Decide)
    # the next epoch is profiled and decided as a new workload's
    m, _ = settle(m, r.Event(r.Kind.PROFILER_STARTED, 5.0, wait_s=2.0))
    m, _ = settle(m, r.Event(r.Kind.EPOCH_START, 5.0, 4))
    answers: list[object] = []
    e = r.Event(r.Kind.EPOCH_END, 9.0, 4, 40, posted=5)
    while True:
        m2, effects = step(m, r.Event(**{**e.__dict__, "answers": tuple(answers)}))
        if not effects or not isinstance(effects[-1], r.Ask):
            break
        q = effects[-1].query
        answers.append((PROFILE, 9.0) if isinstance(q, r.TakeProfile)
                       else (Match(cluster=1, score=0.9, config=C1, reason="close"), "")
                       if isinstance(q, r.MatchProfile)
                       else r.Applied(q.config, 9.0) if isinstance(q, r.Apply)
                       else (100.0, 0) if isinstance(q, r.Usage) else None)
    assert m2.phase is Phase.SETTLED and decisions(effects) == [(DecisionKind.MATCHED, C1)]
    (w,) = of(effects, r.WriteEpoch)
    assert w.phase is Phase.PROFILING and w.profile == PROFILE


def test_a_reprofile_while_profiling_or_probing_is_a_note_only():
    m = started()
    new, effects = step(m, r.Event(r.Kind.REPROFILE, 1.0, reason="batch size 32 -> 64"))
    assert new is m and not of(effects, r.Decide) and of(effects, r.Note)
    assert r.TRANSITIONS[Phase.SETTLED] == frozenset({Phase.DEGRADED, Phase.PROFILING})
