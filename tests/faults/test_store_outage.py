"""The store goes down mid-write and mid-job, against a real influxd that is
really stopped and started again: nothing is lost and nothing is written
twice — a writer's points, a real Ray Tune job's epochs, samples and trial
records (compared with what its trials reported) — a job's ground-truth
refit is retried when the store is back, and the outage is said once, not
every retry."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.influxd import InfluxServer

from pipetune.config import Settings
from pipetune.groundtruth import load_model
from pipetune.store import Point, Store, open_store
from pipetune.store.spool import spooled_points
from pipetune.tune.callback import PipeTuneCallback
from pipetune.tune.job import JobSpec, run_job
from pipetune.types import EpochProfile, SystemConfig, SystemSpace

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


def _epochs_in_store(server: InfluxServer, database: str) -> int:
    raw = server.query('SELECT count("seconds") FROM "epoch"', database)
    try:
        return int(json.loads(raw)["results"][0]["series"][0]["values"][0][1])
    except (KeyError, IndexError, ValueError):
        return 0


@pytest.mark.slow
def test_outage_mid_job_a_real_tune_job_loses_and_duplicates_nothing(
    tmp_path: Path, ray_session: None
) -> None:
    """influxd is stopped once the job's first epoch is in it and started
    again seconds later, while trials train and a third one waits to start."""
    server = InfluxServer(tmp_path / "influx")
    server.start()
    events: list[tuple[str, float]] = []
    try:
        server.create_database("job")
        url = server.url("job")
        settings = Settings.load({"home": str(tmp_path / "home"), "store": url}, env={})
        spec = JobSpec("deepcnn-mnist", "pipetune", samples=3, epochs=3,
                       space=SystemSpace.parse(["cores=1,2"]), job="outage-job",
                       fixed_hparams={"max_train_samples": 512}, scheduler="fifo")
        stop = threading.Event()

        def outage() -> None:
            while not stop.is_set() and _epochs_in_store(server, "job") == 0:
                time.sleep(0.2)
            if stop.is_set():
                return
            server.stop()
            events.append(("down", time.time()))
            stop.wait(6.0)  # a few epochs of the running trials, a trial's start
            server.start()
            events.append(("up", time.time()))

        thread = threading.Thread(target=outage, name="outage")
        thread.start()
        try:
            result = run_job(spec, settings, verbose=0)
        finally:
            stop.set()
            thread.join(60)
        # Whatever a trial that ended in the outage left in its spool, the
        # next process replays.
        store = open_store(url, spool_root=settings.spool_dir)
        assert store.drain_spool(60)
        epochs = store.epochs("outage-job")
        samples = store.samples("outage-job")
        trials = store.query("trial", {"job": "outage-job"})
        jobs = store.query("job", {"job": "outage-job"})
        store.close()
    finally:
        server.stop()
    assert [e for e, _ in events] == ["down", "up"], "the outage did not happen mid-job"
    (_, down_s), (_, up_s) = events
    # The trials wrote through the outage: what they wrote then was spooled
    # and replayed.
    times = pd.concat([epochs["time"], samples["time"], trials["time"]])
    assert ((times > down_s * 1e9) & (times < up_s * 1e9)).any(), (down_s, up_s)
    ran = {t["trial"]: t for t in result.trials}
    assert len(ran) == 3 and all(t["error"] is None for t in ran.values())
    reported = sorted((t, int(h["epoch"])) for t in ran for h in ran[t]["history"])
    assert reported == sorted((t, e) for t in ran for e in range(3))
    # Every epoch the trials reported is in the store, and only once.
    stored = sorted(zip(epochs["trial"], epochs["epoch"].astype(int), strict=True))
    assert stored == reported
    assert not samples.duplicated(["trial", "time"]).any() and len(samples) > 0
    assert set(samples["trial"]) == set(ran)
    assert sorted(trials["trial"]) == sorted([*ran, *ran])  # running, then its end
    assert set(trials.groupby("trial")["status"].agg(frozenset)) == {
        frozenset({"running", "done"})}
    assert sorted(jobs["event"]) == ["end", "start"]
    assert not list(Path(settings.spool_dir).rglob("spool-*.jsonl"))
