"""PowerSampler into a real SQLite store."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pipetune.energy import EnergyMeter, EstimatedMeter, PowerSampler
from pipetune.errors import ConfigError
from pipetune.store import open_store


class LinearMeter(EnergyMeter):
    """Joules growing at exactly ``watts`` on the monotonic clock: checks the arithmetic."""

    def __init__(self, method: str, watts: float) -> None:
        self.method = method  # type: ignore[misc]
        self.watts = watts
        self.t0 = time.monotonic()

    def read_j(self) -> float:
        return (time.monotonic() - self.t0) * self.watts


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = open_store("sqlite:///" + str(tmp_path / "s.db"), spool_root=tmp_path / "spool")
    yield s
    s.close()


def test_watts_of_a_busy_node_go_to_the_power_measurement(store, burner) -> None:  # type: ignore[no-untyped-def]
    meter = EstimatedMeter(watts_per_cpu=10.0)
    busy = burner()
    with PowerSampler(store, [meter], node="n1", interval_s=0.1) as sampler:
        busy.burn(0.5)
    written = sampler.points_written
    assert store.flush()
    df = store.power(node="n1")
    assert len(df) == written >= 2
    assert set(df["source"]) == {"estimated"}
    assert (df["watts"] >= 0).all()
    # The child burned a whole CPU for a while: 10 W at least in the best tick, and
    # never more than every logical CPU busy at 10 W (+ tick jitter).
    assert df["watts"].max() >= 5.0
    assert df["watts"].max() <= 10.0 * (os.cpu_count() or 1) * 1.5
    assert df["time"].is_monotonic_increasing


def test_sums_meters_and_labels_them(store) -> None:  # type: ignore[no-untyped-def]
    meters = [LinearMeter("rapl", 80.0), LinearMeter("nvml", 250.0)]
    sampler = PowerSampler(store, meters, node="gpu-node", interval_s=0.05)
    assert sampler.method == "rapl+nvml"
    sampler.start()
    sampler.start()  # idempotent
    deadline = time.monotonic() + 10
    while sampler.points_written < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    sampler.stop()
    sampler.stop()
    stopped_at = sampler.points_written
    time.sleep(0.15)
    assert sampler.points_written == stopped_at  # nothing after stop
    assert store.flush()
    df = store.power(node="gpu-node")
    assert len(df) == stopped_at >= 3
    assert set(df["source"]) == {"rapl+nvml"}
    assert df["watts"].to_list() == pytest.approx([330.0] * len(df), rel=0.1)


def test_one_hertz_by_default_and_bad_interval_refused(store) -> None:  # type: ignore[no-untyped-def]
    assert PowerSampler(store, [EstimatedMeter()]).interval_s == 1.0
    with pytest.raises(ConfigError, match="interval_s"):
        PowerSampler(store, [EstimatedMeter()], interval_s=0)


def test_no_meters_writes_nothing(store) -> None:  # type: ignore[no-untyped-def]
    with PowerSampler(store, [], node="bare", interval_s=0.05) as sampler:
        time.sleep(0.15)
    assert sampler.points_written == 0
    assert sampler.method == "none"
