"""A job's ground-truth refit and its store's outage, against a real influxd
that is really stopped: the refit is retried when the store is back, and the
outage is said once, not every retry."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from support.influxd import InfluxServer

from pipetune.groundtruth import load_model
from pipetune.store import Point, open_store
from pipetune.store.spool import spooled_points
from pipetune.tune.callback import PipeTuneCallback
from pipetune.types import EpochProfile, SystemConfig

REPO = Path(__file__).resolve().parents[2]
EVENTS = ["task-clock", "context-switches", "page-faults", "sched:sched_wakeup"]


def _records(store, workloads: range, runs: int = 3) -> None:
    for w in workloads:
        base = np.exp(np.random.default_rng(w).uniform(2, 9, len(EVENTS)))
        rng = np.random.default_rng(w)
        for r in range(runs):
            rates = {e: float(b * math.exp(rng.normal(0, 0.05)))
                     for e, b in zip(EVENTS, base, strict=True)}
            store.write_groundtruth(workload=f"w{w}", profile=EpochProfile(rates, 0, 1, 1),
                                    config=SystemConfig(w + 1), objective="runtime",
                                    value=1.0, time_s=1000.0 + 10 * w + r)


def test_refit_failed_while_the_store_was_down_is_retried_when_it_is_back(
    tmp_path: Path, caplog
) -> None:
    server = InfluxServer(tmp_path / "influx")
    server.start()
    spool = tmp_path / "spool"
    model = tmp_path / "gt.json"
    try:
        server.create_database("gt")
        url = server.url("gt")
        seed = open_store(url, spool_root=spool)
        _records(seed, range(2))
        assert seed.flush(30)
        seed.close()
        cb = PipeTuneCallback(url, spool, job="j", mode="pipetune", model_path=str(model))
        server.stop()

        # A trial ends during the outage: its record goes to its spool, and
        # its process is gone before the store is back.
        child = textwrap.dedent(f"""
            import math
            import numpy as np
            from pipetune.store import open_store
            from pipetune.types import EpochProfile, SystemConfig
            s = open_store({url!r}, spool_root={str(spool)!r}, retry_interval_s=60)
            base = np.exp(np.random.default_rng(2).uniform(2, 9, {len(EVENTS)}))
            rng = np.random.default_rng(2)
            for r in range(3):
                rates = {{e: float(b * math.exp(rng.normal(0, 0.05)))
                         for e, b in zip({EVENTS!r}, base)}}
                s.write_groundtruth(workload="w2", profile=EpochProfile(rates, 0, 1, 1),
                                    config=SystemConfig(3), objective="runtime",
                                    value=1.0, time_s=1020.0 + r)
            assert s.flush(30)
            print(s.spooled_now)
            s.close(timeout_s=5)
        """)
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert out.stdout.strip() == "3", out.stderr

        with caplog.at_level(logging.DEBUG, logger="pipetune"):
            cb._learn()  # the trial-complete refit, with the store down
            assert cb.model_updates == 0 and not model.exists()
            for _ in range(3):  # the Tune loop goes on while the store is down
                cb._refit_retry_at = 0.0
                cb.on_step_end(iteration=0, trials=[])
            assert cb.model_updates == 0
            server.start()
            deadline = time.monotonic() + 60
            while cb.model_updates == 0 and time.monotonic() < deadline:
                cb.on_step_end(iteration=0, trials=[])
                time.sleep(0.2)
        cb.store.close()
    finally:
        server.stop()
    assert cb.model_updates == 1
    # The refit saw the record spooled by the trial that ended in the outage.
    fitted = load_model(model)
    assert fitted.n_records == 9 and fitted.n_clusters == 3, fitted.describe()
    assert not list(spool.rglob("spool-*.jsonl"))


def test_an_outage_is_said_once_and_the_spool_is_counted(tmp_path: Path, caplog) -> None:
    server = InfluxServer(tmp_path / "influx")
    server.start()
    try:
        server.create_database("o")
        store = open_store(server.url("o"), spool_root=tmp_path / "spool",
                           retry_interval_s=0.2)
        server.stop()
        with caplog.at_level(logging.DEBUG, logger="pipetune.store"):
            for i in range(20):  # 4 s of a trial writing through the outage
                store.write(Point("sample", {"job": "o"}, {"i": float(i)},
                                  1_700_000_000_000_000_000 + i))
                time.sleep(0.2)
            assert store.flush(30)
            spooled = store.spooled_now
            # what `pipetune tune`'s summary says waits in the spool
            waiting = spooled_points(tmp_path / "spool", store.url)
            server.start()
            assert store.drain_spool(60)
        store.close()
        assert spooled_points(tmp_path / "spool", store.url) == 0
    finally:
        server.stop()
    down = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert spooled == waiting == 20 and len(down) >= 3
    assert [r.levelno for r in down].count(logging.WARNING) == 1, [r.getMessage() for r in down]
    assert any("answers again" in r.getMessage() for r in caplog.records)
