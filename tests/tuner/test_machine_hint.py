"""A workload the ground truth knows by name (issue 15 item 4): the pure
machine starts it at the hinted cluster's config and lets the profile,
taken there, confirm or correct it.  Recorded events, as in test_machine.py:
no threads, clocks or fakes."""

from __future__ import annotations

from support.machine_steps import decisions, fresh, of, settle

from pipetune.groundtruth import ClusterGroundTruth, GroundTruthRecord, Hint, Match
from pipetune.tuner import records as r
from pipetune.tuner.machine import step
from pipetune.types import DecisionKind, EpochProfile, Phase, SystemConfig, SystemSpace

C1, C2 = SystemConfig(1), SystemConfig(2)
SPACE = SystemSpace(cores=(1, 2))  # default: 2 cores
RATES = {"task-clock": 1900.0, "context-switches": 120.0}
HINT = Hint("deepcnn-mnist", cluster=3, config=C1, records=4, total=5)


def machine(**params: object) -> r.Machine:
    return fresh(SPACE, **params)


def ev(kind: r.Kind, t: float, epoch: int = 0, steps: int = 0, *answers: object,
       posted: int = 0) -> r.Event:
    return r.Event(kind, t, epoch, steps, posted=posted, answers=answers)


def hinted() -> tuple[r.Machine, tuple[object, ...]]:
    """START of a known workload: open, hint, capacity (unknown), Apply(C1)."""
    m = machine(workload="deepcnn-mnist", total_epochs=5)
    m, effects = settle(m, ev(r.Kind.START, 0.0, 0, 0, None, HINT, None, r.Applied(C1, 0.0)))
    m, _ = settle(m, r.Event(r.Kind.PROFILER_STARTED, 0.0, wait_s=2.0))
    return m, effects


def profiled(m: r.Machine, match: Match) -> tuple[r.Machine, tuple[object, ...], list[object]]:
    """The first epoch's end, each question answered as a quiet node would
    (a plain function of the question); returns the questions asked too."""
    m, _ = settle(m, ev(r.Kind.EPOCH_START, 0.0, 0))
    p = EpochProfile(rates=RATES, start=0.0, end=4.0, n_samples=4)
    e = ev(r.Kind.EPOCH_END, 4.0, 0, 40, posted=1)
    answers: list[object] = []
    while True:
        new, effects = step(m, r.Event(**{**e.__dict__, "answers": tuple(answers)}))
        if not effects or not isinstance(effects[-1], r.Ask):
            return new, effects, [a for a in answers]
        q = effects[-1].query
        answers.append(
            r.Applied(q.config, 4.0) if isinstance(q, r.Apply)
            else (100.0, 0) if isinstance(q, r.Usage)
            else (p, 4.0) if isinstance(q, r.TakeProfile)
            else (match, "") if isinstance(q, r.MatchProfile)
            else None)


def test_a_known_workload_asks_for_the_hint_and_starts_at_its_config():
    m = machine(workload="deepcnn-mnist")
    new, effects = step(m, ev(r.Kind.START, 0.0, 0, 0, None))
    assert new is m and effects == (r.Ask(r.KnownWorkload("deepcnn-mnist")),)
    new, effects = step(m, ev(r.Kind.START, 0.0, 0, 0, None, HINT))
    assert effects == (r.Ask(r.Capacity(1)),)
    m, effects = hinted()
    assert m.phase is Phase.PROFILING and m.ledger.config == C1 and m.ledger.hint == HINT
    assert decisions(effects) == [(DecisionKind.HINTED, C1)]
    assert of(effects, r.StartProfiler) == [r.StartProfiler()]


def test_the_hint_is_capped_by_the_node_share():
    m = machine(workload="w")
    hint = Hint("w", cluster=0, config=C2, records=2, total=2)
    m, effects = settle(m, ev(r.Kind.START, 0.0, 0, 0, None, hint, 1, r.Applied(C1, 0.0)))
    assert decisions(effects) == [(DecisionKind.HINTED, C1)]
    (d,) = of(effects, r.Decide)
    assert "node share" in d.decision.reason


def test_a_confirmed_hint_settles_without_another_apply():
    m, _ = hinted()
    m, effects, answers = profiled(m, Match(cluster=3, score=0.95, config=C1, reason="close"))
    assert m.phase is Phase.SETTLED and m.ledger.config == C1
    assert not of(tuple(answers), r.Applied)  # no apply: the hint is in force
    assert decisions(effects) == [(DecisionKind.MATCHED, C1)]
    (d,) = of(effects, r.Decide)
    assert d.decision.reason.startswith("confirmed")
    (record,) = of(effects, r.WriteGroundTruth)
    assert not record.probed and record.config == C1  # the profile at C1 teaches the history


def test_a_contradicted_hint_applies_the_matched_clusters_config():
    m, _ = hinted()
    m, effects, answers = profiled(m, Match(cluster=5, score=0.9, config=C2, reason="close"))
    assert of(tuple(answers), r.Applied) == [r.Applied(C2, 4.0)]
    assert m.phase is Phase.SETTLED and m.ledger.config == C2
    assert decisions(effects) == [(DecisionKind.MATCHED, C2)]
    (d,) = of(effects, r.Decide)
    assert "hint of cluster 3" in d.decision.reason and "contradicted" in d.decision.reason


def test_an_unmatched_hint_probes_as_today_and_says_why():
    m, _ = hinted()
    m, effects, _ = profiled(m, Match(cluster=3, score=0.2, config=C1, reason="far"))
    assert m.phase is Phase.PROBING
    assert decisions(effects) == [(DecisionKind.PROBE, C1)]  # hint first: in force already
    (d,) = of(effects, r.Decide)
    assert "hint of cluster 3 not confirmed" in d.decision.reason
    assert "not the default" in d.decision.reason


def test_an_unmatched_hint_without_epochs_to_probe_keeps_the_hinted_config():
    m = machine(workload="deepcnn-mnist", total_epochs=2)
    m, _ = settle(m, ev(r.Kind.START, 0.0, 0, 0, None, HINT, None, r.Applied(C1, 0.0)))
    m, _ = settle(m, r.Event(r.Kind.PROFILER_STARTED, 0.0, wait_s=2.0))
    m, effects, answers = profiled(m, Match(cluster=3, score=0.2, config=C1, reason="far"))
    assert m.phase is Phase.SETTLED and m.ledger.config == C1
    assert not of(tuple(answers), r.Applied)  # the default (2 cores) is not applied
    assert decisions(effects) == [(DecisionKind.FALLBACK, C1)]
    (d,) = of(effects, r.Decide)
    assert "kept the known workload's config" in d.decision.reason


def test_an_unknown_workload_starts_at_the_default_as_before():
    m = machine(workload="new-one")
    m, effects = settle(m, ev(r.Kind.START, 0.0, 0, 0, None, None, r.Applied(C2, 0.0)))
    assert m.phase is Phase.PROFILING and m.ledger.config == C2 and m.ledger.hint is None
    assert not of(effects, r.Decide)
    # no workload name: not even asked
    m = machine()
    _, effects = step(m, ev(r.Kind.START, 0.0, 0, 0, None))
    assert effects == (r.Ask(r.Apply(C2)),)


def _record(workload: str, rates: dict[str, float], cfg: SystemConfig) -> GroundTruthRecord:
    return GroundTruthRecord(rates=rates, config=cfg, value=1.0, workload=workload)


def test_the_ground_truth_hints_the_cluster_holding_most_of_a_workloads_records():
    a = {"task-clock": 1900.0, "context-switches": 120.0, "page-faults": 10.0}
    b = {"task-clock": 900.0, "context-switches": 4000.0, "page-faults": 900.0}
    recs = [_record("a", {k: v * (1 + 0.01 * i) for k, v in a.items()}, C1) for i in range(3)]
    recs += [_record("b", {k: v * (1 + 0.01 * i) for k, v in b.items()}, C2) for i in range(3)]
    model = ClusterGroundTruth(k=2).fit(recs)
    ha, hb = model.hint("a"), model.hint("b")
    assert ha is not None and hb is not None and ha.cluster != hb.cluster
    assert (ha.config, ha.records, ha.total) == (C1, 3, 3) and hb.config == C2
    assert model.hint("never-seen") is None and model.hint("") is None
