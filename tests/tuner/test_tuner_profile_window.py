"""How the SystemTuner takes its profile when the profiler starts late, the
epochs are short or the trial is short: the window starts where the samples
do, the profile is taken early enough to leave epochs for probing, and an
empty profile is said, never matched and never learned.  Fakes as in
test_tuner_states.py; the real profiler runs in test_tuner_real.py."""

from __future__ import annotations

import threading

import pytest
from tuner_fakes import (
    C1,
    C2,
    RATES_A,
    FakeClock,
    FakeController,
    FakeProfiler,
    kinds,
    make,
    speed,
    train,
)

from pipetune.groundtruth import GroundTruthRecord, fit_groundtruth, save_model
from pipetune.tuner import TunerState
from pipetune.types import DecisionKind

P, S = DecisionKind.PROBE, DecisionKind.SETTLED


def profile_calls(prof):
    return [c[1] for c in prof.calls if c[0] == "profile"]


def test_short_epochs_take_the_profile_early_to_leave_epochs_for_probing():
    # 10 s epochs, 45 s wanted: waiting would use 5 of 6 epochs.
    tuner, clock, _, prof, _ = make(total_epochs=6, profile_min_s=45.0)
    tuner.start()
    train(tuner, clock, range(6), seconds_per_step=speed({C1: 0.5, C2: 1.0}))
    (start, end, epoch, _), = profile_calls(prof)
    assert epoch == 1 and end - start == pytest.approx(20.0)
    assert kinds(tuner) == [P, P, S] and tuner.config == C1
    reason = tuner.decisions[0].reason
    assert "profile taken at epoch 1 after 20.00 s sampled" in reason
    assert "to leave 4 epoch(s) for probing" in reason
    # a short profile waits for its last partial interval (FakeProfiler: 1 s)
    assert prof.waits == [pytest.approx(2.0)]


def test_without_epochs_to_spare_the_profile_waits_for_its_seconds():
    # 3 epochs cannot host a 2-config plan anyway: profile as wanted.
    tuner, clock, _, prof, _ = make(total_epochs=3, profile_min_s=15.0)
    tuner.start()
    train(tuner, clock, range(3))
    (_, _, epoch, _), = profile_calls(prof)
    assert epoch == 1
    assert "profile taken" not in tuner.decisions[0].reason
    assert prof.waits == [0.0]  # a full profile does without the last partial interval


def test_the_last_epoch_takes_the_profile_anyway():
    tuner, clock, _, prof, _ = make(total_epochs=2, profile_min_s=100.0)
    tuner.start()
    train(tuner, clock, range(2))
    assert kinds(tuner) == [DecisionKind.FALLBACK]
    assert "before the trial ends" in tuner.decisions[0].reason
    assert tuner.state is TunerState.SETTLED


def test_profile_window_starts_when_the_profiler_counts():
    gate = threading.Event()
    prof = FakeProfiler(RATES_A, start_gate=gate)
    tuner, clock, _, _, _ = make(profiler=prof, total_epochs=8, profile_min_s=5.0)
    tuner.start()  # the worker is stuck attaching perf...
    t0 = clock()
    tuner.epoch_start(0)
    clock.advance(3.0)  # ...while epoch 0 trains
    tuner.epoch_end(0, 10)
    tuner.epoch_start(1)
    gate.set()  # perf counts from t0 + 3
    assert tuner.wait_idle()
    assert profile_calls(prof) == []  # epoch 0 had no sampled second
    clock.advance(10.0)
    tuner.epoch_end(1, 10)
    assert tuner.wait_idle()
    (start, end, epoch, _), = profile_calls(prof)
    assert (start, end, epoch) == (t0 + 3.0, t0 + 13.0, 1)
    tuner.close()


def test_boundaries_queued_behind_the_profiler_start_still_get_a_profile_and_probes():
    gate = threading.Event()
    prof = FakeProfiler(RATES_A, start_gate=gate)
    tuner, clock, _, _, _ = make(profiler=prof, total_epochs=6, profile_min_s=0.5)
    tuner.start()
    t0 = clock()
    for e in (0, 1):  # two epochs train before perf counts
        tuner.epoch_start(e)
        clock.advance(2.0)
        tuner.epoch_end(e, 10)
    tuner.epoch_start(2)
    clock.advance(1.0)
    gate.set()  # counts from t0 + 5, after both queued epochs ended
    assert tuner.wait_idle()
    # the training has finished 2 epochs: the profile cannot wait, and no sample
    # covers epoch 0, so the window runs on to now and waits for one
    (start, end, epoch, _), = profile_calls(prof)
    assert (start, end, epoch) == (t0 + 5.0, t0 + 5.0, 0)
    assert prof.waits[-1] > 0
    assert kinds(tuner) == [P] and tuner.config == C1
    reason = tuner.decisions[0].reason
    assert "ran on 3.00 s past epoch 0's end" in reason and "to leave 4 epoch(s)" in reason
    clock.advance(2.0)
    tuner.epoch_end(2, 10)  # 1c was in force for half of it: not counted
    assert tuner.wait_idle()
    train(tuner, clock, range(3, 6), seconds_per_step=speed({C1: 0.5, C2: 1.0}))
    assert kinds(tuner) == [P, P, S] and tuner.config == C1
    tuner.close()


def test_an_empty_profile_is_said_never_matched_and_never_learned(tmp_path):
    recs = [GroundTruthRecord({k: v * (1 + 0.02 * i) for k, v in RATES_A.items()}, C1,
                              "runtime", 0.5, "a") for i in range(3)]
    path = save_model(fit_groundtruth(recs), tmp_path / "gt.json")
    tuner, clock, _, _, store = make(profiler=FakeProfiler({}), groundtruth=str(path),
                                     total_epochs=6)
    tuner.start()
    train(tuner, clock, range(6), seconds_per_step=speed({C1: 0.5, C2: 1.0}))
    assert kinds(tuner) == [P, P, S]
    assert "profile empty" in tuner.decisions[0].reason
    assert "no ground-truth record" in tuner.decisions[-1].reason
    assert store.groundtruth == []


def test_the_probe_is_applied_before_the_profiler_stops():
    clock = FakeClock()
    ctl = FakeController(clock)
    applied_at_stop: list = []
    prof = FakeProfiler(RATES_A, on_stop=lambda: applied_at_stop.append(list(ctl.applied)))
    tuner, clock, _, _, _ = make(clock=clock, controller=ctl, profiler=prof, total_epochs=6)
    tuner.start()
    train(tuner, clock, range(2))
    assert applied_at_stop == [[C2, C1]]
    tuner.close()
