"""The CPU-time estimate and process-tree CPU accounting, for real on this host.

Children burn exact CPU seconds (measured by themselves with
``time.process_time``), so the expectations hold however contended the
shared cores are: only CPU time is compared, never wall time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipetune.energy import (
    DEFAULT_WATTS_PER_CPU,
    EstimatedMeter,
    ProcessTreeCpu,
    cpu_model,
)
from pipetune.energy.estimate import watts_per_cpu_for
from pipetune.errors import ConfigError


def test_model_is_read_and_stated(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz\n")
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"
    meter = EstimatedMeter(cpuinfo_path=cpuinfo)
    assert meter.watts_per_cpu == pytest.approx(150.0 / 40)
    assert "TDP 150 W / 40 threads" in meter.model_description
    assert meter.method == "estimated"

    unknown = tmp_path / "unknown"
    unknown.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n")
    meter = EstimatedMeter(cpuinfo_path=unknown)
    assert meter.watts_per_cpu == DEFAULT_WATTS_PER_CPU
    assert "not in the TDP table" in meter.model_description
    assert "Intel(R) Xeon(R) Processor" in meter.model_description

    assert cpu_model(tmp_path / "missing") == ""
    assert watts_per_cpu_for("")[0] == DEFAULT_WATTS_PER_CPU


def test_this_host_model_is_in_the_description() -> None:
    meter = EstimatedMeter()
    model = cpu_model()
    assert (model or "unknown") in meter.model_description
    assert f"{meter.watts_per_cpu:.2f} W per logical CPU" in meter.model_description


def test_bad_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="watts_per_cpu"):
        EstimatedMeter(watts_per_cpu=0)


def test_busy_child_raises_its_estimate_in_proportion_idle_one_does_not(burner) -> None:  # type: ignore[no-untyped-def]
    heavy, light, idle = burner(), burner(), burner()
    node = EstimatedMeter(watts_per_cpu=10.0)
    m_heavy = EstimatedMeter([heavy.pid], watts_per_cpu=10.0)
    m_light = EstimatedMeter([light.pid], watts_per_cpu=10.0)
    m_idle = EstimatedMeter([idle.pid], watts_per_cpu=10.0)
    heavy.send("burn 0.6")
    light.send("burn 0.2")
    cpu_heavy, cpu_light = float(heavy.expect("burned")), float(light.expect("burned"))
    e_heavy, e_light, e_idle = m_heavy.read_j(), m_light.read_j(), m_idle.read_j()
    e_node = node.read_j()
    # Each meter = its child's CPU seconds x 10 W (the child's own measurement,
    # plus a few ms of reading stdin and printing).
    assert e_heavy == pytest.approx(cpu_heavy * 10.0, abs=0.5)
    assert e_light == pytest.approx(cpu_light * 10.0, abs=0.5)
    assert e_heavy / e_light == pytest.approx(cpu_heavy / cpu_light, rel=0.25)
    assert e_idle < 0.2  # < 20 ms of CPU
    # The node estimate holds at least what the children burned (others share the host).
    assert e_node >= 0.9 * (e_heavy + e_light)
    # Monotonic and idle-stable: nothing more burned, nothing more counted.
    assert m_heavy.read_j() == pytest.approx(e_heavy, abs=0.2)


def test_child_reaped_between_samples_is_counted_once(burner) -> None:  # type: ignore[no-untyped-def]
    """A worker that lives and dies between two samples is still counted (via the
    parent's reaped-children time); one that was also seen alive is not counted twice."""
    parent = burner()
    tree = ProcessTreeCpu([parent.pid])
    parent.send("child 0.4")  # a child burns 0.4 s and is reaped: never sampled alive
    reaped = float(parent.expect("reaped"))
    unseen = tree.sample()
    assert unseen == pytest.approx(reaped, abs=0.1)

    parent.send("child 0.6")  # this one is sampled half-way, then reaped
    parent.expect("half")
    halfway = tree.sample() - unseen
    reaped = float(parent.expect("reaped"))
    seen = tree.sample() - unseen
    assert 0.2 < halfway < seen
    assert seen == pytest.approx(reaped, abs=0.1)  # not reaped + halfway


def test_pids_may_be_a_provider_and_may_vanish(burner) -> None:  # type: ignore[no-untyped-def]
    a, b = burner(), burner()
    current = [a.pid]
    tree = ProcessTreeCpu(lambda: current)
    a.burn(0.2)
    current.append(b.pid)  # b joins later: its earlier CPU time is not the trial's
    tree.sample()
    before_b = tree.total_s
    cpu_b = b.burn(0.2)
    assert tree.sample() - before_b == pytest.approx(cpu_b, abs=0.1)
    a.stop()
    b.stop()
    total = tree.sample()  # both gone (reaped by us, not by a tracked process)
    assert tree.current_pids == frozenset()
    assert tree.sample() == total
