"""The pure state machine of Algorithm 1 (pipetune/tuner/machine.py), driven
from recorded event sequences: no threads, no clocks, no fakes of the
controller or the profiler — the answers to the machine's questions are
part of the events, as the runner would have given them.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from support.machine_steps import decisions, fresh, of, settle

from pipetune.groundtruth import Match
from pipetune.probing import Objective
from pipetune.tuner import records as r
from pipetune.tuner.machine import step
from pipetune.types import (
    DecisionKind,
    EpochProfile,
    EpochResult,
    Phase,
    SystemConfig,
    SystemSpace,
)

C1, C2 = SystemConfig(1), SystemConfig(2)
SPACE = SystemSpace(cores=(1, 2))  # default: 2 cores
RATES = {"task-clock": 1900.0, "context-switches": 120.0}


def machine(**params: object) -> r.Machine:
    return fresh(SPACE, **params)


def ev(kind: r.Kind, t: float, epoch: int = 0, steps: int = 0, *answers: object,
       posted: int = 0, **kw: object) -> r.Event:
    return r.Event(kind, t, epoch, steps, posted=posted, answers=answers, **kw)  # type: ignore[arg-type]


def profile(lo: float, hi: float, rates: dict[str, float] = RATES) -> EpochProfile:
    return EpochProfile(rates=rates, start=lo, end=hi, n_samples=int(hi - lo))


def started(m: r.Machine | None = None) -> r.Machine:
    """START answered (open, default applied) and the profiler counting from t=0."""
    m = m or machine()
    m, _ = settle(m, ev(r.Kind.START, 0.0, 0, 0, None, r.Applied(C2, 0.0)))
    m, _ = settle(m, ev(r.Kind.PROFILER_STARTED, 0.0, wait_s=2.0))
    return m


def test_start_asks_to_open_and_apply_the_default_then_starts_the_profiler_late():
    m = machine()
    new, effects = step(m, ev(r.Kind.START, 0.0))
    assert new is m and effects == (r.Ask(r.OpenTrial()),)
    new, effects = step(m, ev(r.Kind.START, 0.0, 0, 0, None))
    assert new is m and effects == (r.Ask(r.Apply(C2)),)
    new, effects = settle(m, ev(r.Kind.START, 0.0, 0, 0, None, r.Applied(C2, 0.0)))
    assert new.phase is Phase.PROFILING and new.ledger.opened and new.ledger.config == C2
    assert of(effects, r.StartProfiler) == [r.StartProfiler()]
    assert not of(effects, r.Decide)  # profiling decides nothing yet


def test_a_matched_profile_settles_on_the_clusters_config_at_the_first_epoch():
    m = started()
    m, _ = settle(m, ev(r.Kind.EPOCH_START, 0.0, 0))
    p = profile(0.0, 4.0)
    m, effects = settle(m, ev(
        r.Kind.EPOCH_END, 4.0, 0, 40,
        (p, 4.0),                                                     # TakeProfile
        (Match(cluster=3, score=0.95, config=C1, reason="close"), ""),  # MatchProfile
        (100.0, 0),                                                   # Usage: C1 is safe
        r.Applied(C1, 4.0),                                           # Apply(C1)
        posted=1))
    assert m.phase is Phase.SETTLED and m.ledger.config == C1
    assert decisions(effects) == [(DecisionKind.MATCHED, C1)]
    (epoch,) = of(effects, r.WriteEpoch)
    assert epoch.phase is Phase.PROFILING and epoch.profile is p and epoch.result.seconds == 4.0
    (record,) = of(effects, r.WriteGroundTruth)
    assert not record.probed and math.isnan(record.value)  # an observation, no vote
    assert of(effects, r.StopProfiler) == [r.StopProfiler(late=True)]


def answer(m: r.Machine, e: r.Event, *, rates: dict[str, float] = RATES,
           seconds_per_step: dict[SystemConfig, float] | None = None
           ) -> tuple[r.Machine, tuple[object, ...]]:
    """Step ``e`` answering each question as a quiet node would (a plain
    function of the question and the event, so still no I/O)."""
    answers: list[object] = []
    done: list[object] = []
    while True:
        new, effects = step(m, replace(e, answers=tuple(answers)))
        body = effects[:-1] if effects and isinstance(effects[-1], r.Ask) else effects
        done += list(body[len(done):])
        if body is effects:
            return new, tuple(done)
        q = effects[-1].query
        if isinstance(q, r.Apply):
            answers.append(r.Applied(q.config, e.t))
        elif isinstance(q, r.Usage):
            answers.append((100.0, 0))
        elif isinstance(q, r.Capacity):
            answers.append(None)
        elif isinstance(q, r.TakeProfile):
            answers.append((profile(q.lo, q.hi or e.t, rates), q.hi or e.t))
        elif isinstance(q, r.MatchProfile):
            answers.append((Match(cluster=None, score=0.0, config=None, reason="empty model"),
                            "no model yet"))
        else:
            answers.append(None)


def train(m: r.Machine, epochs: range, t: float, spe: dict[SystemConfig, float],
          steps: int = 10) -> tuple[r.Machine, list[object], float]:
    """Epochs of ``steps`` steps, each as long as the config in force makes it."""
    out: list[object] = []
    for e in epochs:
        m, fx = answer(m, ev(r.Kind.EPOCH_START, t, e, posted=e))
        out += fx
        t += steps * spe[m.ledger.config]
        m, fx = answer(m, ev(r.Kind.EPOCH_END, t, e, steps, posted=e + 1))
        out += fx
    return m, out, t


def test_no_match_probes_each_candidate_then_settles_on_the_fastest():
    m = started(machine(total_epochs=5))
    m, effects, _ = train(m, range(4), 0.0, {C1: 0.5, C2: 1.0})
    assert decisions(tuple(effects)) == [
        (DecisionKind.PROBE, C1), (DecisionKind.PROBE, C2), (DecisionKind.SETTLED, C1)]
    assert isinstance(m.state, r.Settled) and m.state.best == (C1, pytest.approx(0.5))  # s/step
    assert dict(m.state.probed) == {C1: pytest.approx(0.5), C2: pytest.approx(1.0)}
    (record,) = of(tuple(effects), r.WriteGroundTruth)
    assert record.probed and record.config == C1
    assert dict(of(tuple(effects), r.PublishSpeeds)[0].speeds) == {1: 2.0, 2: 1.0}
    phases = [w.phase for w in of(tuple(effects), r.WriteEpoch)]
    assert phases == [Phase.PROFILING, Phase.PROBING, Phase.PROBING, Phase.SETTLED]


def test_a_trial_too_short_to_probe_falls_back_to_the_default():
    m = started(machine(total_epochs=2))
    m, effects, _ = train(m, range(2), 0.0, {C1: 0.5, C2: 1.0})
    assert decisions(tuple(effects)) == [(DecisionKind.FALLBACK, C2)]
    assert "too few" in m.state.reason


def test_the_step_is_pure_and_never_mutates_the_strategy_it_was_given():
    m = started(machine(total_epochs=5))
    m, _, t = train(m, range(2), 0.0, {C1: 0.5, C2: 1.0})
    assert isinstance(m.state, r.Probing)
    values_before = dict(m.state.strategy.values)
    e = ev(r.Kind.EPOCH_START, t, 2, posted=2)
    once, twice = answer(m, e), answer(m, e)
    assert once[1] == twice[1] and once[0].ledger == twice[0].ledger
    assert m.state.strategy.values == values_before


def test_a_refused_config_degrades_and_restores_the_default():
    m = started(machine(total_epochs=5))
    m, effects, t = train(m, range(1), 0.0, {C1: 0.5, C2: 1.0})
    assert isinstance(m.state, r.Probing) and m.ledger.config == C1  # probing C1 first
    m, _ = answer(m, ev(r.Kind.EPOCH_START, t, 1, posted=1))
    # answers: Usage (OOM check after C1's slot), Apply(C2) refused,
    # Apply(C2) again to restore the default (C1 is in force)
    e = ev(r.Kind.EPOCH_END, t + 10, 1, 10, (100.0, 0), r.Failed("cgroup: permission denied"),
           r.Applied(C2, t + 10), posted=2)
    new, effects = settle(m, e)
    assert isinstance(new.state, r.Degraded), effects
    assert new.state.reason == "epoch_end: cgroup: permission denied"
    (d,) = of(effects, r.Decide)
    assert d.decision.kind is DecisionKind.DEGRADED and d.decision.config == C2
    assert "restored" in d.decision.reason
    assert of(effects, r.WriteEpoch)  # the epoch's record was written before the failure


def test_when_even_the_default_cannot_be_restored_the_cpus_are_read_back():
    m = started()
    m = replace(m, ledger=replace(m.ledger, config=C1))  # a probe in force
    # answers: Apply(default) failed, Release, CpusNow
    e = ev(r.Kind.FAIL, 5.0, 3, 0, r.Failed("daemon gone"), None, ((0, 1, 2), "0-2"),
           reason="perf died")
    new, effects = settle(m, e)
    assert isinstance(new.state, r.Degraded) and not new.ledger.opened
    assert new.ledger.config == SystemConfig(3)
    (d,) = of(effects, r.Decide)
    assert "runs on 3 CPU(s) (0-2)" in d.decision.reason and d.decision.epoch == 3
    assert r.StopProfiler() in effects


def test_degraded_records_each_epoch_and_decides_nothing():
    m = replace(started(), state=r.Degraded("perf missing"))
    m, effects = settle(m, ev(r.Kind.EPOCH_START, 0.0, 0, energy=(5.0, "rapl")))
    assert effects == ()
    m, effects = settle(m, ev(r.Kind.EPOCH_END, 2.0, 0, 7, energy=(5.0, "rapl")))
    (w,) = effects
    assert isinstance(w, r.WriteEpoch) and w.phase is Phase.DEGRADED
    assert w.result.steps == 7 and w.result.seconds == 2.0 and w.result.energy_j is None
    assert settle(m, ev(r.Kind.REBALANCE, 3.0)) == (m, ())


def test_rebalance_waits_for_the_probe_in_progress():
    m = started(machine(total_epochs=5))
    m, _, t = train(m, range(1), 0.0, {C1: 0.5, C2: 1.0})
    assert isinstance(m.state, r.Probing) and m.state.slot is not None
    new, effects = settle(m, ev(r.Kind.REBALANCE, t))
    assert effects == () and new.ledger == m.ledger  # mid-probe: not now
    settled = replace(m, state=r.Settled("x", C2))
    new, effects = settle(settled, ev(r.Kind.REBALANCE, t, 0, 0, C1))  # TakeShare → C1
    assert new.ledger.config == C1 and isinstance(effects[0], r.Note)


def test_energy_of_an_epoch_is_summed_over_its_boundaries():
    m = started()
    m, _ = settle(m, ev(r.Kind.EPOCH_START, 0.0, 0, energy=(1.0, "estimated")))
    m, _ = answer(m, ev(r.Kind.WINDOW_END, 0.5, 0, 5, energy=(2.0, "estimated")))
    m, effects = answer(m, ev(r.Kind.EPOCH_END, 0.8, 0, 8, energy=(3.0, "rapl")))
    (w,) = of(effects, r.WriteEpoch)
    assert w.result.energy_j == 6.0 and w.result.energy_method == "estimated+rapl"


def test_close_stops_the_profiler_and_releases_the_trial():
    m = started()
    new, effects = settle(m, ev(r.Kind.CLOSE, 9.0, 0, 0, None))
    assert effects == (r.StopProfiler(),) and not new.ledger.opened
    assert new.phase is m.phase


def test_the_sessions_epoch_result_is_stored_as_built_not_rebuilt():
    """One EpochResult per epoch (issue 14): the trial session's record goes
    to the store with the tuner's profile beside it; the tuner only fills in
    an energy figure the session did not have."""
    from pipetune.types import EpochResult

    m = started()
    m, _ = settle(m, ev(r.Kind.EPOCH_START, 0.0, 0, energy=(4.0, "estimated")))
    built = EpochResult(0, SystemConfig(1), 0.4, 3, 2.5, "rapl", {"loss": 1.0})
    m, effects = answer(m, ev(r.Kind.EPOCH_END, 0.5, 0, 3, result=built))
    (w,) = of(effects, r.WriteEpoch)
    assert w.result is built
    bare = replace(built, energy_j=None, energy_method=None)
    m2 = started()
    m2, _ = settle(m2, ev(r.Kind.EPOCH_START, 0.0, 0, energy=(4.0, "estimated")))
    _, effects = answer(m2, ev(r.Kind.EPOCH_END, 0.5, 0, 3, energy=(1.0, "estimated"),
                               result=bare))
    (w,) = of(effects, r.WriteEpoch)
    assert w.result == replace(bare, energy_j=5.0, energy_method="estimated")


# -- parallel strategies as a system parameter (issue 17 item 2) ----------------------------

STRATEGY_SPACE = SystemSpace(cores=(1, 2), parallel=("none", "ddp"), workers=(2,))
DDP2 = replace(C2, parallel="ddp")


def train_strategies(m: r.Machine, epochs: range, t: float, spe: dict[str, float],
                     restart_s: float, steps: int = 10
                     ) -> tuple[r.Machine, list[object], float]:
    """Like :func:`train`, per strategy; the epoch after a change of strategy
    reports the worker group's ``restart_s`` (and lasts that much longer), as
    the trial session does."""
    out: list[object] = []
    in_force = m.ledger.config.parallel
    for e in epochs:
        m, fx = answer(m, ev(r.Kind.EPOCH_START, t, e, posted=e))
        out += fx
        restarted = m.ledger.config.parallel != in_force
        in_force = m.ledger.config.parallel
        t += steps * spe[in_force] + (restart_s if restarted else 0.0)
        metrics = {"restart_s": restart_s} if restarted else {}
        result = EpochResult(e, m.ledger.config, 0.0, steps, metrics=metrics)
        m, fx = answer(m, ev(r.Kind.EPOCH_END, t, e, steps, posted=e + 1, result=result))
        out += fx
    return m, out, t


def strategy_machine(**params: object) -> r.Machine:
    m = r.initial(r.Params(space=STRATEGY_SPACE, warmup_s=0.0, probe_min_s=0.0,
                           profile_min_s=1.0, **params), Objective.RUNTIME)  # type: ignore[arg-type]
    m, _ = settle(m, ev(r.Kind.START, 0.0, 0, 0, None, r.Applied(C2, 0.0)))
    m, _ = settle(m, ev(r.Kind.PROFILER_STARTED, 0.0, wait_s=2.0))
    return m


def test_strategies_are_probed_at_the_share_in_force_and_the_faster_one_settles():
    m = strategy_machine(total_epochs=5)
    m, effects, _ = train_strategies(m, range(4), 0.0, {"none": 1.0, "ddp": 0.5}, restart_s=1.0)
    assert decisions(tuple(effects)) == [
        (DecisionKind.PROBE, C2), (DecisionKind.PROBE, DDP2), (DecisionKind.SETTLED, DDP2)]
    assert isinstance(m.state, r.Settled)
    # ddp's probe epoch: 10 steps x 0.5 s + its share of the 1 s restart (it
    # serves this epoch and the 2 left: 1/3 s), per step
    assert dict(m.state.probed) == {C2: pytest.approx(1.0), DDP2: pytest.approx(0.5 + 1 / 30)}
    (record,) = of(tuple(effects), r.WriteGroundTruth)
    assert record.config == DDP2 and str(record.config) == "2c/-m/0g/ddp"
    assert SystemConfig.parse(str(record.config)) == DDP2  # through the ground truth's string


def test_a_restart_slower_than_the_strategy_gains_keeps_the_strategy_in_force():
    m = strategy_machine(total_epochs=5)
    # ddp saves 2 s an epoch over 3 epochs; its 9 s restart costs more (3 s an epoch)
    m, effects, _ = train_strategies(m, range(4), 0.0, {"none": 1.0, "ddp": 0.8}, restart_s=9.0)
    assert decisions(tuple(effects))[-1] == (DecisionKind.SETTLED, C2)


def test_a_restart_is_amortised_over_the_epochs_it_serves():
    # the same 3 s restart charged whole to ddp's probe epoch would lose (1.1 s/step);
    # spread over the 3 epochs it serves, ddp wins (0.9 s/step)
    m = strategy_machine(total_epochs=5)
    m, effects, _ = train_strategies(m, range(4), 0.0, {"none": 1.0, "ddp": 0.8}, restart_s=3.0)
    assert isinstance(m.state, r.Settled)
    assert dict(m.state.probed)[DDP2] == pytest.approx(0.9)
    assert decisions(tuple(effects))[-1] == (DecisionKind.SETTLED, DDP2)


def test_a_restart_the_warm_up_left_out_is_still_counted():
    m = strategy_machine(total_epochs=6)
    m = replace(m, params=replace(m.params, warmup_s=1.5, probe_min_s=100.0))
    m, effects, _ = train_strategies(m, range(5), 0.0, {"none": 1.0, "ddp": 0.8},
                                     restart_s=4.0, steps=1)
    # none: its second epoch (the first is warm-up) = 1 s/step; ddp: 0.8 s/step
    # over its second epoch plus the share of its first epoch's 4 s restart that
    # the counted epoch carries (it and the 1 epoch left: 2 s) -> 2.8 s/step
    assert isinstance(m.state, r.Settled), m.state
    probed = dict(m.state.probed)
    assert probed[DDP2] == pytest.approx(2.8) and probed[C2] == pytest.approx(1.0)
    assert decisions(tuple(effects))[-1] == (DecisionKind.SETTLED, C2)
