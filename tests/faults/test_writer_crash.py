"""A store writer killed with points in its spool, against a real influxd:
the next process that opens the store replays them, once; a replay that
runs twice (a crash between "written" and "spool removed") writes nothing
twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pandas as pd
from support.influxd import InfluxServer

from pipetune.store import Point, Store, open_store
from pipetune.store.sqlite import SqliteBackend

REPO = Path(__file__).resolve().parents[2]


def _count(store: Store, job: str) -> pd.DataFrame:
    return store.query("sample", {"job": job})


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
