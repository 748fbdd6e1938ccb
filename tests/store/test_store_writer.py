"""The Store's promises: writes never block, typed points come back as
written, a point the backend refuses is kept aside.  Its faults — a real
influxd stopped mid-write, a writer killed, a replay run twice — are in
tests/faults/."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from pipetune.errors import StoreError, StoreUnavailableError
from pipetune.store import Point, Store, open_store
from pipetune.store.sqlite import SqliteBackend
from pipetune.types import (
    Decision,
    DecisionKind,
    EpochProfile,
    EpochResult,
    Sample,
    SystemConfig,
    TrialRef,
)


class GatedBackend(SqliteBackend):
    """A real SQLite backend whose writes wait until the test opens a gate,
    or fail as unavailable while ``down`` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.down = False

    def write_points(self, points: Sequence[Point]) -> None:
        self.gate.wait()
        if self.down:
            raise StoreUnavailableError("down for the test")
        super().write_points(points)


def test_write_returns_while_the_backend_is_stuck(tmp_path: Path) -> None:
    backend = GatedBackend(tmp_path / "s.db")
    store = Store(backend, tmp_path / "spool", queue_size=100)
    spool_threads: list[str] = []
    append = store._spool.append

    def recording_append(points: Sequence[Point]) -> None:
        spool_threads.append(threading.current_thread().name)
        append(points)

    store._spool.append = recording_append  # type: ignore[method-assign]
    for i in range(300):  # more than the queue holds: the rest must spool, not block
        store.write(Point("sample", {"job": "j"}, {"x": float(i)}, 1_000 + i))
    assert not store.flush(timeout_s=0.2)  # backend still stuck
    # The caller never did the spool's disk I/O (fsync) itself.
    assert threading.current_thread().name not in spool_threads
    backend.gate.set()
    assert store.drain_spool(30)
    store.close()
    df = SqliteBackend(tmp_path / "s.db").query("sample", {"job": "j"})
    assert sorted(df["x"]) == [float(i) for i in range(300)]


def test_typed_helpers_roundtrip(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}", spool_root=tmp_path / "spool")
    ref = TrialRef("job1", "trial1", "node1")
    cfg = SystemConfig(2, 1024)
    store.write_sample(
        ref,
        Sample(100.0, 1.0, {"task-clock": 990.0}, {"task-clock": 100.0}),
        phase="profiling",
        config=cfg,
    )
    profile = EpochProfile({"task-clock": 995.0}, 100.0, 105.0, 5, epoch=1)
    store.write_epoch(
        ref,
        EpochResult(1, cfg, 5.0, 20, 12.5, "estimated", {"accuracy": 0.8}),
        phase="profiling",
        profile=profile,
        time_s=105.0,
    )
    store.write_decision(
        ref,
        Decision(
            DecisionKind.PROBE, cfg, "unseen workload", 1, candidates=(cfg, SystemConfig(1, 1024))
        ),
        time_s=105.0,
    )
    store.write_groundtruth(
        workload="lenet5",
        profile=profile,
        config=cfg,
        objective="runtime",
        value=5.0,
        ref=ref,
        time_s=106.0,
    )
    store.write_power("node1", 42.0, source="estimated", time_s=100.0)
    store.close()
    store = open_store(f"sqlite:///{tmp_path / 's.db'}", spool_root=tmp_path / "spool")
    ep = store.epochs("job1")
    assert ep.loc[0, "metric.accuracy"] == 0.8 and ep.loc[0, "rate.task-clock"] == 995.0
    assert ep.loc[0, "config"] == "2c/1024m/0g" and ep.loc[0, "epoch"] == "1"
    assert ep.loc[0, "energy_method"] == "estimated"
    dec = store.decisions("job1", "trial1")
    assert dec.loc[0, "kind"] == "probe"
    assert set(dec.loc[0, "candidates"].split(",")) == {"1c/1024m/0g", "2c/1024m/0g"}
    gt = store.groundtruth_records("runtime")
    assert gt.loc[0, "workload"] == "lenet5" and gt.loc[0, "value"] == 5.0
    assert store.power("node1").loc[0, "watts"] == 42.0
    assert store.samples("job1").loc[0, "task-clock"] == 990.0
    store.close()


class PickyBackend(SqliteBackend):
    """Refuses any batch holding a point with a 'bad' field, as InfluxDB
    refuses a field-type conflict."""

    def write_points(self, points: Sequence[Point]) -> None:
        if any("bad" in p.fields for p in points):
            raise StoreError("field type conflict")
        super().write_points(points)


def test_refused_points_are_kept_aside_and_do_not_block_the_rest(tmp_path: Path) -> None:
    backend = PickyBackend(tmp_path / "s.db")
    store = Store(backend, tmp_path / "spool", batch_size=1)
    store.write(Point("sample", {"job": "p"}, {"bad": "x"}, 1))
    for i in range(20):
        store.write(Point("sample", {"job": "p"}, {"i": float(i)}, 100 + i))
    assert store.flush(30)
    assert store.drain_spool(10)
    store.close()
    assert store.rejected == 1
    rejected = list((tmp_path / "spool").rglob("rejected-*.jsonl"))
    assert len(rejected) == 1 and len(rejected[0].read_text().splitlines()) == 1
    assert len(SqliteBackend(tmp_path / "s.db").query("sample", {"job": "p"})) == 20
