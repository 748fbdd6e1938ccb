"""The pure helpers of benchmarks/tuning.py and benchmarks/costs.py (not the long runs)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" /
                                                  f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tuning() -> ModuleType:
    return _load("tuning")


@pytest.fixture(scope="module")
def costs() -> ModuleType:
    return _load("costs")


def test_rotation_gives_every_mode_every_position(tuning: ModuleType) -> None:
    modes = ("v1", "v2", "pipetune")
    orders = [tuning.rotation(modes, r) for r in range(3)]
    assert orders[0] == ["v1", "v2", "pipetune"]
    assert orders[1] == ["v2", "pipetune", "v1"]
    for pos in range(3):
        assert {o[pos] for o in orders} == set(modes)
    assert tuning.rotation(modes, 4) == orders[1]


def test_search_epochs_counts_until_the_first_final_decision(tuning: ModuleType) -> None:
    decisions = [
        {"trial": "a", "kind": "probe", "epoch": 0},
        {"trial": "a", "kind": "probe", "epoch": 1},
        {"trial": "a", "kind": "settled", "epoch": 2},  # epochs 0, 1, 2 spent searching
        {"trial": "b", "kind": "matched", "epoch": 0},  # profiled one epoch, then matched
        {"trial": "c", "kind": "probe", "epoch": 0},  # never settled: all 4 epochs
        {"trial": "d", "kind": "fixed", "epoch": 0},  # a baseline: nothing searched
    ]
    epochs = {"a": 5, "b": 5, "c": 4, "d": 5}
    assert tuning.search_epochs(decisions, epochs) == 3 + 1 + 4 + 0
    # a settle decision after the trial's last epoch cannot count more than it ran
    assert tuning.search_epochs([{"trial": "a", "kind": "settled", "epoch": 9}], {"a": 3}) == 3
    assert tuning.search_epochs([], {"x": 2}) == 2


def test_integrate_power_is_trapezoids_in_time_order(tuning: ModuleType) -> None:
    assert tuning.integrate_power_j([2.0, 0.0, 1.0], [10.0, 10.0, 20.0]) == pytest.approx(30.0)
    assert tuning.integrate_power_j([5.0], [100.0]) == 0.0


def test_summary_ratios_and_table(tuning: ModuleType) -> None:
    runs = [
        {"mode": "v1", "accuracy": 0.9, "tuning_s": 100.0, "best_train_s": 20.0,
         "energy_j": 1000.0, "search_epochs": 0, "energy_method": "m"},
        {"mode": "v1", "accuracy": 0.8, "tuning_s": 120.0, "best_train_s": 30.0,
         "energy_j": 1200.0, "search_epochs": 0, "energy_method": "m"},
        {"mode": "pipetune", "accuracy": 0.85, "tuning_s": 88.0, "best_train_s": 20.0,
         "energy_j": None, "search_epochs": 6, "energy_method": "m"},
    ]
    s = tuning.summarize(runs)
    assert s["v1"]["tuning_s"] == pytest.approx(110.0) and s["v1"]["runs"] == 2
    assert s["pipetune"]["energy_j"] is None
    r = tuning.ratios(s, "pipetune", "v1")
    assert r["tuning_s"] == pytest.approx(0.8)
    assert r["best_train_s"] == pytest.approx(0.8)
    assert r["accuracy"] == pytest.approx(1.0)
    assert r["energy_j"] is None  # one side unknown
    assert r["search_epochs"] is None  # V1 searched 0 epochs: no ratio
    table = tuning.format_table(s, {"pipetune/v1": r})
    lines = table.splitlines()
    assert lines[2].split()[:3] == ["v1", "2", "0.8500"]
    assert lines[-1].split()[:3] == ["pipetune/v1", "1.000", "0.800"]


def test_percentile_nearest_rank(costs: ModuleType) -> None:
    xs = list(range(1, 101))
    assert costs.percentile(xs, 50) == 50
    assert costs.percentile(xs, 99) == 99
    assert costs.percentile(xs, 100) == 100
    assert math.isnan(costs.percentile([], 50))


def test_synthetic_records_cycle_workloads_and_keep_real_events(costs: ModuleType) -> None:
    shapes = [{"task-clock": 900.0, "context-switches": 50.0, "only-here": 1.0},
              {"task-clock": 1800.0, "context-switches": 10.0}]
    recs = costs.synthetic_records(shapes, 10, workloads=3, seed=0)
    assert [r.workload for r in recs[:4]] == ["w0", "w1", "w2", "w0"]
    assert set(recs[0].rates) == {"task-clock", "context-switches"}  # events all shapes have
    assert all(v > 0 for r in recs for v in r.rates.values())
    # same workload, same winner; records differ by noise
    assert recs[0].config == recs[3].config and recs[0].rates != recs[3].rates


@pytest.fixture(scope="module")
def multitenant() -> ModuleType:
    return _load("multitenant")


def test_fifo_queue_waits_for_the_previous_job(multitenant: ModuleType) -> None:
    # job 0 at 0 runs 10 s; job 1 arrives at 5, waits 5, runs 10: responds after 15;
    # job 2 arrives at 30 to an idle server.
    assert multitenant.fifo_response_s([0.0, 5.0, 30.0], [10.0, 10.0, 2.0]) == [10.0, 15.0, 2.0]
    assert multitenant.p95([float(x) for x in range(1, 21)]) == 19.0


def test_arrivals_and_plan_are_seeded(multitenant: ModuleType) -> None:
    a = multitenant.arrivals(5, 30.0, seed=1)
    assert a[0] == 0.0 and all(b > c for b, c in zip(a[1:], a, strict=False))
    assert a == multitenant.arrivals(5, 30.0, seed=1)
    plan = multitenant.job_plan(10, ["s1", "s2"], ["u"], 0.2, seed=0)
    assert sum(u for _, u in plan) == 2 and not plan[0][1]
    assert [w for w, u in plan if not u][:3] == ["s1", "s2", "s1"]
    assert all(w == "u" for w, u in plan if u)


def test_parallel_tune_table_compares_auto_with_the_best_fixed_strategy() -> None:
    parallel = _load("parallel")

    def row(strategy: str, tuning_s: float, acc: float, chosen: str | None = None) -> dict:
        return {"strategy": strategy, "workers": 2, "threads_per_rank": 1, "epoch_s": 2.0,
                "tuning_s": tuning_s, "final_losses": [1.0], "rank_rss_peak_mb": [],
                "accuracy": [acc], "chosen": [chosen or strategy]}

    text = parallel.tune_table([row("single", 100.0, 0.9), row("ddp", 80.0, 0.91),
                                row("auto", 92.0, 0.91, chosen="ddp")])
    assert "auto->ddp" in text
    # the best fixed strategy is ddp (80 s), not the single process
    assert "auto / best fixed (ddp): tuning time 1.15x; best accuracy 0.9100 vs 0.9100" in text
