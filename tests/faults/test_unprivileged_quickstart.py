"""An unprivileged user's whole quickstart: the README's main job (`make
run`'s ``pipetune tune deepcnn-mnist``, smaller) run by ``nobody``.

``nobody`` cannot write cgroups, and perf counts only its own processes'
software events at this host's ``perf_event_paranoid``.  The job must still
record every epoch of every trial, each trial must say what it lost (CPU
affinity instead of a cgroup: no CPU quota, no memory limit), no cgroup may
be left behind, and nothing may be written outside the user's
``PIPETUNE_HOME`` (the job runs with private /tmp, /var/tmp and /dev/shm;
what is left there is listed afterwards).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.nobody import NOBODY_UID, nobody_namespace

from pipetune.store import open_store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SAMPLES, EPOCHS = 2, 3
CGROUP_ROOT = Path("/sys/fs/cgroup")
# torch's own per-user compile cache: `torch.optim` imports torch._dynamo,
# which makes an (empty) gettempdir()/torchinductor_USER whatever the caller.
TORCH_CACHE = "torchinductor_nobody"


def _paranoid() -> int:
    return int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())


def _nobodys_cgroups() -> list[Path]:
    found: list[Path] = []
    for hierarchy in CGROUP_ROOT.iterdir():
        for dirpath, dirnames, _ in os.walk(hierarchy):
            for name in dirnames:
                path = Path(dirpath, name)
                try:
                    if path.stat().st_uid == NOBODY_UID:
                        found.append(path)
                except OSError:
                    pass
    return found


def test_nobody_runs_the_quickstart_job_and_every_epoch_is_recorded() -> None:
    if _paranoid() > 2:
        pytest.skip("perf_event_paranoid > 2: no perf at all for other users here")
    if shutil.which("perf") is None:
        pytest.skip("perf is not installed")
    with nobody_namespace(private_tmp=True) as (prefix, work):
        home = work / "home"
        home.mkdir()
        os.chown(home, NOBODY_UID, NOBODY_UID)
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": str(home),
               "PIPETUNE_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1",
               "RAY_TMPDIR": str(home / "ray")}
        before = set(_nobodys_cgroups())
        r = subprocess.run(
            [*prefix, sys.executable, "-m", "pipetune", "tune", "deepcnn-mnist",
             "--mode", "pipetune", "--samples", str(SAMPLES), "--epochs", str(EPOCHS),
             "--set", "max_train_samples=256", "--job", "nobody-quickstart", "--json"],
            capture_output=True, text=True, env=env, timeout=600,
        )
        assert r.returncode == 0, r.stderr[-4000:]
        result = json.loads(r.stdout)
        strays = (work / "strays").read_text().split()
        owners = {p.stat().st_uid for p in home.rglob("*") if not p.is_symlink()}

        store = open_store(f"sqlite:///{home / 'pipetune.db'}", spool_root=work / "spool")
        try:
            epochs = store.epochs("nobody-quickstart")
            trials = store.query("trial", {"job": "nobody-quickstart"})
            jobs = store.query("job", {"job": "nobody-quickstart"})
        finally:
            store.close()

    assert result["spooled"] == 0
    ran = {t["trial"]: t for t in result["trials"]}
    assert len(ran) == SAMPLES and all(t["error"] is None for t in ran.values())
    # Every trial x every epoch is in the store, once.
    got = sorted(zip(epochs["trial"], epochs["epoch"].astype(int), strict=True))
    assert got == sorted((t, e) for t in ran for e in range(EPOCHS))
    assert set(jobs["event"]) == {"start", "end"}
    # Each trial says what it lost: no cgroup for nobody, so CPU affinity.
    running = trials[trials["status"] == "running"].set_index("trial")
    assert set(running.index) == set(ran)
    assert set(running["controller"]) == {"affinity"}
    for degraded in running["degraded"]:
        assert "cgroups not writable" in degraded and "no memory limit" in degraded, degraded
    for t in ran.values():
        for h in t["history"]:
            assert h["pt_controller"] == "affinity"
            assert "no CPU quota" in h["pt_degraded"], h
    assert set(trials[trials["status"] != "running"]["status"]) == {"done"}
    # Nothing left behind, nothing written outside the home.
    assert set(_nobodys_cgroups()) == before
    assert owners == {NOBODY_UID}
    assert strays in ([], [f"/tmp/{TORCH_CACHE}"]), strays


def test_a_home_ray_cannot_write_in_ends_in_one_line(tmp_path: Path) -> None:
    """A system user's HOME is often not writable (nobody's is /nonexistent):
    Ray keeps its token under it, and `pipetune tune` says so in one line."""
    home_file = tmp_path / "not-a-folder"
    home_file.write_text("")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home_file),
           "PIPETUNE_HOME": str(tmp_path / "pt"), "RAY_TMPDIR": str(tmp_path / "ray")}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(
        [sys.executable, "-m", "pipetune", "tune", "lenet5-mnist", "--samples", "1",
         "--epochs", "1", "--set", "max_train_samples=64"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("pipetune tune: error: Ray could not start"), last
    assert str(home_file) in last and "HOME" in last, last
