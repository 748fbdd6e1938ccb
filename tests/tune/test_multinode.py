"""The multi-node path: a job on a two-node Ray cluster, one shared InfluxDB."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.raycluster import RayCluster

from pipetune.store import open_store

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_trials_land_on_both_nodes_and_write_to_one_influxdb(
    tmp_path: Path, influx_url: str
) -> None:
    cluster = RayCluster(tmp_path)
    cluster.start()
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipetune",
                "tune",
                "lenet5-mnist",
                "--mode",
                "v1",
                "--samples",
                "2",
                "--epochs",
                "1",
                "--space",
                "cores=1",
                "--concurrent",
                "2",
                "--set",
                "max_train_samples=256",
                "--address",
                cluster.address,
                "--store",
                influx_url,
                "--job",
                "multinode",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=400,
            env={**cluster.env, "PYTHONPATH": str(REPO), "PIPETUNE_HOME": str(tmp_path / "h")},
        )
    finally:
        cluster.stop()
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    result = json.loads(r.stdout)
    assert len({t["ray_node"] for t in result["trials"]}) == 2, result["trials"]
    store = open_store(influx_url, spool_root=tmp_path / "spool")
    epochs = store.epochs("multinode")
    store.close()
    assert set(epochs["trial"]) == {t["trial"] for t in result["trials"]}
