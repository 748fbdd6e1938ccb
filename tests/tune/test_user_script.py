"""A user's own Tune script with the README's three lines gets the whole loop:
it learns across jobs, its jobs are reported as finished with their mode and
workload, its concurrent trials hold disjoint CPUs, and what each result
says was in force was in force.  Real Ray, real cgroups, real perf, run as a
user runs a script (a subprocess with its own Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipetune.report.data import load_job
from pipetune.store import open_store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "user_script.py"


def run_script(tmp_path: Path, home: Path, *args: str) -> list[dict]:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PIPETUNE_HOME": str(home),
            # one record after the first trial: this host's noise is large
            "PIPETUNE_THRESHOLD": "0.6",
            "PIPETUNE_SOCKET": str(tmp_path / "no-daemon.sock"),
            "HOME": str(tmp_path),
            "RAY_ADDRESS": "",
        },
    )
    assert r.returncode == 0, r.stderr[-4000:]
    trials = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert trials and all(t["error"] is None for t in trials), r.stderr[-4000:]
    return trials


def _store(home: Path):  # noqa: ANN202 - a Store
    return open_store(f"sqlite:///{home / 'pipetune.db'}", spool_root=home / "spool")


def test_second_run_of_a_users_script_is_matched_and_reported_finished(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    first = run_script(tmp_path, home, "--name", "user-1", "--samples", "1")
    second = run_script(tmp_path, home, "--name", "user-2", "--samples", "1")

    store = _store(home)
    try:
        d1, d2 = store.decisions("user-1"), store.decisions("user-2")
        records = store.groundtruth_records()
        samples = store.samples("user-1")
        job = load_job(store, "user-1")
    finally:
        store.close()
    kinds1 = list(d1.sort_values("time")["kind"])
    kinds2 = list(d2.sort_values("time")["kind"])
    assert kinds1[0] == "probe" and kinds1[-1] == "settled", list(d1["reason"])
    # No callback, no `groundtruth retrain`: the first run's trial refit the
    # model at its end, and the second run's trial starts at the winner (its
    # workload is known by name: HINTED) and its profile confirms it.
    assert kinds2 == ["hinted", "matched"], list(d2["reason"])
    assert all(r for r in d1["reason"]) and all(r for r in d2["reason"])
    # One workload identity for one script (function name + code digest).
    workloads = set(records["workload"])
    assert len(workloads) == 1 and next(iter(workloads)).startswith("train-")
    assert len(samples) >= 3  # the profiler's 1 Hz samples reached the store
    # The report of a script's job: finished, with its mode and workload.
    assert (job.partial, job.mode, job.workload) == (False, "pipetune", next(iter(workloads)))
    assert [t.status for t in job.trials] == ["done"]
    # What each result says was in force was in force: threads follow the
    # cores at the same boundary, and the controller is named.
    for trial in first + second:
        for row in trial["rows"]:
            cores = int(row["pt_config"].split("c/")[0])
            assert row["pt_threads"] == cores == row["pt_cores"], row
            assert len(row["pt_cpus"].replace("-", ",").split(",")) <= 2
            assert row["pt_controller"] in ("cgroup-v1", "cgroup-v2", "affinity"), row
    probed_1c = [r for r in first[0]["rows"] if r["pt_config"].startswith("1c")]
    assert probed_1c and all(r["pt_cpus"] in ("0", "1") for r in probed_1c)


def test_concurrent_trials_of_a_users_script_hold_disjoint_cpus(tmp_path: Path) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    trials = run_script(tmp_path, tmp_path / "home", "--name", "user-v1", "--mode", "v1",
                        "--space", "cores=1", "--samples", "2", "--epochs", "2",
                        "--passes", "1", "--barrier", str(barrier))
    assert len(trials) == 2
    cpus = [{r["pt_cpus"] for r in t["rows"]} for t in trials]
    assert all(len(c) == 1 for c in cpus), cpus  # each trial kept its CPU
    assert cpus[0].isdisjoint(cpus[1]), cpus
    assert {r["pt_threads"] for t in trials for r in t["rows"]} == {1}
