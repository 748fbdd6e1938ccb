"""`pipetune doctor` checks by trying, on this host, against real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.influxd import free_port

from pipetune.control.cgroupfs import CgroupInfo

REPO = Path(__file__).resolve().parents[1]


def _doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipetune", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_this_host_as_the_issue_describes_it() -> None:
    r = _doctor("--json")
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    for key in (
        "cgroup.version",
        "cgroup.writable",
        "perf.available",
        "perf.pmu",
        "perf.software",
        "perf.tracepoints",
        "energy.rapl",
        "energy.nvml",
        "store.url",
        "store.reachable",
        "ray.version",
        "torch.version",
    ):
        assert key in facts, key
    # This CI host: cgroup v1 (plus an empty cgroup2 mount), root, perf without a PMU.
    assert facts["cgroup.version"] == "v1" and facts["cgroup.writable"] is True
    assert facts["perf.available"] is True and facts["perf.software"] is True
    assert facts["perf.tracepoints"] is True and facts["perf.pmu"] is False
    assert facts["energy.rapl"] is False and "energy.rapl.reason" in facts
    assert facts["store.url"].startswith("sqlite:///") and facts["store.reachable"] is True


def test_store_reachable_and_not(influx_url: str) -> None:
    r = _doctor("--store", influx_url, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["store.reachable"] is True
    closed = f"influxdb://127.0.0.1:{free_port()}/db"
    r = _doctor("--store", closed, "--json")
    facts = json.loads(r.stdout)
    assert r.returncode == 1
    assert facts["store.reachable"] is False and "cannot reach" in facts["store.error"]
    r = _doctor("--store", "mysql://x/y")
    assert r.returncode == 2 and "must start with sqlite://" in r.stderr


def test_table_output_is_readable() -> None:
    r = _doctor()
    assert r.returncode == 0
    lines = dict(line.split(None, 1) for line in r.stdout.splitlines() if line.strip())
    assert lines["perf.pmu"].strip() == "no" and lines["cgroup.writable"].strip() == "yes"


def test_hybrid_without_controllers_in_v2_is_v1(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    assert CgroupInfo("hybrid", unified=unified).effective_version() == "v1"
    (unified / "cgroup.controllers").write_text("cpu memory\n")
    assert CgroupInfo("hybrid", unified=unified).effective_version() == "hybrid"
    assert CgroupInfo("v2", unified=unified).effective_version() == "v2"


def test_checking_a_sqlite_store_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir" / "x.db"
    r = _doctor("--store", f"sqlite:///{missing}", "--json")
    facts = json.loads(r.stdout)
    assert not (tmp_path / "nonexistent").exists()
    assert facts["store.exists"] is False and facts["store.reachable"] is True, facts
    assert "first job creates it" in facts["store.note"]
    assert r.returncode == 0

    # An existing store is read, not written: no -wal/-shm left, file unchanged.
    from pipetune.store import open_store

    db = tmp_path / "s.db"
    open_store(f"sqlite:///{db}", spool_root=tmp_path / "spool").close()
    before = sorted(p.name for p in tmp_path.iterdir()), db.read_bytes()
    r = _doctor("--store", f"sqlite:///{db}", "--json")
    assert json.loads(r.stdout)["store.reachable"] is True and r.returncode == 0
    assert (sorted(p.name for p in tmp_path.iterdir()), db.read_bytes()) == before

    # Another program's SQLite file is not a store, and is left as it was.
    other = tmp_path / "other.db"
    other.write_bytes(b"not a database at all")
    r = _doctor("--store", f"sqlite:///{other}", "--json")
    facts = json.loads(r.stdout)
    assert r.returncode == 1 and facts["store.reachable"] is False
    assert other.read_bytes() == b"not a database at all"
