"""RaplMeter against fake powercap trees (this host has no RAPL).

The trees mirror what intel_rapl_common exposes on a two-socket Xeon: package
zones with core/dram sub-zones, a psys zone and an MMIO duplicate that must
not be counted.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from pipetune.energy import (
    EnergyUnavailableError,
    EstimatedMeter,
    RaplMeter,
    detect_meters,
    rapl_available,
    rapl_zones,
)
from pipetune.energy.rapl import MAX_POLL_INTERVAL_S, MIN_POLL_INTERVAL_S

RANGE_UJ = 262_143_328_850  # max_energy_range_uj of a real Xeon package zone


def make_zone(root: Path, dirname: str, name: str, energy_uj: int, *,
              range_uj: int = RANGE_UJ, max_power_uw: int | None = None) -> Path:
    zone = root / "sys/class/powercap" / dirname
    zone.mkdir(parents=True)
    (zone / "name").write_text(name + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{range_uj}\n")
    (zone / "enabled").write_text("1\n")
    if max_power_uw is not None:
        (zone / "constraint_0_max_power_uw").write_text(f"{max_power_uw}\n")
    return zone


def set_uj(zone: Path, value: int) -> None:
    """Replace the counter atomically, as the kernel does (a poll never sees it half-written)."""
    tmp = zone / ".energy_uj.tmp"
    tmp.write_text(f"{value}\n")
    os.replace(tmp, zone / "energy_uj")


@pytest.fixture
def two_socket(tmp_path: Path) -> dict[str, Path]:
    """package-0 (+core, +dram), package-1 (+dram), psys, an MMIO duplicate."""
    (tmp_path / "sys/class/powercap/intel-rapl").mkdir(parents=True)  # the control type
    return {
        "pkg0": make_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000),
        "core0": make_zone(tmp_path, "intel-rapl:0:0", "core", 500_000),
        "dram0": make_zone(tmp_path, "intel-rapl:0:1", "dram", 2_000_000, range_uj=65_532_610_987),
        "pkg1": make_zone(tmp_path, "intel-rapl:1", "package-1", 3_000_000),
        "dram1": make_zone(tmp_path, "intel-rapl:1:0", "dram", 4_000_000, range_uj=65_532_610_987),
        "psys": make_zone(tmp_path, "intel-rapl:2", "psys", 9_000_000),
        "mmio": make_zone(tmp_path, "intel-rapl-mmio:0", "package-0", 7_000_000),
    }


def test_zones_are_packages_and_dram_only(tmp_path: Path, two_socket: dict[str, Path]) -> None:
    zones = rapl_zones(tmp_path)
    assert [z.label for z in zones] == ["package-0", "package-0/dram", "package-1",
                                        "package-1/dram"]
    assert zones[1].max_energy_range_uj == 65_532_610_987
    assert rapl_available(tmp_path) is True


def test_read_sums_packages_and_dram(tmp_path: Path, two_socket: dict[str, Path]) -> None:
    with RaplMeter(tmp_path, poll_interval_s=0) as meter:
        assert meter.read_j() == 0.0
        set_uj(two_socket["pkg0"], 1_000_000 + 10_000_000)  # +10 J
        set_uj(two_socket["dram0"], 2_000_000 + 1_500_000)  # +1.5 J
        set_uj(two_socket["pkg1"], 3_000_000 + 20_000_000)  # +20 J
        set_uj(two_socket["dram1"], 4_000_000 + 500_000)  # +0.5 J
        set_uj(two_socket["core0"], 99_000_000)  # inside package-0: ignored
        set_uj(two_socket["psys"], 99_000_000)  # overlaps: ignored
        set_uj(two_socket["mmio"], 99_000_000)  # duplicate: ignored
        assert meter.read_j() == pytest.approx(32.0)
        assert meter.read_zones_j() == pytest.approx(
            {"package-0": 10.0, "package-0/dram": 1.5, "package-1": 20.0, "package-1/dram": 0.5})
        assert meter.method == "rapl"
        assert "package-1/dram" in meter.description


def test_wrap_around_is_added_not_subtracted(tmp_path: Path) -> None:
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", RANGE_UJ - 3_000_000)
    with RaplMeter(tmp_path, poll_interval_s=0) as meter:
        set_uj(zone, RANGE_UJ - 1_000_000)  # +2 J, no wrap
        assert meter.read_j() == pytest.approx(2.0)
        set_uj(zone, 4_000_000)  # wrapped: +1 J to the top, +4 J after it
        assert meter.read_j() == pytest.approx(7.0)
        assert meter.wraps == 1
        set_uj(zone, 5_000_000)
        assert meter.read_j() == pytest.approx(8.0)


def test_poll_thread_catches_every_wrap_between_reads(tmp_path: Path) -> None:
    """Without the thread, two wraps between reads would look like one small step."""
    range_uj = 10_000_000
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", 0, range_uj=range_uj)
    with RaplMeter(tmp_path, poll_interval_s=0.01) as meter:
        expected_uj = 0
        value = 0
        for _ in range(5):  # 5 steps of 0.6 x range: three wraps
            value = (value + 6_000_000) % range_uj
            expected_uj += 6_000_000
            seen = meter.polls
            set_uj(zone, value)
            deadline = time.monotonic() + 10
            while meter.polls < seen + 2 and time.monotonic() < deadline:
                time.sleep(0.005)  # two polls: at least one began after the write
        # The counter ends where it began (6, 2, 8, 4, 0 in units of 1e6 uJ):
        # a meter that only read at the end would say 0 J.
        assert value == 0
        assert meter.read_j() == pytest.approx(expected_uj / 1e6)
        assert meter.wraps == 3


def test_poll_interval_is_sized_from_the_shortest_wrap(tmp_path: Path) -> None:
    make_zone(tmp_path, "intel-rapl:0", "package-0", 0, max_power_uw=125_000_000)
    with RaplMeter(tmp_path) as meter:  # 262 kJ at 125 W: 35 min to wrap
        assert meter.poll_interval_s == MAX_POLL_INTERVAL_S
    small = tmp_path / "small"
    make_zone(small, "intel-rapl:0", "package-0", 0, range_uj=400_000_000,
              max_power_uw=100_000_000)  # 400 J at 100 W: 4 s to wrap
    with RaplMeter(small) as meter:
        assert meter.poll_interval_s == pytest.approx(1.0)
    tiny = tmp_path / "tiny"
    make_zone(tiny, "intel-rapl:0", "package-0", 0, range_uj=1_000)
    with RaplMeter(tiny) as meter:
        assert meter.poll_interval_s == MIN_POLL_INTERVAL_S


def test_missing_tree_says_why(tmp_path: Path) -> None:
    reason = rapl_available(tmp_path)
    assert isinstance(reason, str) and "does not exist" in reason
    with pytest.raises(EnergyUnavailableError, match="does not exist"):
        RaplMeter(tmp_path)
    (tmp_path / "sys/class/powercap/intel-rapl").mkdir(parents=True)
    make_zone(tmp_path, "intel-rapl:0", "psys", 0)
    reason = rapl_available(tmp_path)
    assert isinstance(reason, str) and "no intel-rapl package zones" in reason


def test_this_host_reports_why_it_has_no_rapl() -> None:
    reason = rapl_available()
    if reason is True:
        pytest.skip("this host has RAPL")
    assert isinstance(reason, str) and reason.startswith("no RAPL")


def test_missing_range_is_refused(tmp_path: Path) -> None:
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    (zone / "max_energy_range_uj").unlink()
    with pytest.raises(EnergyUnavailableError, match="max_energy_range_uj"):
        RaplMeter(tmp_path)


def test_counter_vanishing_mid_run_keeps_last_value(tmp_path: Path) -> None:
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    with RaplMeter(tmp_path, poll_interval_s=0) as meter:
        set_uj(zone, 3_000_000)
        assert meter.read_j() == pytest.approx(3.0)
        (zone / "energy_uj").unlink()
        assert meter.read_j() == pytest.approx(3.0)
        set_uj(zone, 4_000_000)
        assert meter.read_j() == pytest.approx(4.0)


def test_detect_prefers_rapl_over_the_estimate(tmp_path: Path, two_socket: dict[str, Path]
                                               ) -> None:
    meters = detect_meters(sysfs_root=tmp_path, nvml=_NoNvml())
    try:
        assert [m.method for m in meters] == ["rapl"]
    finally:
        for m in meters:
            m.close()
    meters = detect_meters(sysfs_root=tmp_path / "nothing", nvml=_NoNvml())
    assert len(meters) == 1 and isinstance(meters[0], EstimatedMeter)


class _NoNvml:
    class NVMLError(Exception):
        pass

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's name
        raise self.NVMLError("Driver Not Loaded")


def _check_as(uid: int | None, root: Path) -> dict[str, object]:
    """Probe ``root`` in a forked child running as ``uid`` (None: as we are)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, probe, report, exit without cleanup
        code = 1
        try:
            os.close(read_fd)
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            out: dict[str, object] = {"available": rapl_available(root)}
            try:
                RaplMeter(root, poll_interval_s=0)
                out["meter"] = "opened"
            except EnergyUnavailableError as e:
                out["meter"] = str(e)
            out["detected"] = [m.method for m in detect_meters(sysfs_root=root,
                                                               nvml=_NoNvml())]
            os.write(write_fd, json.dumps(out).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        done_pid, status = os.waitpid(pid, os.WNOHANG)
        if done_pid:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, 9)  # the child we forked, by PID
        os.waitpid(pid, 0)
        os.close(read_fd)
        pytest.fail("privilege-dropped probe hung")
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


def test_unreadable_counter_as_non_root_is_a_clear_reason() -> None:
    """Since Linux 5.10 energy_uj is 0400 root: a user process must be told so.

    Root reads any file, so as root the probe runs in a forked child that drops
    to ``nobody`` on a world-traversable tree (a real permission check, no
    patched ``open``).
    """
    with tempfile.TemporaryDirectory(prefix="pipetune-rapl-") as tmp:
        root = Path(tmp)
        zone = make_zone(root, "intel-rapl:0", "package-0", 123)
        for p in [root, *root.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o444)
        if os.geteuid() == 0:
            os.chmod(zone / "energy_uj", 0o400)  # as the kernel has it since 5.10
            assert rapl_available(root) is True  # root may read it...
            out = _check_as(65534, root)  # ...nobody may not
        else:
            os.chmod(zone / "energy_uj", 0o000)
            out = _check_as(None, root)
    assert isinstance(out["available"], str)
    assert "permission denied" in out["available"] and "root" in out["available"]
    assert "permission denied" in str(out["meter"])
    assert out["detected"] == ["estimated"]
