"""The stage section of ``pipetune report`` from a stage job's record in a
real SQLite store (a real stage store's tree; no Ray, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipetune.report import build_report
from pipetune.stages import StageStore, plan_for, step_decay
from pipetune.stages.ledger import StageLedger
from pipetune.store import Point, open_store


def test_a_stage_job_gets_its_tree_figure_and_compute_saved(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pt.db'}"
    plans = [plan_for({"lr": step_decay(0.1, r, [2])}, 4) for r in (0.5, 0.2)]
    stages = StageStore(ledger=StageLedger(url, tmp_path / "spool"), job="j")
    for i, plan in enumerate(plans):
        trial = f"t{i}"
        got = stages.acquire(trial, plan)
        for e, key in list(enumerate(plan.epoch_keys()))[got.resume_epoch + 1:]:
            stages.record(trial, key, {"loss": 1.0 / (e + 1)}, seconds=0.1, cpu_s=0.25,
                          checkpoint=f"/c/{key}" if e == 1 else None, epoch=e)
        stages.release(trial)
    figures = stages.finish()
    store = open_store(url, spool_root=tmp_path / "spool")
    try:
        store.write(Point("job", {"job": "j", "mode": "v1", "workload": "w"}, {"event": "start"}))
        store.flush()
        path, [report] = build_report(store, ["j"], tmp_path / "out", fmt="html")
    finally:
        store.close()
    s = report.stages
    assert s is not None
    assert (s.epochs_trained, s.epochs_replayed, s.epochs_reported) == (6, 2, 8)
    assert s.epochs_saved == 2 and s.compute_ratio == pytest.approx(8 / 6)
    assert s.epochs_trained == figures["epochs_trained"]
    assert s.cpu_s == pytest.approx(figures["cpu_s"]) == pytest.approx(6 * 0.25)
    assert s.cpu_s_trial_based == pytest.approx(8 * 0.25)
    assert [(r["start"], r["stop"], r["tune_trials"]) for r in s.tree] == [
        (0, 2, ["t0", "t1"]), (2, 4, ["t0"]), (2, 4, ["t1"])]
    assert [r["tune_ending"] for r in s.tree] == [[], ["t0"], ["t1"]]
    assert [r["epoch_marks"] for r in s.tree] == ["tt", "tt", "tt"]
    html = path.read_text()
    assert "Stage tree of j" in html and "2 epochs saved (1.33x)" in html
    assert html.count("data:image/png;base64,") >= 1


def test_a_job_without_stages_has_no_stage_section(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pt.db'}"
    store = open_store(url, spool_root=tmp_path / "spool")
    try:
        store.write(Point("job", {"job": "j", "mode": "v1", "workload": "w"}, {"event": "start"}))
        store.flush()
        path, [report] = build_report(store, ["j"], tmp_path / "out")
    finally:
        store.close()
    assert report.stages is None and "Stage tree" not in path.read_text()
    assert not (tmp_path / "out" / "stage_tree_1.png").exists()
