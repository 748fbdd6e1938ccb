"""NvmlMeter against a fake NVML module (this host has no GPU), and the real
``pynvml`` on this host for the "why not" path."""

from __future__ import annotations

import os
import time

import pytest
from energy_fake_nvml import NOT_SUPPORTED, FakeGpu, FakeNvml, FakeNVMLError

from pipetune.energy import (
    EnergyUnavailableError,
    EstimatedMeter,
    NvmlMeter,
    TrialEnergy,
    detect_meters,
    nvml_available,
)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_energy_counter_per_gpu() -> None:
    nvml = FakeNvml([FakeGpu(energy_mj=5_000_000), FakeGpu(energy_mj=7_000)])
    meter = NvmlMeter(nvml, poll_interval_s=0)
    try:
        assert meter.read_j() == 0.0
        nvml.gpus[0].energy_mj += 120_000  # +120 J
        nvml.gpus[1].energy_mj += 30_500  # +30.5 J
        assert meter.read_gpus_j() == pytest.approx({0: 120.0, 1: 30.5})
        assert meter.read_j() == pytest.approx(150.5)
        nvml.gpus[1].energy_mj = 1_000  # driver reloaded: counts from zero again
        assert meter.read_gpus_j()[1] == pytest.approx(31.5)
        assert meter.description == "NVML GPU 0 (energy counter), GPU 1 (energy counter)"
    finally:
        meter.close()
    assert nvml.inits == 1 and nvml.shutdowns == 1
    meter.close()
    assert nvml.shutdowns == 1  # idempotent
    assert meter.read_j() == pytest.approx(151.5)  # last value after close


def test_power_times_time_where_the_counter_is_missing() -> None:
    clock = Clock()
    nvml = FakeNvml([FakeGpu(energy_mj=0), FakeGpu(energy_mj=None, power_mw=100_000)])
    meter = NvmlMeter(nvml, poll_interval_s=0, clock=clock)
    try:
        assert "GPU 1 (power x time)" in meter.description
        clock.t += 2.0
        nvml.gpus[1].power_mw = 200_000
        meter.poll()  # trapezoid: (100 + 200) / 2 W x 2 s = 300 J
        assert meter.read_gpus_j()[1] == pytest.approx(300.0)
        clock.t += 1.0  # 200 W for 1 s
        nvml.gpus[0].energy_mj = 50_000
        assert meter.read_gpus_j() == pytest.approx({0: 50.0, 1: 500.0})
    finally:
        meter.close()


def test_power_poll_thread_integrates_on_the_real_clock() -> None:
    """Constant 50 W: the thread's integral is 50 W x the time between open and read."""
    nvml = FakeNvml([FakeGpu(energy_mj=None, power_mw=50_000)])
    t0 = time.monotonic()
    meter = NvmlMeter(nvml, poll_interval_s=0.01)
    t1 = time.monotonic()
    try:
        time.sleep(0.2)
        t2 = time.monotonic()
        energy_j = meter.read_j()
        t3 = time.monotonic()
    finally:
        meter.close()
    assert 50.0 * (t2 - t1) <= energy_j <= 50.0 * (t3 - t0)


def test_gpu_without_counter_or_power_is_left_out() -> None:
    class NoPower(FakeNvml):
        def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:  # noqa: N802
            raise FakeNVMLError(NOT_SUPPORTED)

    nvml = NoPower([FakeGpu(energy_mj=None), FakeGpu(energy_mj=10)])
    with NvmlMeter(nvml, poll_interval_s=0) as meter:
        assert meter.gpu_indices == [1]  # type: ignore[attr-defined]
    with pytest.raises(EnergyUnavailableError, match="no NVML GPU can be measured"):
        NvmlMeter(NoPower([FakeGpu(energy_mj=None)]), poll_interval_s=0)


def test_unavailable_nvml_says_why() -> None:
    nvml = FakeNvml([], init_error=9)
    reason = nvml_available(nvml)
    assert isinstance(reason, str) and "Driver Not Loaded" in reason
    with pytest.raises(EnergyUnavailableError, match="Driver Not Loaded"):
        NvmlMeter(nvml)
    reason = nvml_available(FakeNvml([]))
    assert isinstance(reason, str) and "0 devices" in reason
    assert nvml_available(FakeNvml([FakeGpu(energy_mj=0)])) is True


def test_this_host_says_why_it_has_no_nvml() -> None:
    """The real pynvml (nvidia-ml-py) is installed here; the driver library is not."""
    reason = nvml_available()
    if reason is True:
        pytest.skip("this host has an NVIDIA GPU")
    assert isinstance(reason, str) and reason.startswith("no NVML")


def test_detect_adds_nvml_to_the_cpu_meter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    nvml = FakeNvml([FakeGpu(energy_mj=0)])
    meters = detect_meters(sysfs_root=tmp_path, nvml=nvml)
    try:
        assert [m.method for m in meters] == ["estimated", "nvml"]
    finally:
        for m in meters:
            m.close()


def test_trial_gets_the_energy_of_the_gpu_it_holds() -> None:
    """GPU energy goes in full to the holder: explicitly named, or found by PID in NVML."""
    me = os.getpid()
    nvml = FakeNvml([FakeGpu(energy_mj=0), FakeGpu(energy_mj=0, pids=[me])])
    cpu = EstimatedMeter()
    gpu = NvmlMeter(nvml, poll_interval_s=0)
    try:
        named = TrialEnergy([cpu, gpu], pids=[me], gpus=[0])
        found = TrialEnergy([cpu, gpu], pids=[me])
        other = TrialEnergy([cpu, gpu], pids=[me], gpus=[])
        nvml.gpus[0].energy_mj += 40_000
        nvml.gpus[1].energy_mj += 7_000
        e_named, label_named = named.interval()
        e_found, label_found = found.interval()
        e_other, label_other = other.interval()
    finally:
        gpu.close()
    # The CPU part (this process's share of the estimate) is small and the
    # same order for all three; the GPU part tells them apart.
    cpu_part = e_other
    assert label_other == "estimated"
    assert label_named == label_found == "estimated+nvml"
    assert e_named == pytest.approx(40.0 + cpu_part, abs=0.5)
    assert e_found == pytest.approx(7.0 + cpu_part, abs=0.5)


def test_the_fake_speaks_real_pynvml() -> None:
    """Every NVML call the fake answers exists in the installed nvidia-ml-py, and
    real errors carry ``.value`` as the fake's do (NvmlMeter relies on both)."""
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    calls = [name for name in dir(FakeNvml) if name.startswith("nvml")]
    assert "nvmlDeviceGetTotalEnergyConsumption" in calls
    assert [name for name in calls if not hasattr(pynvml, name)] == []
    assert pynvml.NVML_ERROR_NOT_SUPPORTED == NOT_SUPPORTED
    err = pynvml.NVMLError(NOT_SUPPORTED)
    assert err.value == NOT_SUPPORTED and isinstance(err, pynvml.NVMLError)
