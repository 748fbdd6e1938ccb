"""The SystemTuner state machine with a fake clock, profiler, controller and
store: every transition, including DEGRADED and the short-trial plan."""

from __future__ import annotations

import math
import threading

import pytest
from tuner_fakes import (
    C1,
    C2,
    RATES_A,
    RATES_B,
    FakeClock,
    FakeController,
    FakeProfiler,
    kinds,
    make,
    speed,
    train,
)

from pipetune.errors import ConfigError
from pipetune.groundtruth import GroundTruthRecord, fit_groundtruth, save_model
from pipetune.tuner import TRANSITIONS, SystemTuner, TunerState
from pipetune.tuner.records import guard
from pipetune.types import DecisionKind, SystemConfig, SystemSpace, TrialRef


def runs_of(rates, config, value, workload, *, probed=True, n=3):
    """``n`` records of one workload, its rates 2 % apart run to run."""
    return [GroundTruthRecord({k: v * (1 + 0.02 * i) for k, v in rates.items()}, config,
                              "runtime", value, workload, probed=probed) for i in range(n)]


def test_unseen_workload_probes_each_candidate_once_and_settles_on_fastest():
    tuner, clock, ctl, prof, store = make(total_epochs=6)
    tuner.start()
    assert tuner.wait_idle()
    assert tuner.state is TunerState.PROFILING
    assert ctl.opened == [("t1", [12345])] and ctl.applied == [C2]  # default = largest
    train(tuner, clock, range(6), seconds_per_step=speed({C1: 0.5, C2: 1.0}))
    assert kinds(tuner) == [DecisionKind.PROBE, DecisionKind.PROBE, DecisionKind.SETTLED]
    assert [d.config for d in tuner.decisions] == [C1, C2, C1]
    assert tuner.state is TunerState.SETTLED and tuner.config == C1
    assert tuner.threads_to_use() == 1
    assert ctl.applied == [C2, C1, C2, C1]
    # started before epoch 0, settled at the end of epoch 2 (3 epochs of 10 steps)
    assert tuner.settled_at - tuner.started_at == pytest.approx(10 * 1.0 + 10 * 0.5 + 10 * 1.0)
    assert tuner.best == (C1, pytest.approx(0.5))
    # the profile was taken once, over the first epoch, and profiling stopped
    assert [c[0] for c in prof.calls] == ["start", "profile", "stop"]
    # (profile, winner, value) went to the store, with every decision and epoch
    assert len(store.groundtruth) == 1
    rec = store.groundtruth[0]
    assert rec["config"] == C1 and rec["objective"] == "runtime"
    assert rec["value"] == pytest.approx(0.5) and rec["profile"].rates == RATES_A
    assert rec["workload"] == "wl"
    assert [d.kind for d in store.decisions] == kinds(tuner)
    assert [phase for _, phase, _ in store.epochs] == [
        "profiling", "probing", "probing", "settled", "settled", "settled"]
    assert store.epochs[0][2] is not None  # the profiling epoch carries its profile
    tuner.close()
    assert ctl.closed == ["handle-t1"]


def test_matched_workload_settles_after_profiling_without_probing(tmp_path):
    recs = runs_of(RATES_A, C1, 0.5, "a") + runs_of(RATES_B, C2, 0.7, "b")
    path = save_model(fit_groundtruth(recs), tmp_path / "gt.json")
    tuner, clock, ctl, _, store = make(groundtruth=str(path), total_epochs=4)
    tuner.start()
    train(tuner, clock, range(4))
    assert kinds(tuner) == [DecisionKind.MATCHED]
    d = tuner.decisions[0]
    assert d.config == C1 and d.score >= 0.8 and d.threshold == 0.8 and d.epoch == 0
    assert tuner.state is TunerState.SETTLED and ctl.applied == [C2, C1]
    # no new winner, but the profile is kept as an observation: it casts no vote
    (obs,) = store.groundtruth
    assert obs["probed"] is False and obs["config"] == C1 and math.isnan(obs["value"])


def test_a_cluster_nobody_probed_in_is_probed_not_matched(tmp_path):
    recs = runs_of(RATES_A, C2, math.nan, "a", probed=False) + runs_of(RATES_B, C2, 0.7, "b")
    path = save_model(fit_groundtruth(recs), tmp_path / "gt.json")
    tuner, clock, _, _, store = make(groundtruth=str(path), total_epochs=6)
    tuner.start()
    train(tuner, clock, range(6), seconds_per_step=speed({C1: 0.5, C2: 1.0}))
    assert kinds(tuner) == [DecisionKind.PROBE, DecisionKind.PROBE, DecisionKind.SETTLED]
    assert "no trial has probed yet" in tuner.decisions[0].reason
    assert [g.get("probed", True) for g in store.groundtruth] == [True]  # its winner


def test_a_long_epoch_is_profiled_and_matched_at_a_step_window(tmp_path):
    # 4 windows of 3 s per epoch: profile_min_s (4 s) is sampled by the end
    # of the second window, so the match is applied there, mid-epoch 0.
    recs = runs_of(RATES_A, C1, 0.5, "a") + runs_of(RATES_B, C2, 0.7, "b")
    path = save_model(fit_groundtruth(recs), tmp_path / "gt.json")
    tuner, clock, ctl, prof, store = make(groundtruth=str(path), total_epochs=3,
                                          profile_min_s=4.0)
    tuner.start()
    assert tuner.wait_idle()  # sampling starts before the epoch does
    applied_during = []
    tuner.epoch_start(0)
    for w in range(1, 4):
        clock.advance(3.0)
        tuner.window_end(0, 10 * w)
        assert tuner.wait_idle()
        applied_during.append(tuner.config)
    assert applied_during == [C2, C1, C1]  # switched at the second window
    d = tuner.decisions[0]
    assert d.kind is DecisionKind.MATCHED and d.epoch == 0 and "step 20" in d.reason
    start, end, _, _ = prof.calls[1][1]
    assert end - start == pytest.approx(6.0)  # the profile covers the two windows
    clock.advance(3.0)
    tuner.epoch_end(0, 40)
    assert tuner.wait_idle()
    result, phase, profile = store.epochs[0]
    assert profile is not None and profile.rates == RATES_A  # the epoch record carries it
    assert [c[0] for c in prof.calls] == ["start", "profile", "stop"]
    tuner.close()


def test_a_profile_of_several_epochs_waits_for_the_epochs():
    tuner, clock, _, prof, _ = make(total_epochs=6, profile_epochs=2, profile_min_s=1.0)
    tuner.start()
    train(tuner, clock, range(6), windows=4, seconds_per_step=speed({C1: 0.5, C2: 1.0}))
    assert tuner.decisions[0].kind is DecisionKind.PROBE and tuner.decisions[0].epoch == 1


def test_clearly_different_workload_does_not_match(tmp_path):
    path = save_model(fit_groundtruth(runs_of(RATES_A, C1, 0.5, "a")), tmp_path / "gt.json")
    tuner, clock, _, _, _ = make(groundtruth=path, rates=RATES_B, total_epochs=5)
    tuner.start()
    train(tuner, clock, range(5))
    assert kinds(tuner)[0] is DecisionKind.PROBE
    assert "no match" in tuner.decisions[0].reason
    # the nearest cluster's winner is probed first (hint)
    assert tuner.decisions[0].config == C1


def test_corrupt_model_file_means_probing_with_the_reason(tmp_path):
    bad = tmp_path / "gt.json"
    bad.write_text("{not json")
    tuner, clock, _, _, _ = make(groundtruth=bad, total_epochs=5)
    tuner.start()
    train(tuner, clock, range(5))
    assert kinds(tuner)[0] is DecisionKind.PROBE
    assert "corrupt" in tuner.decisions[0].reason
    assert tuner.state is TunerState.SETTLED


def test_perf_missing_degrades_and_training_continues():
    tuner, clock, ctl, _, store = make(profiler=FakeProfiler(RATES_A, fail_start=True))
    tuner.start()
    train(tuner, clock, range(3))  # never raises
    assert tuner.state is TunerState.DEGRADED
    assert kinds(tuner) == [DecisionKind.DEGRADED]
    assert "perf" in tuner.decisions[0].reason
    assert tuner.config == C2 and tuner.threads_to_use() == 2
    assert store.decisions[-1].kind is DecisionKind.DEGRADED
    # every epoch is still recorded, marked degraded
    assert [(r.epoch, phase) for r, phase, _ in store.epochs] == [
        (0, "degraded"), (1, "degraded"), (2, "degraded")]
    tuner.close()
    assert ctl.closed == ["handle-t1"]


def test_cgroup_refused_at_open_degrades():
    clock = FakeClock()
    tuner, clock, ctl, prof, _ = make(clock=clock, controller=FakeController(clock, fail_open=True))
    tuner.start()
    train(tuner, clock, range(2))
    assert tuner.state is TunerState.DEGRADED
    assert "permission denied" in tuner.reason
    assert prof.calls == []  # nothing started


def test_apply_failure_while_probing_degrades_and_restores_default():
    clock = FakeClock()
    ctl = FakeController(clock, fail_on=[C1])
    tuner, clock, ctl, prof, _ = make(clock=clock, controller=ctl, total_epochs=5)
    tuner.start()
    train(tuner, clock, range(5))
    assert kinds(tuner) == [DecisionKind.DEGRADED]
    assert "cannot apply 1c" in tuner.decisions[0].reason
    assert tuner.config == C2
    assert ("stop", None) in prof.calls


def test_bug_in_a_collaborator_degrades_instead_of_raising():
    prof = FakeProfiler(RATES_A, fail_profile=ZeroDivisionError("boom"))
    tuner, clock, _, _, _ = make(profiler=prof)
    tuner.start()
    train(tuner, clock, range(2))
    assert tuner.state is TunerState.DEGRADED
    assert "ZeroDivisionError: boom" in tuner.reason


def test_short_trial_skips_probing():
    tuner, clock, ctl, _, store = make(total_epochs=2)
    tuner.start()
    train(tuner, clock, range(2))
    assert kinds(tuner) == [DecisionKind.FALLBACK]
    assert "too few to probe" in tuner.decisions[0].reason
    assert tuner.config == C2
    assert [(g["probed"], g["config"]) for g in store.groundtruth] == [(False, C2)]


def test_short_trial_shortens_the_plan():
    space = SystemSpace(cores=(1, 2, 3, 4))
    tuner, clock, ctl, _, _ = make(space, total_epochs=4)
    tuner.start()
    table = {SystemConfig(c): 1.0 / c for c in (1, 2, 3, 4)}
    train(tuner, clock, range(4), seconds_per_step=speed(table))
    # 3 epochs left after profiling: 2 probes leave the winner one epoch
    assert kinds(tuner) == [DecisionKind.PROBE, DecisionKind.PROBE, DecisionKind.SETTLED]
    probed = [d.config for d in tuner.decisions[:2]]
    assert SystemConfig(4) in probed  # the default is kept in a shortened plan
    assert tuner.decisions[-1].epoch == 2


def test_short_epochs_are_aggregated_into_one_probe_while_the_budget_allows():
    # 0.5 s epochs at 1c, 1 s at 2c: a probe measures >= probe_min_s (2 s),
    # so 1c spans 4 epochs and 2c 2, and the winner still has epochs left.
    tuner, clock, _, _, store = make(total_epochs=20, probe_min_s=2.0)
    tuner.start()
    train(tuner, clock, range(20), steps=10, seconds_per_step=speed({C1: 0.05, C2: 0.1}))
    assert kinds(tuner) == [DecisionKind.PROBE, DecisionKind.PROBE, DecisionKind.SETTLED]
    assert [(d.config, d.epoch) for d in tuner.decisions] == [(C1, 0), (C2, 4), (C1, 6)]
    assert tuner.best == (C1, pytest.approx(0.05))
    assert len(store.groundtruth) == 1


def test_short_epochs_in_a_short_trial_probe_one_epoch_each():
    # 4 epochs: profile + 2 probes + the winner's epoch; no room to aggregate.
    tuner, clock, _, _, _ = make(total_epochs=4, probe_min_s=2.0)
    tuner.start()
    train(tuner, clock, range(4), steps=10, seconds_per_step=speed({C1: 0.05, C2: 0.1}))
    assert [(d.config, d.epoch) for d in tuner.decisions] == [(C1, 0), (C2, 1), (C1, 2)]


def test_warmup_is_excluded_from_a_probe():
    # 1c is slow for the first window after a change (warm-up) but then the
    # fastest; 2c is steady.  Counting the warm-up would pick 2c.
    def sps(cfg, since):
        if cfg == C1:
            return 10.0 if since == 0 else 0.5
        return 1.0

    tuner, clock, _, _, _ = make(total_epochs=6, warmup_s=1.0)
    tuner.start()
    train(tuner, clock, range(6), steps=40, windows=4, seconds_per_step=sps)
    assert tuner.decisions[2].kind is DecisionKind.SETTLED
    assert tuner.decisions[2].config == C1
    assert tuner.best[1] == pytest.approx(0.5)


def test_probe_counts_only_when_the_config_was_in_force_for_the_whole_window():
    # Applying a config takes 5 fake seconds, and the loop starts the next
    # epoch before the apply is done, so that epoch ran partly under the old
    # config: it must not count, and the probe is measured in the next one.
    clock = FakeClock()
    ctl = FakeController(clock, apply_takes_s=5.0)
    tuner, clock, ctl, _, _ = make(clock=clock, controller=ctl, total_epochs=8)
    tuner.start()
    assert tuner.wait_idle()
    tuner.epoch_start(0)
    for e in range(8):
        clock.advance(10.0)
        ctl.hold.clear()  # the worker's apply waits until the next epoch started
        tuner.epoch_end(e, 10)
        tuner.epoch_start(e + 1)
        ctl.hold.set()
        assert tuner.wait_idle()
    probes = [d for d in tuner.decisions if d.kind is DecisionKind.PROBE]
    assert [d.epoch for d in probes] == [0, 2]
    assert tuner.decisions[-1].kind is DecisionKind.SETTLED


def test_a_probe_that_spills_over_cuts_the_plan_and_keeps_the_default():
    # 4 epochs: profile, then 2 probes planned; the first probe's epoch does
    # not count (late apply), so only one probe fits: no comparison, default kept.
    clock = FakeClock()
    ctl = FakeController(clock, apply_takes_s=5.0)
    tuner, clock, ctl, _, store = make(clock=clock, controller=ctl, total_epochs=4)
    tuner.start()
    assert tuner.wait_idle()
    tuner.epoch_start(0)
    for e in range(4):
        clock.advance(10.0)
        ctl.hold.clear()
        tuner.epoch_end(e, 10)
        if e < 3:
            tuner.epoch_start(e + 1)
        ctl.hold.set()
        assert tuner.wait_idle()
    last = tuner.decisions[-1]
    assert last.kind is DecisionKind.FALLBACK and "only 1 probe" in last.reason
    assert tuner.config == C2
    assert [(g["probed"], g["config"]) for g in store.groundtruth] == [(False, C2)]
    assert len([d for d in tuner.decisions if d.kind is DecisionKind.PROBE]) == 1


def test_epoch_end_returns_while_the_worker_profiles():
    gate = threading.Event()
    prof = FakeProfiler(RATES_A, gate=gate)
    tuner, clock, _, _, _ = make(profiler=prof, total_epochs=4)
    tuner.start()
    tuner.epoch_start(0)
    clock.advance(10)
    tuner.epoch_end(0, 10)  # returns although profile() waits for the gate
    gate.set()
    assert tuner.wait_idle()
    assert prof.gate_was_open_at_profile is True
    assert tuner.state is TunerState.PROBING


def test_sub_epoch_halving_probes_inside_epochs():
    space = SystemSpace(cores=(1, 2, 3, 4))
    table = {SystemConfig(1): 4.0, SystemConfig(2): 1.0, SystemConfig(3): 2.0,
             SystemConfig(4): 3.0}
    tuner, clock, _, _, store = make(space, total_epochs=3, strategy="halving")
    tuner.start()
    train(tuner, clock, range(3), steps=160, windows=16, seconds_per_step=speed(table))
    k = kinds(tuner)
    # rung 0: 4 candidates, rung 1: the better 2, then settled — inside epoch 1
    assert k == [DecisionKind.PROBE] * 6 + [DecisionKind.SETTLED]
    assert tuner.decisions[-1].config == SystemConfig(2)
    assert tuner.decisions[-1].epoch == 1
    assert store.groundtruth[0]["config"] == SystemConfig(2)


def test_halving_excludes_the_warmup_window():
    # 1c's first window after a change is 20x slower (warm-up), then it is the
    # fastest.  Halving must measure the window after the warm-up; counting
    # the warm-up window would pick 2c.
    def sps(cfg, since):
        if cfg == C1:
            return 20.0 if since == 0 else 1.0
        return 1.5

    tuner, clock, _, _, _ = make(total_epochs=4, strategy="halving", warmup_s=0.5)
    tuner.start()
    train(tuner, clock, range(4), steps=160, windows=16, seconds_per_step=sps)
    assert tuner.decisions[-1].kind is DecisionKind.SETTLED
    assert tuner.decisions[-1].config == C1
    assert tuner.best[1] == pytest.approx(1.0)


def test_halving_without_windows_falls_back_to_grid():
    tuner, clock, _, _, _ = make(total_epochs=5, strategy="halving")
    tuner.start()
    train(tuner, clock, range(5), seconds_per_step=speed({C1: 0.5, C2: 1.0}))
    assert "halving needs step windows" in tuner.decisions[0].reason
    assert tuner.decisions[-1].config == C1


def test_one_at_a_time_strategy_in_the_tuner():
    space = SystemSpace(cores=(1, 2), memory_mb=(1024, 2048))
    cost = {1: 0.5, 2: 1.0}
    tuner, clock, _, _, _ = make(space, total_epochs=8, strategy="one_at_a_time")
    tuner.start()
    train(tuner, clock, range(8), seconds_per_step=lambda c, w: cost[c.cores] *
          (1.2 if c.memory_mb == 2048 else 1.0))
    probed = [d.config for d in tuner.decisions if d.kind is DecisionKind.PROBE]
    # cores first at the default memory, then memory at the best cores
    assert probed == [SystemConfig(1, 2048), SystemConfig(2, 2048), SystemConfig(1, 1024)]
    assert tuner.decisions[-1].config == SystemConfig(1, 1024)


def test_memory_candidates_below_the_peak_are_skipped():
    space = SystemSpace(cores=(1,), memory_mb=(512, 1024, 4096))
    clock = FakeClock()
    tuner, clock, _, _, _ = make(space, clock=clock, controller=FakeController(clock, peak_mb=700),
                                 total_epochs=6)
    tuner.start()
    train(tuner, clock, range(6))
    probed = [d.config.memory_mb for d in tuner.decisions if d.kind is DecisionKind.PROBE]
    assert probed == [1024, 4096]  # 512 < 700 MB × 1.25
    assert "below memory peak" in tuner.decisions[0].reason


def test_oom_marks_a_config_infeasible():
    clock = FakeClock()
    ctl = FakeController(clock, oom_on=[C1])
    tuner, clock, ctl, _, _ = make(clock=clock, controller=ctl, total_epochs=6)
    tuner.start()
    train(tuner, clock, range(6), seconds_per_step=speed({C1: 0.1, C2: 1.0}))
    assert tuner.decisions[-1].kind is DecisionKind.SETTLED
    assert tuner.decisions[-1].config == C2  # 1c was fastest but OOMed


def test_resource_time_prefers_the_smaller_config_that_is_not_much_slower():
    # 2c is 10 % faster but holds twice the cores: resource-time picks 1c,
    # runtime picks 2c.
    table = {C1: 1.0, C2: 0.9}
    for objective, winner in (("resource_time", C1), ("runtime", C2)):
        tuner, clock, _, _, _ = make(total_epochs=5, objective=objective)
        tuner.start()
        train(tuner, clock, range(5), seconds_per_step=speed(table))
        assert tuner.decisions[-1].config == winner, objective
        assert tuner.decisions[-1].objective == objective


def test_energy_objective_without_energy_uses_runtime():
    tuner, clock, _, _, store = make(total_epochs=5, objective="energy")
    tuner.start()
    train(tuner, clock, range(5), seconds_per_step=speed({C1: 0.5, C2: 1.0}))
    assert tuner.decisions[-1].objective == "runtime"
    assert store.groundtruth[0]["objective"] == "runtime"


def test_energy_objective_uses_the_energy_source():
    class Energy:
        def __init__(self, tuner_ref):
            self.tuner_ref = tuner_ref
            self.last = None

        def interval(self):
            # 2c draws 4× the power of 1c, and is only 1.5× faster
            t = clock()
            j = 0.0 if self.last is None else (t - self.last) * (4.0 if cfg() == C2 else 1.0)
            self.last = t
            return j, "estimated"

    clock = FakeClock()
    holder = {}

    def cfg():
        return holder["t"].config

    tuner, clock, _, _, _ = make(clock=clock, total_epochs=5, objective="energy",
                                 energy=Energy(None))
    holder["t"] = tuner
    tuner.start()
    train(tuner, clock, range(5), seconds_per_step=speed({C1: 1.5, C2: 1.0}))
    assert tuner.decisions[-1].objective == "energy"
    assert tuner.decisions[-1].config == C1


def test_profile_aggregates_short_epochs():
    tuner, clock, _, prof, _ = make(total_epochs=8, profile_min_s=25.0)
    tuner.start()
    train(tuner, clock, range(8))  # 10 s epochs
    start, end, epoch, _ = next(c[1] for c in prof.calls if c[0] == "profile")
    assert epoch == 2 and end - start == pytest.approx(30.0)
    assert tuner.decisions[0].epoch == 2


def test_boundaries_before_start_start_the_tuner():
    tuner, clock, ctl, _, _ = make(total_epochs=4)
    train(tuner, clock, range(4))
    assert ctl.opened and tuner.decisions


def test_close_releases_and_later_calls_are_ignored():
    tuner, clock, ctl, _, _ = make()
    tuner.start()
    tuner.close()
    tuner.close()
    tuner.epoch_start(0)
    tuner.epoch_end(0, 1)
    assert ctl.closed == ["handle-t1"]
    assert tuner.wait_idle(1.0)


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ConfigError, match="probe_min_s"):
        make(probe_min_s=-1.0)
    with pytest.raises(ConfigError, match="threshold"):
        make(threshold=1.5)
    with pytest.raises(ConfigError, match="objective"):
        make(objective="speed")
    with pytest.raises(ConfigError, match="strategy"):
        make(strategy="random")


def test_transition_table_is_the_only_way():
    assert TRANSITIONS[TunerState.DEGRADED] == frozenset()
    for s in TRANSITIONS:
        if s is not TunerState.DEGRADED:
            assert TunerState.DEGRADED in TRANSITIONS[s]
    with pytest.raises(RuntimeError, match="illegal"):
        guard(TunerState.SETTLED, TunerState.PROBING)


def test_summary_says_what_was_applied_and_why():
    tuner, clock, _, _, _ = make(total_epochs=2)
    tuner.start()
    train(tuner, clock, range(2))
    s = tuner.summary()
    assert s["pipetune/state"] == "settled" and s["pipetune/config"] == "2c/-m/0g"
    assert s["pipetune/decision"] == "fallback" and "too few" in s["pipetune/reason"]
    assert not math.isnan(s["pipetune/threads"])


def test_from_settings_takes_threshold_objective_warmup_and_model(tmp_path):
    from pipetune.config import Settings

    settings = Settings.load({}, env={"PIPETUNE_HOME": str(tmp_path), "PIPETUNE_THRESHOLD": "0.3",
                                      "PIPETUNE_OBJECTIVE": "edp", "PIPETUNE_WARMUP_S": "2.5",
                                      "PIPETUNE_PROBE_MIN_S": "4"})
    clock = FakeClock()
    tuner = SystemTuner.from_settings(
        TrialRef("j", "t"), SystemSpace(cores=(1, 2)), settings, pids=[1],
        controller=FakeController(clock), profiler_factory=lambda pids: FakeProfiler(RATES_A),
        clock=clock,
    )
    try:
        assert tuner.threshold == 0.3 and tuner.objective.value == "edp"
        assert tuner.warmup_s == 2.5 and tuner.probe_min_s == 4.0
        assert tuner._groundtruth_src == str(tmp_path / "groundtruth.json")
    finally:
        tuner.close()


def test_context_manager_starts_and_closes():
    clock = FakeClock()
    ctl = FakeController(clock)
    with SystemTuner(TrialRef("j", "t"), SystemSpace(cores=(1, 2)), pids=[7], controller=ctl,
                     profiler_factory=lambda pids: FakeProfiler(RATES_A), clock=clock) as tuner:
        assert tuner.wait_idle()
        assert tuner.state is TunerState.PROFILING
    assert ctl.opened == [("t", [7])] and ctl.closed == ["handle-t"]


class _Applied:
    def __init__(self, config: SystemConfig) -> None:
        self.config, self.cpus = config, tuple(range(config.cores))


class SharingController(FakeController):
    """A node shared with other trials: ``share`` cores at most, and a
    share the others' starts and ends move (``moved``, picked up by
    rebalance at a boundary)."""

    def __init__(self, clock, share: int) -> None:  # noqa: ANN001
        super().__init__(clock)
        self.share = share
        self.moved: _Applied | None = None

    def apply(self, handle, config, **kw):  # noqa: ANN001, ANN003, ANN201
        super().apply(handle, config, **kw)
        return _Applied(SystemConfig(min(config.cores, self.share), config.memory_mb))

    def capacity(self, handle, cores):  # noqa: ANN001, ANN201
        return min(cores, self.share)

    def rebalance(self, handle):  # noqa: ANN001, ANN201
        moved, self.moved = self.moved, None
        return moved


def test_on_a_shared_node_the_tuner_probes_within_its_share_and_follows_it():
    clock = FakeClock()
    ctl = SharingController(clock, share=1)
    tuner, clock, ctl, _, store = make(controller=ctl, clock=clock, total_epochs=6)
    tuner.start()
    assert tuner.wait_decided()
    # The default (2 cores) was asked; the node's share (1 core) is in force.
    assert ctl.applied == [C2] and tuner.config == C1 and tuner.threads_to_use() == 1
    train(tuner, clock, range(2))
    assert kinds(tuner) == [DecisionKind.FALLBACK]
    assert "the node is shared: at most 1 core(s)" in tuner.decisions[0].reason
    # The other trial ended: at the next boundary the share grows, threads follow.
    ctl.share, ctl.moved = 2, _Applied(C2)
    tuner.rebalance()
    assert tuner.wait_decided()
    assert tuner.config == C2 and tuner.threads_to_use() == 2
    train(tuner, clock, range(2, 4))
    assert [r.config for r, _, _ in store.epochs][-2:] == [C2, C2]
    tuner.close()


def test_the_training_thread_waits_for_the_decision_not_for_perf_to_stop():
    release = threading.Event()
    prof = FakeProfiler(RATES_A, on_stop=lambda: release.wait(10))
    tuner, clock, ctl, _, _ = make(profiler=prof, total_epochs=6)
    tuner.start()
    assert tuner.wait_decided(5) and ctl.applied == [C2]
    tuner.epoch_start(0)
    clock.advance(10)
    tuner.epoch_end(0, 10)
    # Decided: the probe's config is in force, though perf has not stopped.
    assert tuner.wait_decided(5)
    assert tuner.config == C1 and tuner.threads_to_use() == 1
    assert not tuner.wait_idle(0.2)  # the worker is still stopping perf
    release.set()
    assert tuner.wait_idle(5)
    tuner.close()


def test_reassert_applies_the_config_in_force_again():
    tuner, clock, ctl, _, _ = make(total_epochs=6)
    tuner.start()
    assert tuner.wait_decided()
    tuner.reassert()
    assert tuner.wait_decided()
    assert ctl.applied == [C2, C2]
    tuner.close()


def test_a_probe_beyond_a_share_that_shrank_meanwhile_is_not_measured():
    clock = FakeClock()
    ctl = SharingController(clock, share=2)
    tuner, clock, ctl, _, store = make(controller=ctl, clock=clock, total_epochs=6)
    tuner.start()
    train(tuner, clock, range(1))  # alone: profiled, probing 1c then 2c
    assert kinds(tuner) == [DecisionKind.PROBE]
    ctl.share = 1  # a second trial starts on the node
    train(tuner, clock, range(1, 3))
    assert kinds(tuner) == [DecisionKind.PROBE, DecisionKind.FALLBACK]
    assert "share of the node is 1 core(s)" in tuner.decisions[-1].reason
    assert tuner.best is None and all(r["probed"] is False for r in store.groundtruth)
    tuner.close()
