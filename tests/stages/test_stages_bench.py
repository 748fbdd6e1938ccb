"""The pure helpers of benchmarks/stages.py (not the Tune jobs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_stages", ROOT / "benchmarks" / "stages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grids_are_the_documented_sizes(bench: ModuleType) -> None:
    assert [len(bench.grid(True)[0]), bench.grid(True)[1]] == [16, 8]
    assert [len(bench.grid(False)[0]), bench.grid(False)[1]] == [36, 12]


def test_compare_finds_the_largest_difference_and_skips_pruned_trials(bench: ModuleType) -> None:
    def job(*finals: float) -> dict:
        return {"per_trial": {
            f"t{i}": [{"accuracy": 0.5, "loss": 1.0, "test_loss": 1.0},
                      {"accuracy": f, "loss": 1.0, "test_loss": 1.0}]
            for i, f in enumerate(finals)
        }}

    a, b = job(0.8, 0.5), job(0.8, 0.6)
    final, every, compared = bench.compare(a, b)
    assert compared == 2 and final == pytest.approx(0.2) and every == pytest.approx(0.2)
    b["per_trial"]["t1"] = b["per_trial"]["t1"][:1]  # stopped early: not comparable
    assert bench.compare(a, b) == (0.0, 0.0, 1)
    assert bench.rel_diff(0.0, 0.1) == 0.1
