"""benchmarks/parallel.py: a real single-process row goes through the table, JSON and PNG."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_parallel", ROOT / "benchmarks" /
                                                  "parallel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_json_and_png_from_a_real_run(bench, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert bench.main(["--epochs", "2", "--samples", "128", "--workloads", "lenet5-mnist",
                       "--strategies", "none/1t", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lenet5-mnist" in printed and "none 1t" in printed and "params" in printed
    data = json.loads((out / "parallel.json").read_text())
    (row,) = data["rows"]
    assert row["threads"] == 1 and len(row["epoch_seconds"]) == 2
    assert row["device"] == "cpu" and data["args"]["device"] == "auto"
    assert data["host"]["cuda_devices"] == []  # this host: no GPU
    assert "cuda max" not in printed  # the column appears only when a rank ran on CUDA
    (part,) = row["partitions"]
    assert part["device"] == "cpu"
    assert part["total_mb"] == pytest.approx(part["params_mb"] + part["grads_mb"]
                                             + part["optimizer_mb"] + part["activations_mb"])
    assert part["activations_mb"] > part["params_mb"] > 0
    png = (out / "parallel.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_table_shows_each_ranks_cuda_peak_when_there_is_one(bench) -> None:
    """Formatting only: the numbers of a CUDA run (which this host cannot make) go in a column."""
    part = {"params_mb": 0.2, "grads_mb": 0.2, "optimizer_mb": 0.2, "activations_mb": 1.0,
            "total_mb": 1.6, "rss_peak_mb": 900.0}
    row = {"workload": "lenet5-mnist", "strategy": "mp", "config": "mp x2 8t", "epoch_s": 1.0,
           "loss": 2.0, "accuracy": 0.5, "device": "cuda",
           "partitions": [{**part, "device": "cuda:0", "cuda_max_allocated_mb": 12.5},
                          {**part, "device": "cuda:1", "cuda_max_allocated_mb": 7.25}]}
    lines = bench.table([row]).splitlines()
    assert "cuda max" in lines[0]
    assert lines[2].split()[-3:] == ["1.600", "900.0", "12.50"] and "cuda:0" in lines[2]
    assert lines[3].split()[-3:] == ["1.600", "900.0", "7.25"] and "cuda:1" in lines[3]


def test_tune_table_sets_each_strategy_beside_the_single_process(bench) -> None:
    def row(strategy: str, workers: int, threads: int, epoch_s: float, losses: list[float],
            rss: list[float]) -> dict:
        return {"strategy": strategy, "workers": workers, "threads_per_rank": threads,
                "epoch_s": epoch_s, "tuning_s": 10 * epoch_s, "final_losses": losses,
                "rank_rss_peak_mb": rss}

    text = bench.tune_table([row("single", 1, 2, 1.0, [0.50, 0.40], []),
                             row("ddp", 2, 1, 1.5, [0.505, 0.40], [400, 401])])
    lines = text.splitlines()
    assert lines[2].startswith("single 2t") and "1.00" in lines[2]
    assert lines[3].startswith("ddp 2x1t") and " 1.50 " in lines[3] and "1.00%" in lines[3]
    assert lines[3].endswith("400, 401")


def test_tune_table_sets_auto_beside_the_best_fixed_and_its_own_mode(bench) -> None:
    def row(strategy: str, mode: str, tuning_s: float, accuracy: list[float]) -> dict:
        return {"strategy": strategy, "mode": mode, "workers": 1, "threads_per_rank": 2,
                "epoch_s": 1.0, "tuning_s": tuning_s, "final_losses": [0.5],
                "rank_rss_peak_mb": [], "chosen": ["none"], "accuracy": accuracy}

    text = bench.tune_table([row("single", "v1", 60.0, [0.9]),
                             row("auto", "pipetune", 72.0, [0.9]),
                             row("none", "pipetune", 64.0, [0.9])])
    assert "none 2t pipetune" in text
    assert "auto / best fixed (single): tuning time 1.20x" in text
    assert "auto / none in mode pipetune (the same tuner, the strategy known): tuning time " \
           "1.12x" in text
