"""Event availability: the real probe on this host, and perf binaries that
are missing or forbidden (scripts in tmp_path standing in for perf)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pipetune.profiler import (
    PMU_EVENTS,
    REDUNDANT_EVENTS,
    SOFTWARE_EVENTS,
    TRACEPOINT_EVENTS,
    available_events,
)
from pipetune.profiler import events as events_mod


def test_this_host_probe_is_cached_and_consistent():
    a = available_events()
    if not a.perf_available:
        pytest.skip(f"perf unusable here: {a.reason}")
    assert available_events() is a
    assert "task-clock" in a.software
    assert set(a.all) | set(a.unsupported) >= set(SOFTWARE_EVENTS) | set(TRACEPOINT_EVENTS)
    assert not set(a.all) & set(a.unsupported)
    assert a.pmu == bool(a.hardware)
    default = a.default_events()
    assert "task-clock" in default and "sched:sched_wakeup" in default
    assert not set(default) & REDUNDANT_EVENTS
    assert set(a.default_events(full=True)) == set(a.all)
    # A host without PMU (this VM) still has a discriminating set of figures.
    if not a.pmu:
        assert len(default) >= 10
        assert set(PMU_EVENTS) <= set(a.unsupported)


def _fake_perf(tmp_path: Path, body: str) -> str:
    path = tmp_path / "perf"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_missing_perf(tmp_path):
    s = available_events(str(tmp_path / "nope"), refresh=True)
    assert not s.perf_available and "not found" in s.reason
    assert s.default_events() == ()


def test_forbidden_perf(tmp_path):
    perf = _fake_perf(tmp_path, """
case "$1" in
  --version) echo "perf version 6.1.0";;
  *) echo "Error: Access to performance monitoring and observability operations is limited." >&2
     echo "Consider adjusting /proc/sys/kernel/perf_event_paranoid setting" >&2; exit 255;;
esac
""")
    s = available_events(perf, refresh=True)
    assert not s.perf_available
    assert "perf_event_paranoid" in s.reason
    assert s.perf_version == "6.1.0"


def test_pmu_host_and_vendor_events_from_fake_sysfs(tmp_path):
    # A perf that counts everything except one rejected name, and a sysfs tree
    # listing mem-loads: the probe bisects the rejected name out and keeps the rest.
    perf = _fake_perf(tmp_path, r"""
case "$1" in --version) echo "perf version 6.1.0"; exit 0;; esac
events=$5
case "$events" in *stalled-cycles-backend*)
  echo "event syntax error: 'stalled-cycles-backend'" >&2; exit 129;;
esac
echo "$events" | tr ',' '\n' | while read e; do echo "12345;;$e;1000;100.00;;" >&2; done
""")
    sysfs = tmp_path / "sys"
    (sysfs / "bus/event_source/devices/cpu/events").mkdir(parents=True)
    (sysfs / "bus/event_source/devices/cpu/events/mem-loads").write_text("event=0xcd\n")
    s = available_events(perf, refresh=True, sysfs_root=sysfs)
    assert s.perf_available and s.pmu
    assert "cycles" in s.hardware and "cpu/mem-loads/" in s.hardware
    assert "cpu/mem-stores/" not in s.hardware + s.unsupported  # not listed in sysfs
    assert s.unsupported == ("stalled-cycles-backend",)
    d = s.default_events()
    assert d[: events_mod.DEFAULT_PMU_COUNT] == s.hardware[: events_mod.DEFAULT_PMU_COUNT]
    assert "task-clock" in d
