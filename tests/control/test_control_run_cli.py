"""`pipetune run` end to end, for real (subprocesses of the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipetune.control import cgroups_writable

ROOT = Path(__file__).resolve().parents[2]

BUSY_2PROC = """
import multiprocessing as mp, sys, time
def spin(end):
    while time.monotonic() < end:
        pass
if __name__ == "__main__":
    end = time.monotonic() + float(sys.argv[1])
    ps = [mp.Process(target=spin, args=(end,)) for _ in range(2)]
    [p.start() for p in ps]
    [p.join() for p in ps]
"""

ALLOC = """
import sys
chunks = []
for _ in range(int(sys.argv[1]) // 10):
    chunks.append(b"x" * (10 * 1024 * 1024))
print("allocated everything")
"""

pytestmark = pytest.mark.usefixtures("no_cgroup_left")


def pipetune_run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pipetune", "run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def _need_cgroups():
    ok = cgroups_writable()
    if ok is not True:
        pytest.skip(f"no writable cgroups: {ok}")


def test_one_core_two_busy_processes(tmp_path):
    script = tmp_path / "busy.py"
    script.write_text(BUSY_2PROC)
    r = pipetune_run("--cores", "1", "--json", "--", sys.executable, str(script), "3")
    assert r.returncode == 0, r.stderr
    rep = last_json(r.stdout)
    print(rep)
    assert rep["applied"]["cpus"] and len(rep["applied"]["cpus"]) == 1
    assert rep["exit_code"] == 0 and rep["oom_kills"] == 0
    assert 2.8 <= rep["wall_s"] <= 20
    # Two busy processes unlimited would approach 2 CPU-s/s on this host.
    assert 0.2 <= rep["cpu_per_wall"] <= 1.15


def test_memory_limit_oom_kill_is_reported(tmp_path):
    script = tmp_path / "alloc.py"
    script.write_text(ALLOC)
    r = pipetune_run("--memory-mb", "100", "--json", "--", sys.executable, str(script), "400")
    rep = last_json(r.stdout)
    print(rep)
    assert r.returncode == 137 and rep["exit_code"] == 137 and rep["signal"] == "SIGKILL"
    assert rep["oom_kills"] >= 1
    assert "allocated everything" not in r.stdout
    assert "1 OOM kill" in r.stderr


def test_quota_and_exit_code_pass_through():
    r = pipetune_run("--cpu-quota", "0.5", "--json", "--", "sh", "-c", "exit 7")
    assert r.returncode == 7, r.stderr
    rep = last_json(r.stdout)
    assert rep["applied"]["cpu_quota"] == 0.5 and rep["exit_code"] == 7


@pytest.mark.parametrize("args, message", [
    (["--cores", "99", "--", "true"], "--cores 99"),
    (["--cpus", "0,77", "--", "true"], "not available"),
    (["--memory-mb", "0", "--", "true"], "--memory-mb 0"),
    (["--cpu-quota", "-1", "--", "true"], "--cpu-quota"),
    (["--cores", "1", "--", "no-such-command-here"], "command not found"),
    (["--cores", "1"], "no command"),
])
def test_bad_input_one_line_exit_2(args, message):
    r = pipetune_run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def test_command_never_runs_when_limits_fail(tmp_path):
    marker = tmp_path / "ran"
    r = pipetune_run("--cpus", "0,77", "--", "touch", str(marker))
    assert r.returncode == 2
    assert not marker.exists()


def test_affinity_fallback_limits_cores_and_refuses_what_it_cannot(tmp_path):
    script = tmp_path / "busy.py"
    script.write_text(BUSY_2PROC)
    r = pipetune_run("--controller", "affinity", "--cores", "1", "--json", "--",
                     sys.executable, str(script), "2")
    assert r.returncode == 0, r.stderr
    rep = last_json(r.stdout)
    assert rep["controller"] == "affinity" and len(rep["applied"]["cpus"]) == 1
    assert 0.2 <= rep["cpu_per_wall"] <= 1.15
    r = pipetune_run("--controller", "affinity", "--memory-mb", "100", "--", "true")
    assert r.returncode == 2 and "cannot enforce memory_mb" in r.stderr


def test_sigterm_is_forwarded_and_the_group_removed():
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "pipetune", "run", "--cores", "1", "--json",
                          "--", "sleep", "30"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        # Signal once the command itself runs (its gate released, the handler
        # installed), not after a fixed sleep: a loaded host starts Python slowly.
        import psutil

        deadline = time.monotonic() + 60
        while not any(c.name() == "sleep" for c in psutil.Process(p.pid).children(recursive=True)):
            assert time.monotonic() < deadline and p.poll() is None, "command never started"
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()  # by PID: the pipetune run we started
            p.wait()
    assert p.returncode == 128 + signal.SIGTERM, err
    assert last_json(out)["signal"] == "SIGTERM"
