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
    (part,) = row["partitions"]
    assert part["total_mb"] == pytest.approx(part["params_mb"] + part["grads_mb"]
                                             + part["optimizer_mb"] + part["activations_mb"])
    assert part["activations_mb"] > part["params_mb"] > 0
    png = (out / "parallel.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
