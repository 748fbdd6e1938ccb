"""What the daemon asks of its controller and allocator: a real daemon
process on a real socket, with a controller that records each call (see
recording_daemon.py) so the calls can be checked on any host."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.daemons import Daemons, wait_until

from pipetune.daemon import (
    DaemonClient,
    DaemonController,
    DaemonLostError,
    daemon_controller,
)
from pipetune.errors import ConfigError
from pipetune.types import SystemConfig


def _ops(daemons: Daemons, trial: str) -> list[str]:
    return [r["op"] for r in daemons.records() if r.get("trial") == trial]


def test_concurrent_trials_get_disjoint_cpus_and_graceful_stop_closes_them(
    daemons: Daemons,
) -> None:
    d = daemons.recording("--cpus", "0,1")
    a = subprocess.Popen(["sleep", "60"])
    b = subprocess.Popen(["sleep", "60"])
    try:
        for name, proc in (("a", a), ("b", b)):
            opened = d.client.register(job="j", trial=name, pids=[proc.pid])
            assert (opened["trial"], opened["controller"]) == (name, "recording")
        ra = d.client.apply("a", SystemConfig(1))
        rb = d.client.apply("b", SystemConfig(1))
        assert ra["config"] == rb["config"] == "1c/-m/0g"
        assert sorted(ra["cpus"] + rb["cpus"]) == [0, 1]  # disjoint, from the allocator
        applies = [r for r in daemons.records() if r["op"] == "apply"]
        assert {r["trial"]: r["cpus"] for r in applies} == {"a": ra["cpus"], "b": rb["cpus"]}
        assert d.client.health()["cpus_held"] == {"a": ra["cpus"], "b": rb["cpus"]}

        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        assert _ops(daemons, "a") == ["open", "apply", "close"]
        assert _ops(daemons, "b") == ["open", "apply", "close"]
        assert not daemons.socket.exists()
        # Stopping the daemon never stops training.
        assert a.poll() is None and b.poll() is None
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


def test_the_daemon_applies_what_the_trial_asks_and_decides_nothing(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    d = daemons.recording()
    d.client.register(job="j", trial="t", pids=[sleeper.pid])
    assert _ops(daemons, "t") == ["open"]  # opening applies nothing by itself
    first = d.client.apply("t", SystemConfig(1, 512), cpu_quota=0.5)
    assert (first["config"], first["memory_mb"], first["cpu_quota"]) == ("1c/512m/0g", 512, 0.5)
    usage = d.client.usage("t")
    assert (usage["cpu_s"], usage["memory_peak_mb"]) == (1.5, 42.0)
    described = d.client.trial("t")
    assert (described["config"], described["cpus"]) == ("1c/512m/0g", first["cpus"])
    assert _ops(daemons, "t") == ["open", "apply", "usage"]


def test_added_pids_are_checked_and_moved(daemons: Daemons, sleeper: subprocess.Popen) -> None:
    d = daemons.recording()
    d.client.register(job="j", trial="p", pids=[sleeper.pid])
    other = subprocess.Popen(["sleep", "60"])
    try:
        answer = d.client.add_pids("p", [other.pid])
        assert answer["pids"] == sorted([sleeper.pid, other.pid])
        assert [r["pids"] for r in daemons.records() if r["op"] == "add_pids"] == [[other.pid]]
    finally:
        other.kill()
        other.wait()


def test_reaper_closes_trials_whose_processes_are_gone(daemons: Daemons) -> None:
    d = daemons.recording()
    proc = subprocess.Popen(["sleep", "60"])
    d.client.register(job="j", trial="gone", pids=[proc.pid])
    d.client.apply("gone", SystemConfig(1))
    proc.kill()
    proc.wait()
    wait_until(lambda: d.client.trials() == [], what="trial of a dead process dropped")
    assert _ops(daemons, "gone") == ["open", "apply", "close"]
    assert "all processes gone" in d.output()
    assert d.client.health()["cpus_held"] == {}


def test_model_version_follows_the_file_mtime(daemons: Daemons, socket_dir: Path) -> None:
    model = socket_dir / "groundtruth.json"
    d = daemons.recording("--model", str(model))
    assert d.client.health()["model_version"] == 0
    model.write_text("{}")
    wait_until(lambda: d.client.health()["model_version"] == 1, what="model seen")
    # An unreadable model is said in health, not called ok.
    health = d.client.health()
    assert health["status"] == "warning" and health["model"]["error"], health["model"]
    later = time.time() + 5
    os.utime(model, (later, later))
    wait_until(lambda: d.client.health()["model_version"] == 2, what="model change seen")
    assert d.client.health()["model"]["path"] == str(model)


def test_daemon_controller_is_a_drop_in_and_reopens_after_a_restart(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    d = daemons.recording()
    ctl = daemon_controller(socket_path=daemons.socket, job="j")
    assert isinstance(ctl, DaemonController)
    assert ctl.name == "daemon:recording"
    handle = ctl.open_trial("dc", [sleeper.pid])
    applied = ctl.apply(handle, SystemConfig(1))
    assert (applied.controller, applied.config, len(applied.cpus)) == (
        "daemon:recording", SystemConfig(1), 1)
    assert ctl.usage(handle).memory_peak_mb == 42.0

    d.signal(signal.SIGKILL)
    d.wait()
    t0 = time.monotonic()
    with pytest.raises(DaemonLostError, match="daemon lost at apply"):
        ctl.apply(handle, SystemConfig(2))
    assert time.monotonic() - t0 < 5  # a dead daemon costs no long timeouts

    # A restarted daemon released the trial; the next apply opens it again.
    daemons.recording()
    again = ctl.apply(handle, SystemConfig(1))
    assert again.config == SystemConfig(1)
    assert _ops(daemons, "dc")[-2:] == ["open", "apply"]
    ctl.close_trial(handle)
    ctl.close_trial(handle)  # idempotent, also once the daemon forgot it
    assert _ops(daemons, "dc")[-1] == "close"


def test_daemon_controller_without_a_daemon_is_none(socket_dir: Path) -> None:
    assert daemon_controller(socket_path=socket_dir / "absent.sock") is None
    # A socket file nobody listens on (a daemon that died) is no daemon either.
    import socket

    stale = socket_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    assert daemon_controller(socket_path=stale) is None
    with pytest.raises(ConnectionError, match="connection refused"):
        DaemonClient(stale).health()


def test_a_burst_of_trials_applying_together_is_served(daemons: Daemons) -> None:
    """Many trials at one epoch boundary: a full listen backlog must make
    clients wait, not look like a dead daemon (which would degrade them)."""
    import threading

    d = daemons.recording()
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(48)]
    errors: list[str] = []
    try:
        for i, p in enumerate(procs):
            d.client.register(job="burst", trial=f"b{i}", pids=[p.pid])

        def trial(i: int) -> None:
            client = DaemonClient(daemons.socket, timeout_s=30)
            for epoch in range(10):
                try:
                    client.apply(f"b{i}", SystemConfig(1 + epoch % 2))
                except Exception as e:  # noqa: BLE001 - collected and asserted below
                    errors.append(repr(e))

        threads = [threading.Thread(target=trial, args=(i,)) for i in range(len(procs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert errors == []


def test_the_daemon_reads_rapl_for_trials_that_may_not(
    daemons: Daemons, socket_dir: Path, sleeper: subprocess.Popen
) -> None:
    """Privileged energy reads go through the daemon like privileged limits:
    a fake powercap tree stands in for this host's missing RAPL."""
    from pipetune.energy import TrialEnergy, rapl_available
    from pipetune.tune.controller import trial_meters

    if rapl_available() is True:
        pytest.skip("this host reads RAPL itself: no daemon meter is used")
    zone = socket_dir / "sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    for name, text in {"name": "package-0", "energy_uj": "1000000",
                       "max_energy_range_uj": "262143328850", "enabled": "1"}.items():
        (zone / name).write_text(text + "\n")
    d = daemons.recording("--rapl-root", str(socket_dir))
    assert d.client.health()["energy"] == ["rapl"]
    ctl = daemon_controller(socket_path=daemons.socket)
    assert ctl is not None
    meters = trial_meters(ctl)
    assert meters is not None and [m.method for m in meters] == ["rapl"]
    before = meters[0].read_j()
    tmp = zone / ".energy_uj.tmp"
    tmp.write_text("6000000\n")
    os.replace(tmp, zone / "energy_uj")  # 5 J more, as the kernel counts
    wait_until(lambda: meters[0].read_j() - before >= 4.99, what="daemon sees the new count")
    energy = TrialEnergy(meters, [sleeper.pid])
    assert energy.interval()[1] == "rapl"


def test_the_daemon_shares_the_node_and_each_trial_picks_up_its_share(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    d = daemons.recording("--cpus", "0,1")
    other = subprocess.Popen(["sleep", "60"])
    try:
        d.client.register(job="j", trial="a", pids=[sleeper.pid])
        d.client.register(job="j", trial="b", pids=[other.pid])
        alone = d.client.apply("a", SystemConfig(2))
        assert (alone["config"], sorted(alone["cpus"])) == ("2c/-m/0g", [0, 1])
        assert d.client.capacity("b", 2) == 1
        shared = d.client.apply("b", SystemConfig(2))
        assert shared["config"] == "1c/-m/0g"  # its share, not what it asked
        # a learns of b at its next boundary: its share moves, disjoint from b's
        moved = d.client.rebalance("a")["applied"]
        assert moved["config"] == "1c/-m/0g" and set(moved["cpus"]).isdisjoint(shared["cpus"])
        # nothing moved since; a trial asks at every boundary (and the body it
        # sends is read: an unread body reset the connection, a "lost" daemon)
        for _ in range(50):
            assert d.client.rebalance("a")["applied"] is None
        assert d.client.speedup("a", {1: 1.0, 2: 1.8})["curve"] == {"1": 1.0, "2": 1.8}
        with pytest.raises(ConfigError, match="out of range"):
            d.client.speedup("a", {0: 1.0})
        d.client.close("b")
        grown = d.client.rebalance("a")["applied"]
        assert grown["config"] == "2c/-m/0g" and sorted(grown["cpus"]) == [0, 1]
    finally:
        other.kill()
        other.wait()
