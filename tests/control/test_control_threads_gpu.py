"""In-trial thread sync (real torch, in subprocesses) and the GPU helpers
(NVML through a fake object: this host has no GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from control_helpers import SLEEPER

from pipetune.control import (
    ControlInputError,
    GpuAllocator,
    NoPowerLimit,
    NvmlPowerLimit,
    cores_in_force,
    power_limit_knob,
    visible_devices_env,
)
from pipetune.errors import NotSupportedError, PrivilegeError
from pipetune.types import SystemConfig

ROOT = Path(__file__).resolve().parents[2]

SYNC = """
import json, os, sys, threading
import torch
from pipetune.control import sync_threads, cores_in_force
out = {}
os.sched_setaffinity(0, {int(sys.argv[1])})
out["in_force"] = cores_in_force()
out["set"] = sync_threads()
out["torch"] = torch.get_num_threads()
out["interop"] = torch.get_num_interop_threads()
torch.ones(256, 256) @ torch.ones(256, 256)
out["explicit"] = sync_threads(2)
out["torch2"] = torch.get_num_threads()
# per-thread: another thread does not see the main thread's setting change
seen = []
t = threading.Thread(target=lambda: seen.append(sync_threads(1)))
t.start(); t.join()
out["other_thread"] = seen[0]
out["interop2"] = torch.get_num_interop_threads()
print(json.dumps(out))
"""


def test_sync_threads_follows_affinity_in_the_training_thread():
    cpu = sorted(os.sched_getaffinity(0))[0]
    r = subprocess.run([sys.executable, "-c", SYNC, str(cpu)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="4"),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["in_force"] == 1 and out["set"] == 1 and out["torch"] == 1
    assert out["interop"] == 1  # first call, before any inter-op work: set too
    assert out["explicit"] == 2 and out["torch2"] == 2
    assert out["other_thread"] == 1
    assert out["interop2"] == 1  # not changed again once work ran


def test_sync_threads_rejects_nonsense():
    from pipetune.control import sync_threads
    from pipetune.errors import ConfigError

    with pytest.raises(ConfigError):
        sync_threads(0)


def test_cores_in_force_counts_a_cgroup_quota(tmp_path):
    # v2: a quota of 1.5 CPUs on 2 allowed CPUs -> 2; 0.5 -> 1.
    (tmp_path / "trial").mkdir()
    (tmp_path / "trial/cpu.max").write_text("50000 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/trial\n")
    assert cores_in_force(proc_cgroup=proc, cgroup_root=tmp_path) == 1
    (tmp_path / "trial/cpu.max").write_text("max 100000\n")
    assert cores_in_force(proc_cgroup=proc, cgroup_root=tmp_path) == len(os.sched_getaffinity(0))
    # v1: cpu.cfs_quota_us in the cpu hierarchy.
    (tmp_path / "cpu/pipetune/t").mkdir(parents=True)
    (tmp_path / "cpu/pipetune/t/cpu.cfs_quota_us").write_text("25000\n")
    (tmp_path / "cpu/pipetune/t/cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("1:cpu:/pipetune/t\n0::/\n")
    assert cores_in_force(proc_cgroup=proc, cgroup_root=tmp_path) == 1


def test_cores_in_force_inside_a_real_trial(v1, spawn, monkeypatch):
    """A process inside a trial group with a 2-CPU cpuset and a 0.5 CPU quota
    reads 1 core in force."""
    if len(v1.allowed_cpus()) < 2:
        pytest.skip("needs 2 CPUs")
    code = SLEEPER.replace('print("ready", flush=True)\ntime.sleep(600)',
                           'print("ready", flush=True)\nsys.stdin.readline()\n'
                           'from pipetune.control import cores_in_force\n'
                           'print(cores_in_force(), flush=True)\ntime.sleep(600)')
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    p = spawn(code)
    h = v1.open_trial("threads", [p.pid])
    try:
        v1.apply(h, SystemConfig(2), cpu_quota=0.5)
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "1"
    finally:
        v1.close_trial(h)


# -- GPUs --------------------------------------------------------------------


def test_visible_devices_env():
    env = visible_devices_env([1, 0], base={})
    assert env["CUDA_VISIBLE_DEVICES"] == "1,0"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    # Indices are relative to what this process already sees.
    env = visible_devices_env([1], base={"CUDA_VISIBLE_DEVICES": "2,3"})
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert visible_devices_env([], base={})["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(ControlInputError, match="only 2 GPU"):
        visible_devices_env([2], base={"CUDA_VISIBLE_DEVICES": "2,3"})
    with pytest.raises(ControlInputError, match="repeated"):
        visible_devices_env([0, 0], base={})


def test_gpu_allocator_is_disjoint_and_never_shares():
    a = GpuAllocator(4)
    assert a.allocate("t1", 2) == [0, 1]
    assert a.allocate("t2", 1) == [2]
    with pytest.raises(ControlInputError, match="1 of 4 free"):
        a.allocate("t3", 2)
    a.release("t1")
    assert a.allocate("t3", 2) == [0, 1]


class FakeNvmlError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeNvml:
    """What nvidia-ml-py exposes for power limits, for 2 GPUs (milliwatts)."""

    NVMLError = FakeNvmlError
    NVML_ERROR_INVALID_ARGUMENT = 2
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NO_PERMISSION = 4

    def __init__(self, gpus: int = 2, root: bool = True) -> None:
        self.limits = [300_000] * gpus
        self.root = root
        self.calls: list[str] = []
        self.inited = False

    def nvmlInit(self):
        self.inited = True

    def nvmlShutdown(self):
        self.inited = False

    def nvmlDeviceGetCount(self):
        return len(self.limits)

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("h", i)

    def nvmlDeviceGetPowerManagementLimit(self, h):
        return self.limits[h[1]]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h):
        return 300_000

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h):
        return (100_000, 350_000)

    def nvmlDeviceSetPowerManagementLimit(self, h, mw):
        self.calls.append(f"set {h[1]} {mw}")
        if not self.root:
            raise FakeNvmlError(self.NVML_ERROR_NO_PERMISSION)
        self.limits[h[1]] = mw


def test_nvml_power_limit_knob():
    nv = FakeNvml()
    knob = power_limit_knob(nv)
    assert isinstance(knob, NvmlPowerLimit) and knob.count() == 2
    assert knob.get_w(1) == 300.0
    assert knob.constraints_w(0) == (100.0, 350.0)
    assert knob.set_w(1, 175) == 175.0 and nv.limits == [300_000, 175_000]
    with pytest.raises(ControlInputError, match="outside 100-350 W"):
        knob.set_w(0, 400)
    with pytest.raises(ControlInputError, match="has 2 GPU"):
        knob.get_w(2)
    assert nv.calls == ["set 1 175000"]  # the refused ones never reached NVML
    assert knob.reset(1) == 300.0 and nv.limits[1] == 300_000
    knob.close()
    assert not nv.inited


def test_nvml_errors_are_translated():
    knob = NvmlPowerLimit(FakeNvml(root=False))
    with pytest.raises(PrivilegeError, match="no permission"):
        knob.set_w(0, 200)


def test_no_gpu_gives_an_object_that_says_why():
    class NoDriver(FakeNvml):
        def nvmlInit(self):
            raise FakeNvmlError(12)

    knob = power_limit_knob(NoDriver())
    assert isinstance(knob, NoPowerLimit) and knob.count() == 0
    with pytest.raises(NotSupportedError, match="GPU power limit unavailable"):
        knob.set_w(0, 100)
    knob = power_limit_knob(FakeNvml(gpus=0))
    assert isinstance(knob, NoPowerLimit) and "no GPU" in knob.reason


def test_real_nvml_on_this_host():
    """With nvidia-ml-py installed: a GPU host gives a working knob, this one
    an object that says why."""
    pytest.importorskip("pynvml")
    knob = power_limit_knob()
    if isinstance(knob, NoPowerLimit):
        assert knob.reason
        return
    lo, hi = knob.constraints_w(0)
    assert 0 < lo <= knob.get_w(0) <= hi
