"""benchmarks/bundled_profiles.py: the JSON round trip and one real profiled bundled child."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bundled_profiles as bp  # noqa: E402


def test_runs_round_trip_and_old_format(tmp_path: Path) -> None:
    runs = [bp.Run("jacobi", "III", {"task-clock": 812.5, "proc.rss_mb": 40.0}, startup_s=1.5,
                   window_s=4.0),
            bp.Run("lenet5-mnist", "I", {"task-clock": 990.0}, ready=False)]
    path = bp.save_runs(tmp_path / "sub" / "p.json", runs, {"runs": 1})
    assert json.loads(path.read_text())["meta"] == {"runs": 1}
    assert bp.load_runs(path) == runs
    # the older plain list groundtruth_ari.py --save wrote: the type comes from `kinds`
    old = tmp_path / "old.json"
    old.write_text(json.dumps([{"workload": "bfs", "rates": {"task-clock": 5}},
                               {"workload": "mystery", "rates": {}}]))
    loaded = bp.load_runs(old, kinds={"bfs": "III"})
    assert [(r.workload, r.kind, r.rates) for r in loaded] == [
        ("bfs", "III", {"task-clock": 5.0}), ("mystery", "?", {})]


def test_bundled_kinds_cover_the_three_types() -> None:
    kinds = bp.bundled_kinds()
    assert kinds["lenet5-mnist"] == "I" and kinds["lstm-news20"] == "II"
    assert kinds["jacobi"] == "III"
    assert set(kinds.values()) == {"I", "II", "III"}


@pytest.mark.timeout(120)
def test_profile_once_real_jacobi_child() -> None:
    from pipetune.profiler import available_events

    support = available_events()
    events = support.default_events() if support.perf_available else ()
    if not support.perf_available:
        pytest.skip(f"perf unusable here: {support.reason}")
    cmd = bp.runner_command("jacobi", ["size=200"])
    run = bp.profile_once("jacobi", "III", cmd, seconds=1.0, interval_ms=250, events=events,
                          skip_s=0.0, ready_timeout_s=60.0)
    assert run.ready, "the runner printed no READY line"
    assert run.window_s >= 1.0
    assert run.rates.get("task-clock", 0.0) > 0.0  # the child was training in the window


def test_load_runs_fills_the_cores_from_how_runs_were_taken(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"meta": {"host_cpus": 2}, "runs": [
        {"workload": "bfs", "rates": {"task-clock": 5}},
        {"workload": "bfs", "rates": {"task-clock": 5}, "meta": {"cpus": "0"}},
        {"workload": "bfs", "rates": {"task-clock": 5, "proc.cpus": 4.0}}]}))
    assert [r.rates["proc.cpus"] for r in bp.load_runs(path)] == [2.0, 1.0, 4.0]
    # the recorded sessions: quiet on both CPUs, packed on one
    data = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "profiles"
    assert {r.rates["proc.cpus"] for r in bp.load_runs(data / "bundled-packed.json")} == {1.0}
    assert {r.meta["neighbour"] != r.workload
            for r in bp.load_runs(data / "bundled-packed.json")} == {True}


@pytest.mark.timeout(180)
def test_collect_packed_pins_the_run_and_its_neighbour() -> None:
    import os

    from pipetune.profiler import available_events

    support = available_events()
    if not support.perf_available:
        pytest.skip(f"perf unusable here: {support.reason}")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("one CPU: nothing to pack beside")
    jobs = {w: ("III", bp.runner_command(w, ["size=200"] if w == "jacobi" else []), 60.0)
            for w in ("jacobi", "bfs")}
    runs = bp.collect_packed(jobs, 1, 1.0, 250, support.default_events(), 0.0,
                             cpus[:1], cpus[1:2])
    assert [(r.workload, r.meta["neighbour"]) for r in runs] == [("jacobi", "bfs"),
                                                                 ("bfs", "jacobi")]
    for r in runs:
        assert r.ready and r.meta["cpus"] == str(cpus[0])
        assert r.rates["proc.cpus"] == 1.0  # read back from the child's affinity
        assert r.rates.get("task-clock", 0.0) > 0.0
