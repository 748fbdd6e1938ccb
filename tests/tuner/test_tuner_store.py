"""The tuner against a real SQLite store (fakes only for perf and cgroups):
decisions, epochs and the ground-truth record land in the store, and a model
retrained from that store makes the next trial of the workload match."""

from __future__ import annotations

import pytest
from tuner_fakes import C1, C2, RATES_A, RATES_B, FakeClock, kinds, make, speed, train

from pipetune.groundtruth import load_model, records_from_frame, retrain
from pipetune.store import RATE_PREFIX, open_store
from pipetune.types import DecisionKind


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/pipetune.db", spool_root=tmp_path / "spool")
    yield s
    s.close()


def run(store, trial, rates, model, epochs=5, *, start_s):
    # Each trial its own time: the store keys points by (tags, time).
    tuner, clock, _, _, _ = make(rates=rates, store=store, groundtruth=model, trial=trial,
                                 total_epochs=epochs, clock=FakeClock(start_s))
    tuner.start()
    train(tuner, clock, range(epochs), seconds_per_step=speed({C1: 0.5, C2: 1.0}))
    tuner.close()
    assert store.flush()
    return tuner


def test_records_in_the_store_and_the_second_trial_matches(store, tmp_path):
    model_path = tmp_path / "gt.json"
    # two workloads, two trials each would be the usual history; one each here
    first = run(store, "a1", RATES_A, model_path, start_s=1e6)
    assert kinds(first) == [DecisionKind.PROBE, DecisionKind.PROBE, DecisionKind.SETTLED]
    dec = store.decisions("job1", "a1")
    assert list(dec["kind"]) == ["probe", "probe", "settled"]
    assert dec.iloc[-1]["config"] == str(C1) and dec.iloc[-1]["objective"] == "runtime"
    assert "2c/-m/0g" in dec.iloc[-1]["candidates"]
    ep = store.epochs("job1", "a1")
    assert sorted(ep["epoch"].astype(int)) == [0, 1, 2, 3, 4]
    prof_row = ep[ep["epoch"] == "0"].iloc[0]
    assert prof_row["phase"] == "profiling" and prof_row[RATE_PREFIX + "task-clock"] == 1900.0
    gt = store.groundtruth_records()
    assert len(gt) == 1 and gt.iloc[0]["config"] == str(C1)
    assert gt.iloc[0]["workload"] == "wl" and gt.iloc[0]["value"] == pytest.approx(0.5)

    run(store, "b1", RATES_B, model_path, start_s=2e6)  # a second, different workload probes too
    model = retrain(store, model_path)
    assert model.n_clusters == 2 and load_model(model_path).n_clusters == 2

    again = run(store, "a2", {k: v * 1.1 for k, v in RATES_A.items()}, model_path,
                start_s=3e6)
    assert kinds(again) == [DecisionKind.MATCHED]
    assert again.decisions[0].config == C1
    assert list(store.decisions("job1", "a2")["kind"]) == ["matched"]
    # a match casts no vote, but its profile is kept as an observation
    gt = store.groundtruth_records()
    assert len(gt) == 3
    obs = gt[gt["trial"] == "a2"].iloc[0]
    assert obs["probed"] == 0.0 and obs["config"] == str(C1)
    recs = records_from_frame(gt)
    assert [r.probed for r in recs] == [True, True, False]
    refit = retrain(store, model_path)
    (cl,) = [c for c in refit.clusters if "wl" in c.workloads and c.size == 2]
    assert cl.votes == {str(C1): 1}  # only the probe winner voted


class CountingEnergy:
    """A trial energy source: 2 J per read, labelled like this host's meter."""

    def __init__(self):
        self.reads = 0

    def interval(self):
        self.reads += 1
        return 2.0, "estimated"


def test_epoch_records_carry_the_trials_energy_and_its_method(store):
    energy = CountingEnergy()
    tuner, clock, _, _, _ = make(rates=RATES_A, store=store, trial="e1", total_epochs=3,
                                 energy=energy, clock=FakeClock(5e6))
    tuner.start()
    train(tuner, clock, range(3), seconds_per_step=speed({C1: 0.5, C2: 1.0}))
    tuner.close()
    assert store.flush()
    ep = store.epochs("job1", "e1")
    assert len(ep) == 3 and set(ep["energy_method"]) == {"estimated"}
    # every joule read while the trial trained is in exactly one epoch record
    assert ep["energy_j"].sum() == pytest.approx(2.0 * energy.reads)
    assert (ep["energy_j"] > 0).all()
