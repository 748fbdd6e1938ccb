"""`pipetune profile` end to end: a real command under real perf."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from pipetune.profiler import available_events

ROOT = Path(__file__).resolve().parents[2]

BUSY = """
import hashlib, sys, threading, time
n, dur = int(sys.argv[1]), float(sys.argv[2])
def spin():
    b = b"x" * (1 << 20)
    t = time.time()
    while time.time() - t < dur:
        hashlib.sha256(b).digest()
ts = [threading.Thread(target=spin) for _ in range(n)]
[t.start() for t in ts]
for i in range(int(dur / 0.5)):
    time.sleep(0.5)
    print("epoch", i, "done")  # no flush: pipetune sets PYTHONUNBUFFERED
[t.join() for t in ts]
"""


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    # Settings, spool and default store of the CLI go to this test's tmp_path.
    monkeypatch.setenv("PIPETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PIPETUNE_STORE", raising=False)


def _pipetune(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pipetune", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _no_perf_on(pid: int) -> bool:
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if p.info["name"] == "perf" and "-p" in cmd and str(pid) in ",".join(cmd).split(","):
            return False
    return True


needs_perf = pytest.mark.skipif(not available_events().perf_available,
                                reason="perf is not usable on this host")


@needs_perf
@pytest.mark.parametrize("threads", [1, 2])
def test_epoch_seconds_json(tmp_path, threads):
    script = tmp_path / "busy.py"
    script.write_text(BUSY)
    plot = tmp_path / "heat.png"
    r = _pipetune("profile", "--epoch-seconds", "1", "--interval-ms", "250", "--json",
                  "--plot", str(plot), "--", sys.executable, str(script), str(threads), "2.5")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert "task-clock" in report["events"] and "proc.rss_mb" in report["events"]
    epochs = report["epochs"]
    assert len(epochs) >= 2
    for e in epochs[:2]:
        assert set(e) >= {"index", "start", "end", "seconds", "rates"}
        assert e["seconds"] == pytest.approx(1.0)
        tc = e["rates"]["task-clock"]  # msec of CPU per second
        cpu = e["rates"]["proc.cpu_user_s"] + e["rates"]["proc.cpu_system_s"]
        # perf and procfs measure the same CPU time; neither exceeds the threads' share.
        assert tc / 1000 == pytest.approx(cpu, rel=0.3, abs=0.1)
        assert 100 < tc <= threads * 1000 * 1.1
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _no_perf_on(report["pid"])
    # The command's own output went to stderr, so stdout stayed JSON.
    assert "epoch 0 done" in r.stderr


@needs_perf
def test_epoch_marker_table_and_store(tmp_path):
    script = tmp_path / "busy.py"
    script.write_text(BUSY)
    db = tmp_path / "p.db"
    r = _pipetune("profile", "--epoch-marker", r"^epoch \d+ done", "--interval-ms", "200",
                  "--store", f"sqlite:///{db}", "--", sys.executable, str(script), "1", "2.0")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "event / epoch" in out and "task-clock" in out and "epoch 0 done" in out
    header = next(line for line in out.splitlines() if line.startswith("event / epoch"))
    assert header.split()[-1] == "3"  # four markers → epochs 0..3
    secs = next(line for line in out.splitlines() if line.startswith("seconds"))
    # Markers come every ~0.5 s (sleeps); block-buffered output would bunch them at the end.
    assert all(0.2 < float(v) < 2.0 for v in secs.split()[1:]), secs
    con = sqlite3.connect(db)
    tables = [t for (t,) in con.execute("select name from sqlite_master where type='table'")]
    con.close()
    assert tables, "the store wrote nothing"
    from pipetune.store import RATE_PREFIX, open_store, prefixed

    store = open_store(f"sqlite:///{db}", spool_root=tmp_path / "spool")
    try:
        job = r.stderr.split("as job ")[1].split()[0]
        assert job.startswith("profile-")
        epochs = store.epochs(job)
        samples = store.samples(job)
        assert len(epochs) == 4 and len(samples) >= 5
        assert "task-clock" in prefixed(epochs, RATE_PREFIX).columns
    finally:
        store.close()


def test_failing_command_exit_code():
    r = _pipetune("profile", "--interval-ms", "100", "--", sys.executable, "-c",
                  "import sys; sys.exit(7)")
    assert r.returncode == 7, r.stderr


def test_command_not_found():
    r = _pipetune("profile", "--", "/no/such/command-xyz")
    assert r.returncode == 127
    assert "command not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [
    ["profile"],
    ["profile", "--pid", "1", "--", "true"],
    ["profile", "--epoch-seconds", "0", "--", "true"],
    ["profile", "--epoch-marker", "(", "--", "true"],
    ["profile", "--pid", str(2**22 + 4321)],
    ["profile", "--plot", "x.jpg", "--", "true"],
])
def test_bad_arguments_exit_2(args):
    r = _pipetune(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "error" in r.stderr.lower() and "Traceback" not in r.stderr


@needs_perf
def test_bad_event_is_usage_error():
    r = _pipetune("profile", "--events", "task-clock,no-such-event", "--", "sleep", "5")
    assert r.returncode == 2, r.stderr
    assert "rejected" in r.stderr and "Traceback" not in r.stderr


@needs_perf
def test_profile_running_pid_for_a_duration():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        r = _pipetune("profile", "--pid", str(p.pid), "--duration-s", "0.6",
                      "--interval-ms", "200", "--json")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["pid"] == p.pid and len(report["epochs"]) == 1
        assert report["n_samples"] >= 2
        assert p.poll() is None
        assert _no_perf_on(p.pid)
    finally:
        p.kill()
        p.wait()
