"""The EnergyMeter contract, run against every meter (fakes where this host lacks the hardware)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from energy_fake_nvml import FakeGpu, FakeNvml

from pipetune.energy import METHODS, EnergyMeter, EstimatedMeter, NvmlMeter, RaplMeter

Advance = Callable[[int], None]  # make the source use N more microjoules (or do work)


def _rapl(tmp_path: Path) -> tuple[EnergyMeter, Advance, float]:
    zone = tmp_path / "sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("1000000000\n")  # 1 kJ: wraps in this test
    (zone / "energy_uj").write_text("999000000\n")
    state = {"uj": 999_000_000}
    lock = threading.Lock()

    def advance(uj: int) -> None:
        with lock:
            state["uj"] = (state["uj"] + uj) % 1_000_000_000
            tmp = zone / f".tmp{threading.get_ident()}"
            tmp.write_text(f"{state['uj']}\n")
            os.replace(tmp, zone / "energy_uj")

    return RaplMeter(tmp_path, poll_interval_s=0.001), advance, 1e-6


def _nvml(tmp_path: Path) -> tuple[EnergyMeter, Advance, float]:
    gpu = FakeGpu(energy_mj=0)
    lock = threading.Lock()

    def advance(uj: int) -> None:
        with lock:
            assert gpu.energy_mj is not None
            gpu.energy_mj += uj // 1000

    return NvmlMeter(FakeNvml([gpu]), poll_interval_s=0), advance, 1e-6


def _estimated(tmp_path: Path) -> tuple[EnergyMeter, Advance, float]:
    return EstimatedMeter([os.getpid()]), lambda uj: None, float("nan")


BACKENDS = {"rapl": _rapl, "nvml": _nvml, "estimated": _estimated}


@pytest.fixture(params=sorted(BACKENDS))
def meter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[
        tuple[EnergyMeter, Advance, float]]:
    made = BACKENDS[request.param](tmp_path)
    yield made
    made[0].close()


def test_labels_and_description(meter: tuple[EnergyMeter, Advance, float]) -> None:
    m, _, _ = meter
    assert m.method in METHODS
    assert m.description and m.description in repr(m)


def test_monotonic_and_exact_under_concurrent_readers(
        meter: tuple[EnergyMeter, Advance, float]) -> None:
    """Four readers and one writer at once: readings never go back, none is lost
    or counted twice (for the estimate: never back, and it grows with work)."""
    m, advance, j_per_uj = meter
    start = m.read_j()
    assert start >= 0.0
    backwards: list[float] = []
    counter = j_per_uj == j_per_uj  # not NaN: a counter source, exact
    reads = 300 if counter else 50  # a process-tree scan costs ms: fewer

    def reader() -> None:
        last = m.read_j()
        for _ in range(reads):
            now = m.read_j()
            if now < last:
                backwards.append(last - now)
            last = now

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(400):
        advance(5_000_000)  # 5 J per step, 2 kJ in all: two wraps of the fake RAPL range
    for t in threads:
        t.join(timeout=60)
    assert not backwards
    total = m.read_j() - start
    if counter:
        assert total == pytest.approx(400 * 5_000_000 * j_per_uj)
    else:
        assert total > 0.0  # this process did the reading and writing work


def test_close_is_idempotent_and_keeps_the_last_value(
        meter: tuple[EnergyMeter, Advance, float]) -> None:
    m, advance, _ = meter
    advance(1_000_000)
    last = m.read_j()
    m.close()
    m.close()
    assert m.read_j() >= last
