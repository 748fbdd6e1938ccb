"""A trial's GPUs through the production path, against a fake NVML (this host has none).

``pynvml`` is replaced by a fake module in ``sys.modules`` — what
``power_limit_knob()`` and ``detect_meters()`` import on a real host — and
``CUDA_VISIBLE_DEVICES`` names two fake GPUs; then :func:`pipetune.wrap`'s
trainable runs in this process (outside Tune it reports nowhere) and the
user's function looks at what it was given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from typing import Any

import pytest
from energy_fake_nvml import FakeGpu, FakeNvml

import pipetune
from pipetune.config import Settings
from pipetune.errors import NotSupportedError
from pipetune.types import SystemSpace


class PowerNvml(FakeNvml):
    """The fake NVML plus the power-limit calls (milliwatts, as pynvml)."""

    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_INVALID_ARGUMENT = 2

    def __init__(self, gpus: list[FakeGpu]) -> None:
        super().__init__(gpus)
        self.limits_mw = {id(g): 300_000 for g in gpus}
        self.sets: list[tuple[int, int]] = []

    def nvmlDeviceGetPowerManagementLimit(self, h: FakeGpu) -> int:  # noqa: N802
        return self.limits_mw[id(h)]

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: FakeGpu) -> tuple[int, int]:  # noqa: N802
        return 100_000, 400_000

    def nvmlDeviceSetPowerManagementLimit(self, h: FakeGpu, mw: int) -> None:  # noqa: N802
        self.sets.append((self.gpus.index(h), mw))
        self.limits_mw[id(h)] = mw

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: FakeGpu) -> int:  # noqa: N802
        return 300_000


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> PowerNvml:
    nvml = PowerNvml([FakeGpu(energy_mj=1_000_000), FakeGpu(energy_mj=5_000_000)])
    module = types.ModuleType("pynvml")
    for name in dir(nvml):
        if not name.startswith("_"):
            setattr(module, name, getattr(nvml, name))
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    return nvml


def test_trial_sees_its_gpu_count_and_power_limit_through_wrap(
    fake_nvml: PowerNvml, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    # Outside Tune: the trainable asks Ray for its node id, which would start
    # a Ray of its own here (and the session's Ray fixture could not start).
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: types.SimpleNamespace(get_node_id=lambda: "node-id"))
    settings = Settings.load({"home": str(tmp_path / "home"), "controller": "dry-run"}, env={})
    seen: dict[str, Any] = {}

    def train(config: dict[str, Any]) -> None:
        seen["visible"] = os.environ["CUDA_VISIBLE_DEVICES"]
        # A rank the trial starts now sees what the trial sees.
        seen["child"] = subprocess.run(
            [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
            capture_output=True, text=True, check=True).stdout.strip()
        seen["limit_mw"] = dict(fake_nvml.limits_mw)
        fake_nvml.gpus[0].energy_mj += 42_000  # the trial's GPU used 42 J this epoch
        seen["result"] = pipetune.report({"loss": 1.0, "epoch": 0}, steps=1)

    space = SystemSpace(cores=(1,), gpus=(1,))
    trainable = pipetune.wrap(train, space, mode="v1", settings=settings, gpu_power_w=150)
    trainable({"lr": 0.1})
    assert seen["visible"] == "0" and seen["child"] == "0"  # one of the two, set before fn ran
    assert seen["limit_mw"][id(fake_nvml.gpus[0])] == 150_000  # live, through NVML
    assert seen["limit_mw"][id(fake_nvml.gpus[1])] == 300_000  # not the trial's GPU
    result = seen["result"]
    assert result["pt_gpus"] == 1 and result["pt_gpu_power_w"] == 150
    assert "nvml" in result["pt_energy_method"] and result["pt_energy_j"] >= 42
    # The trial ended: its GPU's limit is back to what it was.
    assert fake_nvml.limits_mw[id(fake_nvml.gpus[0])] == 300_000


def test_power_limit_change_applies_at_the_next_boundary(fake_nvml: PowerNvml) -> None:
    from pipetune.tune.gpus import TrialGpus

    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    gpus = TrialGpus.open("t", 2, env=env)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and gpus.nvml_indices == [0, 1]
    gpus.request_power_w(200)
    assert fake_nvml.sets == []  # not before the boundary
    gpus.sync()
    assert fake_nvml.sets == [(0, 200_000), (1, 200_000)]
    gpus.request_power_w(50)  # below what the GPU accepts: refused, reported, not fatal
    gpus.sync()
    assert gpus.power_w is None and "outside 100-400 W" in gpus.report()["pt_gpu_reason"]
    gpus.close()
    assert fake_nvml.limits_mw[id(fake_nvml.gpus[1])] == 300_000


def test_more_gpus_than_visible_is_refused_at_trial_start(fake_nvml: PowerNvml) -> None:
    from pipetune.control.base import ControlInputError
    from pipetune.tune.gpus import TrialGpus

    with pytest.raises(ControlInputError, match="asks for 3 GPU"):
        TrialGpus.open("t", 3, env={"CUDA_VISIBLE_DEVICES": "0,1"})


def test_not_root_sets_the_limit_through_the_daemon_which_may_lack_the_endpoint(
    fake_nvml: PowerNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipetune.daemon.base import UnknownPathError
    from pipetune.daemon.client import DaemonClient, DaemonPowerLimit
    from pipetune.tune.gpus import TrialGpus

    calls: list[tuple[str, str, Any]] = []

    class OldDaemon(DaemonClient):
        def request(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
            calls.append((method, path, body))
            raise UnknownPathError(f"no endpoint {path}")

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    gpus = TrialGpus.open("t1", 1, power_w=150, daemon=OldDaemon("/nonexistent"),
                          env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert isinstance(gpus.knob, DaemonPowerLimit)
    # The knob claims the trial's GPUs first; an old daemon has no such endpoint.
    assert calls and calls[0][:2] == ("POST", "/trials/t1/gpus")
    assert calls[0][2] == {"gpus": [0]}
    assert gpus.power_w is None and "cannot set GPU power limits" in gpus.reason
    assert fake_nvml.sets == []  # never behind the daemon's back
    with pytest.raises(NotSupportedError, match="cannot set GPU power limits"):
        gpus.knob.set_w(0, 150)
    gpus.close()


def test_ranks_take_one_visible_gpu_each_with_nccl(monkeypatch: pytest.MonkeyPatch) -> None:
    """The device plan the worker ranks follow, with CUDA faked to two devices."""
    import torch

    from pipetune.parallel.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    plan = resolve_device("auto", 2)
    assert plan.backend == "nccl" and [str(plan.device(r)) for r in (0, 1)] == ["cuda:0", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", 2).backend == "gloo"
