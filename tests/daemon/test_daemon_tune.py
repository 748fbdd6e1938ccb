"""Ray Tune jobs whose trials use the node daemon as their controller learn
and record exactly what in-process jobs do: the tuner runs in the trial
either way, only who writes the limits changes.  Real daemon, real cgroups,
real perf, real Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.daemons import Daemons

from pipetune.config import Settings
from pipetune.store import open_store
from pipetune.tune.job import JobResult, JobSpec, run_job
from pipetune.types import SystemSpace

# Three small jobs of real training: minutes on a loaded 2-CPU host.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _job(settings: Settings, name: str, samples: int) -> JobResult:
    spec = JobSpec(
        "deepcnn-mnist",
        "pipetune",
        samples=samples,
        epochs=4,
        job=name,
        space=SystemSpace.parse("cores=1,2"),
        fixed_hparams={"max_train_samples": 512},
        concurrent=1,
    )
    result = run_job(spec, settings, verbose=0)
    assert [t["error"] for t in result.trials] == [None] * samples
    return result


def _records(settings: Settings, job: str) -> dict[str, Any]:
    store = open_store(settings.store, spool_root=settings.spool_dir)
    try:
        decisions = store.decisions(job)
        epochs = store.epochs(job)
        samples = store.samples(job)
        records = store.groundtruth_records()
    finally:
        store.close()
    rates = [c for c in epochs.columns if c.startswith("rate.")]
    profiled = epochs.dropna(subset=rates, how="all") if rates else epochs.iloc[0:0]
    mine = records[records["job"] == job] if "job" in records.columns else records.iloc[0:0]
    return {
        "decision kinds": sorted(set(decisions["kind"])),
        "reasons": list(decisions["reason"]),
        "profiled epochs": len(profiled),
        "groundtruth records": len(mine),
        "samples": len(samples),
        "trial kinds": {t: list(d.sort_values("time")["kind"])
                        for t, d in decisions.groupby("trial")},
    }


def test_daemon_hosted_jobs_learn_and_record_like_in_process_ones(
    daemons: Daemons, tmp_path: Path, ray_session: None
) -> None:
    local = Settings.load({"home": str(tmp_path / "local"), "threshold": 0.6,
                           "socket": str(tmp_path / "none.sock")}, env={})
    here = _records(local, _job(local, "in-process", 1).job)

    daemon = daemons.cli("--controller", "cgroup")
    kind = daemon.client.health()["controller_kind"]
    hosted = Settings.load({"home": str(tmp_path / "hosted"), "threshold": 0.6,
                            "socket": str(daemon.socket)}, env={})
    first = _job(hosted, "via-daemon", 1)
    there = _records(hosted, first.job)

    # The same kinds of records on both paths: decisions with reasons,
    # profiled epochs, ground-truth records, samples.
    for facts in (here, there):
        assert "probe" in facts["decision kinds"], facts
        assert all(facts["reasons"]), facts
        assert facts["profiled epochs"] >= 1, facts
        assert facts["groundtruth records"] >= 1, facts
        assert facts["samples"] >= 3, facts
    # Every result of the daemon-hosted job was enforced by the daemon, and
    # its threads followed its cores at the same boundary.
    for t in first.trials:
        for row in t["history"]:
            assert row["pt_controller"] == f"daemon:{kind}", row
            assert row["pt_threads"] == row["pt_cores"], row
    # The daemon held the trials' groups and holds none once they ended.
    log = daemon.output()
    for t in first.trials:
        assert f"trial {t['trial']} (job via-daemon, uid 0" in log, log[-3000:]
    assert daemon.client.trials() == []

    # A second daemon-hosted job of the same workload is matched at once.
    second = _records(hosted, _job(hosted, "via-daemon-2", 1).job)
    # (known by name: it starts at the winner, HINTED, and its profile confirms it)
    assert list(second["trial kinds"].values()) == [["hinted", "matched"]], second
