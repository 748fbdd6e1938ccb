"""Reuse of stages across jobs through the pipetune store, without Ray: the
ledger's records, a later job's stage store adopting them, and checkpoints
that are gone or unreadable (retrained, one warning line).  The ledger runs
against every store backend: SQLite and a real InfluxDB 1.x."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from pipetune.stages import StageSession, StageStore, plan_for, step_decay
from pipetune.stages.ledger import StageLedger, space_of
from pipetune.store import open_store

NS = "w/seed=0/data=/d"


def _plans() -> tuple:
    a = plan_for({"lr": step_decay(0.1, 0.5, [2])}, 4, namespace=NS)
    b = plan_for({"lr": step_decay(0.1, 0.2, [2])}, 4, namespace=NS)
    return a, b


@pytest.fixture(params=["sqlite", "influxdb"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "influxdb":
        return str(request.getfixturevalue("influx_url"))
    return f"sqlite:///{tmp_path / 'pt.db'}"


def _job(tmp_path: Path, name: str, *, reuse: bool, url: str = "") -> StageStore:
    ledger = StageLedger(url or f"sqlite:///{tmp_path / 'pt.db'}", tmp_path / "spool")
    return StageStore(ledger=ledger, reuse=reuse, job=name)


def _train(store: StageStore, trial: str, plan: Any, ckpt_dir: Path) -> Any:
    """Train ``plan`` as a trial would: acquire, then record every epoch left
    (a checkpoint file where the store wants one; loss = epoch + 10 * lr)."""
    got = store.acquire(trial, plan)
    assert got.wait_for is None
    keys = plan.epoch_keys()
    for e in range(got.resume_epoch + 1, plan.epochs):
        ckpt = None
        if store.wants_checkpoint(trial, plan.trial_id, e, keys[e]):
            ckpt = ckpt_dir / f"stage-{keys[e]}.pt"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"epoch": e}, ckpt)
        lr = dict(plan.point(e))["lr"]
        store.record(trial, keys[e], {"loss": e + 10 * lr}, seconds=0.1, cpu_s=0.5,
                     checkpoint=str(ckpt) if ckpt else None, epoch=e)
    store.release(trial)
    return got


def test_a_later_job_trains_only_what_earlier_jobs_did_not(tmp_path: Path, url: str) -> None:
    a, b = _plans()
    first = _job(tmp_path, "A", reuse=True, url=url)
    _train(first, "ta", a, tmp_path / "A")
    assert first.finish()["epochs_trained"] == 4

    later = _job(tmp_path, "B", reuse=True, url=url)
    later.register([a, b])
    got = later.acquire("ta2", a)  # all of a is recorded: replay, nothing to train
    assert got.resume_epoch == 3 and len(got.replay) == 4
    assert [m["loss"] for m in got.replay] == [0.0 + 1, 1.0 + 1, 2.0 + 0.5, 3.0 + 0.5]
    later.release("ta2")
    # b shares a's first two epochs; A checkpointed every epoch (reuse), so
    # b resumes after epoch 1 from A's file and trains epochs 2 and 3.
    got = _train(later, "tb", b, tmp_path / "B")
    assert got.resume_epoch == 1
    assert got.checkpoint == str(tmp_path / "A" / f"stage-{b.epoch_keys()[1]}.pt")
    figures = later.finish()
    assert figures["epochs_trained"] == 2
    assert figures["epochs_reused"] == figures["epochs_replayed"] == 4 + 2
    assert figures["epochs_reported"] == 8
    assert figures["cpu_s_trial_based"] == pytest.approx(8 * 0.5)

    store = open_store(url, spool_root=tmp_path / "spool")
    try:
        rows = store.query("stage", {"space": space_of(NS)})
        jobs = store.query("stage_job", {"job": "B"})
        assert store.spooled == 0 and store.rejected == 0
    finally:
        store.close()
    assert sorted(rows["job"]) == ["A"] * 4 + ["B"] * 2
    assert int(jobs["epochs_trained"].iloc[0]) == 2 and int(jobs["reuse"].iloc[0]) == 1
    # The report reads the same record back (a stage job's summary).
    from pipetune.report.data import _stages

    store = open_store(url, spool_root=tmp_path / "spool")
    try:
        summary = _stages(store, "B")
    finally:
        store.close()
    assert summary is not None and summary.epochs_trained == 2 and summary.epochs_reused == 6
    assert [r["epoch_marks"] for r in summary.tree] == ["rr", "rr", "tt"]


def test_without_reuse_a_later_job_loads_nothing(tmp_path: Path) -> None:
    a, _ = _plans()
    first = _job(tmp_path, "A", reuse=True)
    _train(first, "ta", a, tmp_path / "A")
    first.finish()
    later = _job(tmp_path, "B", reuse=False)
    assert later.acquire("ta2", a).resume_epoch == -1
    assert later.wants_checkpoint("ta2", a.trial_id, 0, a.epoch_keys()[0]) is False


def test_a_removed_checkpoint_is_retrained_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = _plans()
    first = _job(tmp_path, "A", reuse=True)
    _train(first, "ta", a, tmp_path / "A")
    first.finish()
    keys = a.epoch_keys()
    for e in (2, 3):
        (tmp_path / "A" / f"stage-{keys[e]}.pt").unlink()
    later = _job(tmp_path, "B", reuse=True)
    # a trained one epoch longer: its first 4 epochs are a's (same keys).
    longer = plan_for({"lr": step_decay(0.1, 0.5, [2])}, 5, namespace=NS)
    with caplog.at_level(logging.WARNING, logger="pipetune.stages.ledger"):
        got = later.acquire("ta2", longer)
    assert got.resume_epoch == 1  # the last checkpoint still there: 2..4 trained again
    assert len(got.replay) == 2
    assert len(caplog.records) == 1 and "2 stage checkpoint(s)" in caplog.records[0].message


def test_an_unreadable_checkpoint_is_forgotten_and_its_stage_retrained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = _plans()
    first = _job(tmp_path, "A", reuse=True)
    _train(first, "ta", a, tmp_path / "A")
    first.finish()
    keys = b.epoch_keys()
    (tmp_path / "A" / f"stage-{keys[1]}.pt").write_bytes(b"not a checkpoint")
    later = _job(tmp_path, "B", reuse=True)
    loaded: list[Any] = []
    replayed: list[dict[str, Any]] = []
    session = StageSession(later, "tb", b, tmp_path / "B", replay_fn=replayed.append,
                           report_fn=lambda m, **kw: None)
    with caplog.at_level(logging.WARNING, logger="pipetune.stages.session"):
        start = session.resume(loaded.append)
    assert start == 1 and loaded == [{"epoch": 0}]  # fell back to epoch 0's checkpoint
    assert [m["epoch"] for m in replayed] == [0]
    assert len(caplog.records) == 1 and "unreadable" in caplog.records[0].message
    assert later.stats()["epochs_replayed"] == 1 == later.stats()["epochs_reused"]
    assert later.records[keys[1]]["checkpoint"] is None


def test_the_stored_tree_is_compact_and_a_too_large_one_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pipetune.stages import ledger as ledger_mod

    a = plan_for({"lr": step_decay(0.1, 0.5, [2]), "batch_size": 32}, 4, namespace=NS)
    b = plan_for({"lr": step_decay(0.1, 0.2, [2]), "batch_size": 32}, 4, namespace=NS)
    store = StageStore()
    store.register([a, b])
    rows, fixed = ledger_mod.compact_tree(store.tree_rows())
    assert fixed == {"batch_size": 32}
    assert [sorted(r["values"]) for r in rows] == [["lr"]] * 3
    assert all("trials" not in r for r in rows)

    url = f"sqlite:///{tmp_path / 'pt.db'}"
    monkeypatch.setattr(ledger_mod, "MAX_TREE_CHARS", 50)
    ledger = StageLedger(url, tmp_path / "spool")
    with caplog.at_level(logging.WARNING, logger="pipetune.stages.ledger"):
        ledger.write_job("big", store.tree_rows(), {"tree_nodes": 3, "epochs_trained": 0})
    ledger.close()
    assert len(caplog.records) == 1 and "too large" in caplog.records[0].message
    from pipetune.report.data import _stages

    s = open_store(url, spool_root=tmp_path / "spool")
    try:
        summary = _stages(s, "big")
    finally:
        s.close()
    assert summary is not None and summary.tree == () and summary.nodes == 3
    assert summary.fixed == {"batch_size": 32}
