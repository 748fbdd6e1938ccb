"""Ground truth: features, fit, match, similarity, persistence and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from pipetune.errors import ConfigError, GroundTruthError
from pipetune.groundtruth import (
    ClusterGroundTruth,
    EmptyGroundTruth,
    FeatureScaler,
    GroundTruthRecord,
    check_threshold,
    cluster_labels,
    fit_groundtruth,
    load_model,
    load_or_empty,
    records_from_frame,
    save_model,
    similarity,
)
from pipetune.groundtruth.persist import SCHEMA_VERSION
from pipetune.store import open_store
from pipetune.types import EpochProfile, SystemConfig

EVENTS = ["task-clock", "context-switches", "cpu-migrations", "page-faults",
          "sched:sched_wakeup", "syscalls:sys_enter_read", "rss_mb", "threads"]


def workloads(n_workloads=4, runs=4, noise=0.05, seed=0):
    """Synthetic profiles: each workload a base rate vector, runs jittered by
    ``noise`` (log units) — like repeated runs of the same training job."""
    rng = np.random.default_rng(seed)
    recs = []
    for w in range(n_workloads):
        base = np.exp(rng.uniform(1, 9, len(EVENTS)))
        for r in range(runs):
            rates = {e: float(b * math.exp(rng.normal(0, noise)))
                     for e, b in zip(EVENTS, base, strict=True)}
            recs.append(GroundTruthRecord(rates, SystemConfig(1 + w % 2), "runtime",
                                          1.0 + 0.1 * r, f"w{w}"))
    return recs


def test_fit_finds_the_workloads_and_maps_each_to_its_winner():
    recs = workloads()
    model = fit_groundtruth(recs)
    assert model.n_clusters == 4
    labels = cluster_labels(model, recs)
    assert adjusted_rand_score([r.workload for r in recs], labels) == pytest.approx(1.0)
    for c in model.clusters:
        (wl, n), = c.workloads.items()
        assert n == 4 and c.config == SystemConfig(1 + int(wl[1:]) % 2)
        assert c.value == pytest.approx(1.15)
    assert model.silhouette > 0.5


def test_a_new_run_of_a_known_workload_matches_and_a_new_workload_does_not():
    recs = workloads(seed=1)
    model = fit_groundtruth(recs[:-1])  # the last run of w3 is held out
    m = model.match(EpochProfile(recs[-1].rates, 0.0, 10.0, 10))
    assert m.accepted(0.8) and m.workloads == {"w3": 3} and m.config == recs[-1].config
    other = workloads(n_workloads=1, seed=99)[0]
    m2 = model.match(other.rates)
    assert m2.score < 0.2 and not m2.accepted(0.8)
    assert "nearest cluster" in m2.reason


def test_features_are_per_cpu_second():
    # The same workload given twice the cores has twice the rates but the
    # same events per CPU-second (and the same RSS): it must match.
    recs = workloads(seed=2)
    model = fit_groundtruth(recs)
    doubled = {e: v * (1 if e in ("rss_mb", "threads") else 2) for e, v in recs[0].rates.items()}
    m = model.match(doubled)
    assert m.workloads == {recs[0].workload: 4} and m.score > 0.5
    scaler = model.scaler
    assert scaler.cpu_event == "task-clock" and set(scaler.levels) == {"rss_mb", "threads"}


def test_only_events_both_sides_have_are_compared():
    recs = workloads(seed=3)
    extra = [GroundTruthRecord({**r.rates, "only-here": 5.0}, r.config, r.objective, r.value,
                               r.workload) for r in recs[:3]] + recs[3:]
    model = fit_groundtruth(extra)
    assert "only-here" not in model.scaler.events
    partial = {k: v for k, v in recs[0].rates.items() if k != "cpu-migrations"}
    m = model.match(partial)
    assert m.events_used == len(EVENTS) - 1 and m.workloads == {recs[0].workload: 4}
    few = {k: recs[0].rates[k] for k in EVENTS[:2]}
    m2 = model.match(few)
    assert m2.score == 0.0 and m2.cluster is None and "shares 2 of" in m2.reason


def test_similarity_is_calibrated_per_cluster():
    assert similarity(0.0, 1.0) == 1.0
    assert similarity(2.0, 1.0) == pytest.approx(0.8)
    assert similarity(1.0, 1.0) > similarity(2.0, 1.0) > similarity(4.0, 1.0) > 0
    # the same distance is a better match for a loose cluster than a tight one
    assert similarity(1.0, 2.0) > similarity(1.0, 0.5)
    assert similarity(math.inf, 1.0) == 0.0
    # radii come from the data: a noisier workload gets a larger radius
    rng = np.random.default_rng(4)
    recs = []
    for w, noise in (("tight", 0.02), ("loose", 0.6)):
        base = np.exp(rng.uniform(1, 9, len(EVENTS)))
        for _ in range(6):
            recs.append(GroundTruthRecord(
                {e: float(b * math.exp(rng.normal(0, noise)))
                 for e, b in zip(EVENTS, base, strict=True)},
                SystemConfig(1), workload=w, value=1.0))
    model = fit_groundtruth(recs)
    radius = {}
    for c in sorted(model.clusters, key=lambda c: c.size):  # the biggest cluster of each
        radius[next(iter(c.workloads))] = c.radius
    assert radius["loose"] > 1.3 * radius["tight"]


def test_k_fixed_and_any_sklearn_clusterer_by_name():
    recs = workloads(seed=5)
    assert fit_groundtruth(recs, k=2).n_clusters == 2
    assert fit_groundtruth(recs, k="4").n_clusters == 4
    for name in ("agglomerative", "GaussianMixture", "Birch", "KMeans"):
        model = fit_groundtruth(recs, clusterer=name)
        labels = cluster_labels(model, recs)
        assert adjusted_rand_score([r.workload for r in recs], labels) > 0.9, name
        assert model.clusterer == name
    model = fit_groundtruth(recs, clusterer="DBSCAN")  # finds k itself
    assert model.n_clusters >= 1


def test_one_workload_is_one_cluster_and_one_record_still_matches():
    recs = workloads(n_workloads=1, runs=5, seed=6)
    assert fit_groundtruth(recs).n_clusters == 1
    one = fit_groundtruth(recs[:1])
    assert one.n_clusters == 1 and one.match(recs[1].rates).accepted(0.8)


def test_bad_input_gives_clear_errors():
    recs = workloads()
    with pytest.raises(ConfigError, match="clusterer 'nosuch': unknown"):
        fit_groundtruth(recs, clusterer="nosuch")
    with pytest.raises(ConfigError, match="larger than the 16 records"):
        fit_groundtruth(recs, k=17)
    with pytest.raises(ConfigError, match="positive integer"):
        fit_groundtruth(recs, k=0)
    with pytest.raises(ConfigError, match="positive integer"):
        fit_groundtruth(recs, k="many")
    with pytest.raises(ConfigError, match="finds the number of clusters itself"):
        fit_groundtruth(recs, k=3, clusterer="dbscan")
    with pytest.raises(GroundTruthError, match="no ground-truth records"):
        fit_groundtruth([])
    with pytest.raises(GroundTruthError, match="no ground-truth records for objective 'energy'"):
        fit_groundtruth(recs, objective="energy")
    with pytest.raises(GroundTruthError, match="share no event"):
        fit_groundtruth([GroundTruthRecord({"a": 1.0}, SystemConfig(1)),
                         GroundTruthRecord({"b": 1.0}, SystemConfig(1))])
    mixed = recs + [GroundTruthRecord(recs[0].rates, SystemConfig(1), "energy", 1.0)]
    with pytest.raises(GroundTruthError, match="several objectives"):
        fit_groundtruth(mixed)
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ConfigError, match="threshold"):
            check_threshold(bad)
    assert check_threshold(0) == 0.0 and check_threshold(1) == 1.0
    m = fit_groundtruth(recs).match(recs[0].rates)
    with pytest.raises(ConfigError):
        m.accepted(2.0)


def test_persistence_round_trip_is_json_and_atomic(tmp_path):
    recs = workloads(seed=7)
    model = fit_groundtruth(recs)
    path = save_model(model, tmp_path / "sub" / "gt.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "pipetune-groundtruth" and doc["schema_version"] == SCHEMA_VERSION
    assert not list(path.parent.glob(".*.tmp"))  # no temp file left behind
    again = load_model(path)
    assert isinstance(again, ClusterGroundTruth)
    for r in recs:
        a, b = model.match(r.rates), again.match(r.rates)
        assert (a.cluster, a.config) == (b.cluster, b.config)
        assert a.score == pytest.approx(b.score)
    assert again.describe() == model.describe()
    # overwriting keeps a complete file at every moment (same path, new content)
    save_model(fit_groundtruth(recs, k=2), path)
    assert load_model(path).n_clusters == 2


def test_corrupt_newer_and_missing_files(tmp_path):
    path = tmp_path / "gt.json"
    save_model(fit_groundtruth(workloads()), path)
    doc = json.loads(path.read_text())

    path.write_text(path.read_text()[:200])
    with pytest.raises(GroundTruthError, match="corrupt \\(not JSON"):
        load_model(path)
    newer = dict(doc, schema_version=SCHEMA_VERSION + 1)
    path.write_text(json.dumps(newer))
    with pytest.raises(GroundTruthError, match="newer than this pipetune"):
        load_model(path)
    broken = dict(doc)
    broken["model"] = {k: v for k, v in doc["model"].items() if k != "clusters"}
    path.write_text(json.dumps(broken))
    with pytest.raises(GroundTruthError, match="corrupt \\(missing 'clusters'"):
        load_model(path)
    wrong_dim = json.loads(json.dumps(doc))
    wrong_dim["model"]["clusters"][0]["centroid"] = [0.0]
    path.write_text(json.dumps(wrong_dim))
    with pytest.raises(GroundTruthError, match="corrupt"):
        load_model(path)
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(GroundTruthError, match="not a pipetune ground-truth model"):
        load_model(path)
    with pytest.raises(GroundTruthError, match="no such file"):
        load_model(tmp_path / "missing.json")
    # the tuner's warm start turns each of these into "probe, and say why"
    model, why = load_or_empty(path)
    assert isinstance(model, EmptyGroundTruth) and "not a pipetune" in why
    assert model.match({"a": 1.0}).score == 0.0
    model, why = load_or_empty(tmp_path / "missing.json")
    assert isinstance(model, EmptyGroundTruth) and "no model" in why


def test_old_version_file_stays_readable(tmp_path):
    # A hand-written schema-1 file (the format as first shipped).
    doc = {
        "format": "pipetune-groundtruth", "schema_version": 1, "created": "2026-11-22T00:00:00Z",
        "model": {
            "objective": "runtime", "clusterer": "kmeans", "silhouette": None, "n_records": 1,
            "features": {"events": ["a", "task-clock"], "cpu_event": "task-clock", "levels": [],
                         "mean": [1.0, 2.0], "std": [0.5, 0.5]},
            "clusters": [{"centroid": [0.0, 0.0], "radius": 0.3, "size": 1,
                          "config": "2c/-m/0g", "value": 1.5}],
        },
    }
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(doc))
    model = load_model(path)
    assert model.clusters[0].config == SystemConfig(2)


def test_records_from_a_real_store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/s.db", spool_root=tmp_path / "spool")
    try:
        for i, r in enumerate(workloads(n_workloads=2, runs=2)):
            store.write_groundtruth(workload=r.workload, profile=EpochProfile(r.rates, 0, 1, 1),
                                    config=r.config, objective="runtime", value=r.value,
                                    time_s=1000.0 + i)
        store.write_groundtruth(workload="e", profile=EpochProfile({"a": 1.0}, 0, 1, 1),
                                config=SystemConfig(1), objective="energy", value=3.0,
                                time_s=2000.0)
        assert store.flush()
        recs = records_from_frame(store.groundtruth_records(), "runtime")
    finally:
        store.close()
    assert len(recs) == 4
    assert {r.workload for r in recs} == {"w0", "w1"}
    assert set(recs[0].rates) == set(EVENTS)
    assert recs[0].config == SystemConfig(1) and recs[0].value == pytest.approx(1.0)


def test_scaler_drops_constant_events_and_floors_the_spread():
    s = FeatureScaler.fit([{"a": 10.0, "b": 5.0}, {"a": 10.0, "b": 50.0}], min_std=0.25)
    assert s.events == ("b",)  # "a" never changed: it cannot tell workloads apart
    one = FeatureScaler.fit([{"a": 10.0, "b": 5.0}], min_std=0.25)
    assert one.events == ("a", "b") and one.std == (0.25, 0.25)
    z, mask = one.transform({"a": 10.0 * math.e, "b": 5.0})
    assert mask.all() and 2 < z[0] < 5 and z[1] == 0


def test_scaler_uses_within_workload_spread_when_names_are_known():
    # "noisy" varies a lot between runs of the same workload, "clean" only
    # between workloads: scaled by their own run-to-run noise, clean counts more.
    rates = [{"noisy": n, "clean": c} for n, c in
             ((10, 100), (1000, 110), (12, 5000), (900, 5100))]
    labels = ["x", "x", "y", "y"]
    within = FeatureScaler.fit(rates, labels=labels)
    overall = FeatureScaler.fit(rates)
    i_noisy, i_clean = within.events.index("noisy"), within.events.index("clean")
    assert within.std[i_noisy] > 5 * within.std[i_clean]
    assert overall.std[i_noisy] < 2 * overall.std[i_clean]
    with pytest.raises(GroundTruthError, match="labels for"):
        FeatureScaler.fit(rates, labels=["x"])


def test_weights_follow_how_well_a_feature_separates_the_workloads():
    # "signal" differs between workloads far beyond its run-to-run noise,
    # "load" (a context-switch-like rate) varies as much within as between.
    rng = np.random.default_rng(1)
    rates, labels = [], []
    for w, base in enumerate((10.0, 300.0, 9000.0)):
        for _ in range(4):
            rates.append({"signal": base * math.exp(rng.normal(0, 0.05)),
                          "load": 100.0 * math.exp(rng.normal(0, 1.0))})
            labels.append(f"w{w}")
    s = FeatureScaler.fit(rates, labels=labels)
    w = dict(zip(s.events, s.weights, strict=True))
    assert w["signal"] > 1.0 > w["load"]
    assert np.mean(s.weights**2) == pytest.approx(1.0)
    # Without names there is nothing to learn from: all features count alike.
    assert (FeatureScaler.fit(rates).weights == 1).all()
    assert (FeatureScaler.fit(rates, labels=labels, weighted=False).weights == 1).all()


def test_weights_survive_the_model_file_and_old_files_stay_trimmed(tmp_path):
    model = fit_groundtruth(workloads())
    assert model.scaler.weight and not model.trim
    path = save_model(model, tmp_path / "m.json")
    back = load_model(path)
    assert back.scaler.weight == model.scaler.weight and back.trim is False
    probe = workloads(seed=0)[5].rates
    assert back.match(probe).score == pytest.approx(model.match(probe).score)
    doc = json.loads(path.read_text())
    doc["model"]["features"]["weight"] = [-1.0] * len(back.scaler.events)
    path.write_text(json.dumps(doc))
    with pytest.raises(GroundTruthError, match="weight"):
        load_model(path)


# Real profiles of the bundled workloads recorded on this VM (perf software
# events + tracepoints, no PMU; benchmarks/profile_separation.py --save):
# 8 workloads of the paper's three types x 3 runs, on a quiet host.
RECORDED = (Path(__file__).parents[2] / "benchmarks" / "data" / "profiles"
            / "bundled-quiet-1.json")


def recorded_records() -> tuple[list[GroundTruthRecord], dict[str, str]]:
    doc = json.loads(RECORDED.read_text())
    recs = [GroundTruthRecord(r["rates"], SystemConfig(1), "runtime", 1.0, r["workload"])
            for r in doc["runs"]]
    return recs, {r["workload"]: r["kind"] for r in doc["runs"]}


def test_recorded_profiles_cluster_by_workload_and_never_mix_types():
    from sklearn.metrics import completeness_score, homogeneity_score

    recs, kind = recorded_records()
    model = fit_groundtruth(recs)  # k=auto
    labels = cluster_labels(model, recs)
    wl = [r.workload for r in recs]
    assert model.n_clusters >= 3
    assert homogeneity_score([kind[w] for w in wl], labels) == pytest.approx(1.0)
    assert completeness_score(wl, labels) == pytest.approx(1.0)  # no workload split
    assert adjusted_rand_score(wl, labels) > 0.6


def test_recorded_profiles_a_held_out_run_matches_and_an_unseen_type_does_not():
    recs, kind = recorded_records()
    matched = 0
    for i, r in enumerate(recs):
        m = fit_groundtruth(recs[:i] + recs[i + 1:]).match(r.rates)
        assert r.workload in m.workloads
        matched += m.score >= 0.8
    assert matched >= 0.8 * len(recs)
    for w in sorted(set(kind)):
        model = fit_groundtruth([r for r in recs if r.workload != w])
        for r in recs:
            if r.workload == w:
                m = model.match(r.rates)
                # Matching a workload of the same type (LeNet-5 on MNIST vs its
                # stand-in digits) may reuse a fitting config; another type's never.
                assert m.score < 0.8 or {kind[x] for x in m.workloads} == {kind[w]}, (w, m)


def test_observations_shape_the_clusters_but_only_probe_winners_vote():
    recs = workloads(n_workloads=2, runs=4)
    # w0: one probed winner (1c) and three matched trials that ran 2c;
    # w1: observations only — nobody has compared configs there yet.
    mixed = [r if (r.workload == "w0" and i == 0) else
             GroundTruthRecord(r.rates, SystemConfig(2), r.objective, math.nan, r.workload,
                               probed=False)
             for i, r in enumerate(recs)]
    model = fit_groundtruth(mixed)
    assert model.n_clusters == 2
    by_wl = {next(iter(c.workloads)): c for c in model.clusters}
    assert by_wl["w0"].config == SystemConfig(1) and by_wl["w0"].votes == {"1c/-m/0g": 1}
    assert by_wl["w1"].config is None and by_wl["w1"].votes == {}
    m = model.match(recs[5].rates)  # a w1 run: close, but no config to reuse
    assert m.score >= 0.8 and m.config is None and not m.accepted(0.8)


def test_a_probed_strategy_round_trips_through_the_ground_truth(tmp_path):
    # --parallel auto: the winner's config names its strategy; a matched trial
    # of the cluster gets it back (and restarts its group into it).
    recs = [GroundTruthRecord(r.rates, SystemConfig(r.config.cores, parallel="ddp"), r.objective,
                              r.value, r.workload) for r in workloads(seed=3)]
    again = load_model(save_model(fit_groundtruth(recs), tmp_path / "gt.json"))
    m = again.match(EpochProfile(recs[0].rates, 0.0, 10.0, 10))
    assert m.config is not None and m.config.parallel == "ddp"
    assert str(m.config).endswith("/ddp")
