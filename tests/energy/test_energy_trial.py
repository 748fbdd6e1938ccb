"""Per-trial attribution with real child processes as trials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipetune.energy import EnergyMeter, EstimatedMeter, RaplMeter, TrialEnergy


def test_two_trials_share_node_energy_by_cpu_time(burner) -> None:  # type: ignore[no-untyped-def]
    heavy, light = burner(), burner()
    node = EstimatedMeter(watts_per_cpu=10.0)
    t_heavy = TrialEnergy([node], pids=[heavy.pid])
    t_light = TrialEnergy([node], pids=[light.pid])
    node_before = node.read_j()
    heavy.send("burn 0.8")  # both at once: the node is shared, as trials share it
    light.send("burn 0.2")
    cpu_heavy, cpu_light = float(heavy.expect("burned")), float(light.expect("burned"))
    e_heavy, label_heavy = t_heavy.interval()
    e_light, label_light = t_light.interval()
    node_j = node.read_j() - node_before
    assert label_heavy == label_light == "estimated"
    # node energy x share = the trial's own CPU seconds x 10 W (same instants, ~).
    assert e_heavy == pytest.approx(cpu_heavy * 10.0, rel=0.25, abs=0.3)
    assert e_light == pytest.approx(cpu_light * 10.0, rel=0.25, abs=0.3)
    assert e_heavy / e_light == pytest.approx(cpu_heavy / cpu_light, rel=0.3)
    assert e_heavy + e_light <= node_j * 1.05 + 0.1  # shares of one node, never more
    assert 0 < t_light.last_cpu_share < t_heavy.last_cpu_share <= 1.0
    # An idle interval gets (almost) nothing; totals add up.
    e_idle, _ = t_heavy.interval()
    assert e_idle < 0.2
    assert t_heavy.total_j == pytest.approx(e_heavy + e_idle)


def test_rapl_energy_is_split_by_cpu_share(tmp_path: Path, burner) -> None:  # type: ignore[no-untyped-def]
    """A fake RAPL counter gains 100 J; the trial gets 100 J x its measured share."""
    zone = tmp_path / "sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    (zone / "energy_uj").write_text("5000000\n")
    trial = burner()
    with RaplMeter(tmp_path, poll_interval_s=0) as rapl:
        energy = TrialEnergy([rapl, EstimatedMeter()], pids=[trial.pid])
        trial.burn(0.3)
        (zone / "energy_uj").write_text("105000000\n")
        joules, label = energy.interval()
    assert label == "rapl"  # RAPL replaces the estimate, never adds to it
    share = energy.last_cpu_share
    assert 0.05 < share <= 1.0  # the trial burned; the node did other things too
    assert joules == pytest.approx(100.0 * share)


def test_a_trial_that_ended_reports_without_raising(burner) -> None:  # type: ignore[no-untyped-def]
    trial = burner()
    energy = TrialEnergy([EstimatedMeter()], pids=lambda: [trial.pid])
    trial.burn(0.1)
    trial.stop()
    joules, label = energy.interval()
    assert label == "estimated" and joules >= 0.0


def test_a_broken_meter_does_not_stop_training() -> None:
    class Flaky(EnergyMeter):
        """Breaks the meter contract on purpose: read_j raises while ``broken``."""

        method = "rapl"

        def __init__(self) -> None:
            self.broken = True
            self.joules = 0.0

        def read_j(self) -> float:
            if self.broken:
                raise OSError("device gone")
            return self.joules

    meter = Flaky()
    energy = TrialEnergy([meter], pids=[os.getpid()])  # does not raise
    assert energy.interval() == (0.0, "none")
    meter.broken = False
    meter.joules = 50.0
    assert energy.interval() == (0.0, "none")  # only now a start point: nothing invented
    meter.joules = 60.0
    joules, label = energy.interval()
    assert label == "rapl" and 0.0 <= joules <= 10.0
    meter.broken = True
    assert energy.interval() == (0.0, "none")
