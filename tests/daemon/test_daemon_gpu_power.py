"""GPU power limits through the node daemon: a real daemon process on a real
socket whose ``pynvml`` is a fake (tests/daemon/fake_nvml: this host has no
GPU), the "hardware" a JSON file the test reads back.

A trial claims its GPUs (``POST /v2/trials/ID/gpus``), sets and reads their
limit (``POST /v2/trials/ID/gpu_power``); a GPU it did not claim, another
trial's GPU, a GPU another user computes on and another user's trial are
refused; the limit the GPU had comes back when the trial closes and when the
daemon stops.  The last test is the whole path of a trial that is not root:
its :class:`~pipetune.tune.gpus.TrialGpus` sets the limit through the daemon.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.daemons import DAEMON_TESTS, PYTHON, ROOT, Daemons, child_env, wait_until
from support.nobody import setpriv_prefix

from pipetune.control.base import ControlInputError
from pipetune.daemon.base import BadRequestError, TrialConflictError
from pipetune.errors import NotSupportedError, PrivilegeError

FAKE_NVML = DAEMON_TESTS / "fake_nvml"
DEFAULT_MW = 300_000


def _gpus(path: Path, n: int, pids: dict[int, list[int]] | None = None) -> Path:
    gpus = [{"limit_mw": DEFAULT_MW, "min_mw": 100_000, "max_mw": 400_000,
             "default_mw": DEFAULT_MW, "pids": (pids or {}).get(i, []), "energy_mj": 0}
            for i in range(n)]
    path.write_text(json.dumps({"gpus": gpus, "sets": []}))
    path.chmod(0o644)
    return path


def _limits_w(path: Path) -> list[float]:
    return [g["limit_mw"] / 1000 for g in json.loads(path.read_text())["gpus"]]


def _nvml_env(state: Path) -> dict[str, str]:
    return {"PYTHONPATH": f"{FAKE_NVML}:{ROOT}", "PIPETUNE_FAKE_NVML": str(state)}


def test_a_trial_sets_reads_and_gets_back_the_limit_of_its_own_gpus_only(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    state = _gpus(daemons.folder / "nvml.json", 2)
    d = daemons.recording(env=_nvml_env(state))
    other = subprocess.Popen(["sleep", "60"])
    try:
        c = d.client
        c.register(job="j", trial="a", pids=[sleeper.pid])
        c.register(job="j", trial="b", pids=[other.pid])
        with pytest.raises(PrivilegeError, match="not trial 'a'.*claim it first") as refused:
            c.gpu_power("a", 0, 150)
        assert refused.value.status == 403  # type: ignore[attr-defined]

        assert c.claim_gpus("a", [0]) == {"trial": "a", "gpus": [0]}
        with pytest.raises(TrialConflictError, match=r"\[0\] already belong to a trial"):
            c.claim_gpus("b", [0])
        c.claim_gpus("b", [1])
        assert c.trial("a")["gpus"] == [0]

        set_ = c.gpu_power("a", 0, 150)
        assert set_ == {"index": 0, "watts": 150.0, "min_w": 100.0, "max_w": 400.0}
        assert _limits_w(state) == [150.0, 300.0]  # only the trial's GPU
        assert c.gpu_power("a", 0)["watts"] == 150.0  # read back
        with pytest.raises(PrivilegeError, match="GPU 1 is not trial 'a'"):
            c.gpu_power("a", 1, 150)  # b's
        with pytest.raises(ControlInputError, match="outside 100-400 W"):
            c.gpu_power("a", 0, 50)
        with pytest.raises(ControlInputError, match="node has 2 GPU"):
            c.claim_gpus("a", [0, 5])
        for body in ({"watts": 150}, {"index": "0"}, {"index": -1},
                     {"index": 0, "watts": -5}, {"index": 0, "watts": "high"}):
            with pytest.raises(BadRequestError) as bad:
                c.request("POST", "/trials/a/gpu_power", body)
            assert bad.value.status == 400, body  # type: ignore[attr-defined]
        with pytest.raises(BadRequestError, match="repeats"):
            c.claim_gpus("a", [0, 0])
        assert _limits_w(state) == [150.0, 300.0]  # nothing refused changed anything

        c.close("a")
        assert _limits_w(state) == [300.0, 300.0]  # back when the trial closed
        c.gpu_power("b", 1, 250)
        assert _limits_w(state) == [300.0, 250.0]
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        assert _limits_w(state) == [300.0, 300.0]  # and when the daemon stops
        sets = json.loads(state.read_text())["sets"]
        assert sets == [[0, 150_000], [0, 300_000], [1, 250_000], [1, 300_000]]
    finally:
        other.kill()
        other.wait()


def test_a_daemon_that_died_leaves_no_gpu_throttled(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    state = _gpus(daemons.folder / "nvml.json", 1)
    d = daemons.recording(env=_nvml_env(state))
    d.client.register(job="j", trial="a", pids=[sleeper.pid])
    d.client.claim_gpus("a", [0])
    d.client.gpu_power("a", 0, 120)
    d.signal(signal.SIGKILL)
    d.wait()
    assert _limits_w(state) == [120.0]
    again = daemons.recording(env=_nvml_env(state))
    assert again.client.health()["recovered"]["restored_gpus"] == 1
    assert _limits_w(state) == [300.0]


def test_no_nvml_on_the_node_is_501_with_the_reason(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    d = daemons.recording()  # the real pynvml, and no GPU driver on this host
    d.client.register(job="j", trial="a", pids=[sleeper.pid])
    with pytest.raises(NotSupportedError, match="cannot set GPU power limits") as no:
        d.client.claim_gpus("a", [0])
    assert no.value.status == 501  # type: ignore[attr-defined]


NOBODY_TRIAL = r"""
import json, os, sys
from pipetune.daemon import DaemonClient
from pipetune.daemon.base import TrialConflictError
from pipetune.errors import PrivilegeError
from pipetune.tune.gpus import TrialGpus

c = DaemonClient(sys.argv[1], timeout_s=10)
out = {"uid": os.geteuid()}
c.register(job="j", trial="mine", pids=[os.getpid()])
gpus = TrialGpus.open("mine", 1, power_w=150, daemon=c, env={"CUDA_VISIBLE_DEVICES": "0,1,2"})
out["knob"] = gpus.knob.name
out["report"] = gpus.report()
for name, call in (("roots_trial", lambda: c.gpu_power("roots", 1, 150)),
                   ("held_gpu", lambda: c.claim_gpus("mine", [0, 1])),
                   ("busy_gpu", lambda: c.claim_gpus("mine", [0, 2]))):
    try:
        call()
        out[name] = "accepted"
    except (PrivilegeError, TrialConflictError) as e:
        out[name] = [type(e).__name__, e.status, str(e)]
out["described"] = c.trial("mine")["gpus"]
c.close("mine")  # the trial ends without giving the limit back itself
print(json.dumps(out))
"""


def test_a_trial_not_root_sets_its_limit_through_the_daemon(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    """The whole path of a trial running as nobody: TrialGpus picks the
    daemon's knob, which claims the trial's GPU and sets its limit; the
    daemon refuses root's trial, root's GPU and a GPU root computes on, and
    gives the limit back when the trial closes."""
    prefix = setpriv_prefix()
    # GPU 1 is held by root's trial; root's sleeper computes on GPU 2.
    state = _gpus(daemons.folder / "nvml.json", 3, pids={2: [sleeper.pid]})
    d = daemons.recording(env=_nvml_env(state))
    root_trial = subprocess.Popen(["sleep", "60"])
    try:
        d.client.register(job="j", trial="roots", pids=[root_trial.pid])
        d.client.claim_gpus("roots", [1])
        out = subprocess.run(
            [*prefix, PYTHON, "-c", NOBODY_TRIAL, str(daemons.socket)],
            capture_output=True, text=True, timeout=120, env=child_env(HOME="/tmp"),
            cwd="/tmp",
        )
        assert out.returncode == 0, out.stderr
        got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        assert (got["uid"], got["knob"]) == (65534, "daemon")
        assert got["report"]["pt_gpu_power_w"] == 150.0
        assert "pt_gpu_reason" not in got["report"]
        assert got["described"] == [0]
        assert got["roots_trial"][:2] == ["PrivilegeError", 403]
        assert got["held_gpu"][:2] == ["TrialConflictError", 409]
        assert got["busy_gpu"][:2] == ["PrivilegeError", 403]
        assert "GPU 2 runs process" in got["busy_gpu"][2]
        sets = json.loads(state.read_text())["sets"]
        assert sets == [[0, 150_000], [0, DEFAULT_MW]]  # set by the daemon, then restored
        wait_until(lambda: _limits_w(state) == [300.0, 300.0, 300.0], what="limits restored")
    finally:
        root_trial.kill()
        root_trial.wait()
