"""The system tuner per stage, the stage side, without Ray: each trained
epoch keeps what the trial's system policy had at its end (in the stage
store and in the store's ``stage`` points, for ``--reuse``), and a trial
resuming from a parent stage hands that to its pipetune session with the
batch sizes on both sides of the branch point.  The tuner's side is in
tests/tuner/test_machine_stage.py; the whole path in a real job in
test_stages_tuner_job.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipetune.stages import StageSession, StageStore, growing_batch, plan_for
from pipetune.stages.ledger import StageLedger
from pipetune.tune import session as trial_session

NS = "w/seed=0/data=/d"
FACTS = {"config": "1c/-m/0g", "phase": "settled", "decision": "fallback",
         "profile": {"rates": {"task-clock": 900.0}, "start": 0.0, "end": 3.0,
                     "n_samples": 3, "epoch": 0}}


class FakeTrialSession:
    """What a stage session asks of the trial's pipetune session."""

    def __init__(self) -> None:
        self.resumed: list[tuple[Any, ...]] = []
        self.reprofiled: list[str] = []

    def reprofile(self, reason: str) -> None:
        self.reprofiled.append(reason)

    def stage_facts(self) -> dict[str, Any]:
        return dict(FACTS)

    def resume_stage(self, key: str, facts: Any, *, epoch: int, parent_batch_size: Any,
                     batch_size: Any) -> None:
        self.resumed.append((key, dict(facts), epoch, parent_batch_size, batch_size))


@pytest.fixture
def fake() -> Any:
    s = FakeTrialSession()
    trial_session.set_current(s)  # type: ignore[arg-type]
    yield s
    trial_session.set_current(None)


def _plans() -> tuple[Any, Any]:
    # Both train epochs 0-1 at batch 32; from epoch 2 one keeps it, one doubles it.
    keep = plan_for({"lr": 0.1, "batch_size": growing_batch(32, 1, [2])}, 3, namespace=NS)
    grow = plan_for({"lr": 0.1, "batch_size": growing_batch(32, 2, [2])}, 3, namespace=NS)
    return keep, grow


def _session(store: StageStore, trial: str, plan: Any, ckpt_dir: Path) -> StageSession:
    """A trial's stage session with no Tune to report or replay to."""
    return StageSession(store, trial, plan, ckpt_dir, report_fn=lambda m, **kw: None,
                        replay_fn=lambda m: None)


def _train(session: StageSession) -> None:
    for e in range(session.resume(lambda state: None), session.plan.epochs):
        session.report({"loss": float(e), "epoch": e}, state=lambda: {"w": 1})


def test_a_recorded_epoch_keeps_the_system_facts_and_a_child_gets_them(
    tmp_path: Path, fake: FakeTrialSession
) -> None:
    keep, grow = _plans()
    store = StageStore()
    store.register([keep, grow])
    _train(_session(store, "t1", keep, tmp_path))
    assert all(store.records[k]["system"] == FACTS for k in keep.epoch_keys())
    assert fake.resumed == []  # trained from scratch: nothing to resume from
    _train(_session(store, "t2", grow, tmp_path))
    parent = keep.epoch_keys()[1]
    assert fake.resumed == [(parent, FACTS, 2, 32, 64)]  # the batch size changes at 2


def test_a_child_keeping_the_batch_size_is_told_so(tmp_path: Path, fake: FakeTrialSession
                                                   ) -> None:
    keep, grow = _plans()
    store = StageStore()
    store.register([keep, grow])
    _train(_session(store, "t1", grow, tmp_path))
    # t1 trains on through its own batch-size change: its tuner re-profiles there
    assert fake.reprofiled == ["batch size 32 -> 64 from epoch 2"]
    _train(_session(store, "t2", keep, tmp_path))
    assert fake.resumed == [(grow.epoch_keys()[1], FACTS, 2, 32, 32)]
    assert len(fake.reprofiled) == 1  # t2 keeps its batch size


def test_the_facts_outlive_the_job_in_the_stage_points(tmp_path: Path) -> None:
    keep, grow = _plans()
    url = f"sqlite:///{tmp_path / 'pt.db'}"
    first = StageStore(ledger=StageLedger(url, tmp_path / "spool"), reuse=True, job="A")
    got = first.acquire("ta", keep)
    keys = keep.epoch_keys()
    for e in range(got.resume_epoch + 1, keep.epochs):
        ckpt = tmp_path / f"stage-{keys[e]}.pt"
        ckpt.write_bytes(b"x")
        first.record("ta", keys[e], {"loss": 1.0}, seconds=0.1, cpu_s=0.1,
                     checkpoint=str(ckpt), epoch=e, system=FACTS if e else None)
    first.finish()
    later = StageStore(ledger=StageLedger(url, tmp_path / "spool"), reuse=True, job="B")
    got = later.acquire("tb", grow)
    assert got.resume_epoch == 1 and got.system == FACTS
    loaded = StageLedger(url, tmp_path / "spool").load(NS)
    assert loaded[keys[0]]["system"] is None  # a point without facts (as version 1 wrote)
