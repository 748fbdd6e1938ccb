"""``pipetune tune`` on bad input and on Ctrl-C: one clear line, no traceback,
and the store says what happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipetune.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("lr=abc", "hyperparameter lr='abc': expected float"),
        ("no_such_knob=1", "takes no hyperparameter 'no_such_knob'"),
        ("dropout=1.5", "dropout=1.5: must be in [0, 1)"),
    ],
)
def test_bad_set_values_fail_before_ray_starts(
    item: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    running = ray.is_initialized()  # another test's session Ray may be up
    rc = main(["tune", "lenet5-mnist", "--samples", "1", "--epochs", "1", "--set", item])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and says in err, err
    assert ray.is_initialized() == running, "no Ray was started for a bad --set"


@pytest.mark.slow
def test_ctrl_c_ends_with_a_table_and_records_the_job_as_interrupted(tmp_path: Path) -> None:
    """A real job, a real SIGINT to its process group (what a terminal's
    Ctrl-C sends): the final table prints (no ``NoneType.__format__``), the
    exit code is 130, and the store's job point says interrupted, so the
    report calls the job PARTIAL, not complete."""
    from pipetune.report import load_job
    from pipetune.store import open_store

    home = tmp_path / "home"
    env = {**os.environ, "PIPETUNE_HOME": str(home), "PYTHONPATH": str(REPO)}
    job = "ctrl-c-job"
    cmd = [sys.executable, "-m", "pipetune", "tune", "lenet5-mnist", "--mode", "v1",
           "--samples", "3", "--epochs", "30", "--space", "cores=1", "--job", job,
           "--set", "max_train_samples=256"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"sqlite:///{home / 'pipetune.db'}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (home / "pipetune.db").exists():
                store = open_store(url, spool_root=tmp_path / "spool")
                n = len(store.epochs(job))
                store.close()
                if n >= 2:
                    break
            time.sleep(1)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert "Traceback" not in out + err, err[-3000:]
    assert proc.returncode == 130, err[-3000:]
    assert "system config" in out and f"job {job} was interrupted" in out
    store = open_store(url, spool_root=tmp_path / "spool")
    try:
        events = list(store.query("job", {"job": job})["event"])
        report = load_job(store, job)
    finally:
        store.close()
    assert events == ["start", "interrupted"]
    assert report.partial and report.interrupted


def test_space_without_cores_keeps_the_default_cores_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # lr=abc stops the job before Ray starts, after the space was read.
    rc = main(["tune", "lenet5-mnist", "--space", "memory_mb=64", "--set", "lr=abc"])
    out = capsys.readouterr().out
    cpus = os.cpu_count() or 1
    cores = ",".join(str(c) for c in sorted({1, cpus}))
    assert rc == 2
    assert f"system space: cores={cores} memory_mb=64 gpus=0" in out
    assert f"default {cpus}c/64m/0g" in out
