"""The Store's promises: writes never block, outages lose nothing, replays
write nothing twice — against a real influxd that is really stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from support.influxd import InfluxServer

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

REPO = Path(__file__).resolve().parents[2]


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


def _count(store: Store, job: str) -> pd.DataFrame:
    return store.query("sample", {"job": job})


def test_outage_of_a_real_influxd_loses_nothing(tmp_path: Path) -> None:
    server = InfluxServer(tmp_path / "influx")
    server.start()
    try:
        server.create_database("outage")
        store = open_store(
            server.url("outage"), spool_root=tmp_path / "spool", retry_interval_s=0.3
        )
        n = 0

        def burst(k: int) -> None:
            nonlocal n
            for _ in range(k):
                store.write(
                    Point(
                        "sample",
                        {"job": "o", "trial": "t"},
                        {"i": float(n)},
                        1_700_000_000_000_000_000 + n,
                    )
                )
                n += 1

        burst(200)
        assert store.flush(30)
        server.stop()  # the server really goes away while the trial keeps writing
        burst(300)
        assert store.flush(30)
        assert store.spooled_now > 0
        server.start()
        burst(100)
        assert store.drain_spool(60)
        df = _count(store, "o")
        store.close()
    finally:
        server.stop()
    assert len(df) == 600
    assert sorted(df["i"]) == [float(i) for i in range(600)]
    assert df["time"].is_unique


def test_killed_writer_spool_is_replayed_by_next_process(tmp_path: Path) -> None:
    server = InfluxServer(tmp_path / "influx")
    server.start()
    server.create_database("crash")
    url = server.url("crash")
    server.stop()  # down while the first process writes
    spool = tmp_path / "spool"
    child = textwrap.dedent(f"""
        import os, sys, time
        from pipetune.store import open_store, Point
        s = open_store({url!r}, spool_root=__import__('pathlib').Path({str(spool)!r}))
        for i in range(250):
            t = 1_700_000_000_000_000_000 + i
            s.write(Point("sample", {{"job": "c"}}, {{"i": float(i)}}, t))
        assert s.flush(30)
        print("spooled", s.spooled_now, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "spooled 250", line
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown: the spool must survive
        proc.wait()
    server.start()
    try:
        store = open_store(url, spool_root=spool)
        assert store.drain_spool(30)
        store.flush(10)
        # the orphan replay runs on the writer thread; wait for it
        for _ in range(100):
            df = _count(store, "c")
            if len(df) == 250:
                break
            threading.Event().wait(0.1)
        store.close()
    finally:
        server.stop()
    assert len(df) == 250 and df["time"].is_unique
    assert not list(spool.rglob("spool-*.jsonl")), "replayed spool files must be removed"


def test_replayed_twice_is_still_once(tmp_path: Path) -> None:
    """A crash between 'written' and 'spool removed' replays again: harmless."""
    backend = SqliteBackend(tmp_path / "s.db")
    pts = [Point("sample", {"job": "r"}, {"i": float(i)}, 10 + i) for i in range(50)]
    backend.write_points(pts)
    backend.write_points(pts)
    assert len(backend.query("sample", {"job": "r"})) == 50


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
