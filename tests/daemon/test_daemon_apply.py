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
from daemon_helpers import Daemons, wait_until

from pipetune.daemon import DaemonClient, DaemonPolicy, policy_for_trial
from pipetune.errors import ConfigError
from pipetune.types import EpochResult, SystemConfig, SystemSpace, TrialRef


def _ops(daemons: Daemons, trial: str) -> list[str]:
    return [r["op"] for r in daemons.records() if r.get("trial") == trial]


def test_concurrent_trials_get_disjoint_cpus_and_graceful_stop_closes_them(
    daemons: Daemons,
) -> None:
    d = daemons.recording("--cpus", "0,1")
    a = subprocess.Popen(["sleep", "60"])
    b = subprocess.Popen(["sleep", "60"])
    try:
        ra = d.client.register(job="j", trial="a", pids=[a.pid], mode="v1", space="cores=1")
        rb = d.client.register(job="j", trial="b", pids=[b.pid], mode="v1", space="cores=1")
        assert ra["config"] == rb["config"] == "1c/-m/0g"
        assert ra["phase"] == rb["phase"] == "v1"
        assert "applied by the daemon" in ra["reason"]
        assert sorted(ra["cpus"] + rb["cpus"]) == [0, 1]  # disjoint
        applies = [r for r in daemons.records() if r["op"] == "apply"]
        assert {r["trial"]: r["cpus"] for r in applies} == {"a": ra["cpus"], "b": rb["cpus"]}

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


def test_v2_follows_the_sampled_values_through_epochs(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    d = daemons.recording()
    answer = d.client.register(job="j", trial="v2", pids=[sleeper.pid], mode="v2",
                               space={"cores": [1, 2], "memory_mb": [None, 512]},
                               values={"cores": 1, "memory_mb": 512, "lr": 0.1})
    assert (answer["config"], answer["threads"], answer["phase"]) == ("1c/512m/0g", 1, "v2")
    d.client.epoch_start("v2", 0)
    result = EpochResult(0, SystemConfig(1, 512), 1.5, steps=10, metrics={"acc": 0.5})
    after = d.client.epoch_end("v2", result)
    assert after["config"] == "1c/512m/0g" and after["phase"] == "v2"
    assert d.client.trial("v2")["epoch"] == 0
    applies = [r for r in daemons.records() if r["op"] == "apply"]
    assert [r["config"] for r in applies] == ["1c/512m/0g"]  # applied once, not per epoch
    # v2 without the sampled cores is the caller's mistake.
    with pytest.raises(ConfigError, match="needs 'cores'"):
        d.client.register(job="j", trial="v2b", pids=[sleeper.pid], mode="v2",
                          space="cores=1,2", values={"lr": 0.1})


def test_added_pids_are_checked_and_moved(daemons: Daemons, sleeper: subprocess.Popen) -> None:
    d = daemons.recording()
    d.client.register(job="j", trial="p", pids=[sleeper.pid], mode="v1", space="cores=1")
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
    d.client.register(job="j", trial="gone", pids=[proc.pid], mode="v1", space="cores=1")
    proc.kill()
    proc.wait()
    wait_until(lambda: d.client.trials() == [], what="trial of a dead process dropped")
    assert _ops(daemons, "gone") == ["open", "apply", "close"]
    assert "all processes gone" in d.output()


def test_pipetune_mode_without_the_tuner_degrades_and_says_why(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    try:
        import pipetune.tuner  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pipetune.tuner is installed: the tuner's own tests cover mode pipetune")
    d = daemons.recording()
    answer = d.client.register(job="j", trial="pt", pids=[sleeper.pid], mode="pipetune",
                               space="cores=1,2")
    assert answer["phase"] == "degraded"
    assert "tuner unavailable" in answer["reason"]
    assert answer["config"] == "2c/-m/0g"  # the space default, untouched
    assert _ops(daemons, "pt") == []  # nothing applied


def test_model_version_follows_the_file_mtime(daemons: Daemons, socket_dir: Path) -> None:
    model = socket_dir / "groundtruth.json"
    d = daemons.recording("--model", str(model))
    assert d.client.health()["model_version"] == 0
    model.write_text("{}")
    wait_until(lambda: d.client.health()["model_version"] == 1, what="model seen")
    later = time.time() + 5
    os.utime(model, (later, later))
    wait_until(lambda: d.client.health()["model_version"] == 2, what="model change seen")
    assert d.client.health()["model"]["path"] == str(model)


def test_daemon_policy_forwards_and_degrades_when_the_daemon_dies(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    d = daemons.recording()
    ref = TrialRef(job="j", trial="dp", node="n")
    policy = policy_for_trial(ref, mode="v1", space=SystemSpace.parse("cores=1"),
                              socket_path=daemons.socket)
    assert isinstance(policy, DaemonPolicy)
    policy.start([sleeper.pid])
    assert (policy.phase, str(policy.config()), policy.threads()) == ("v1", "1c/-m/0g", 1)
    policy.epoch_end(EpochResult(0, policy.config(), 0.1))
    assert policy.phase == "v1"
    d.signal(signal.SIGKILL)
    d.wait()
    t0 = time.monotonic()
    policy.epoch_start(1)  # must not raise
    policy.epoch_end(EpochResult(1, policy.config(), 0.1))
    policy.close()
    assert time.monotonic() - t0 < 5  # a dead daemon costs no timeouts
    assert policy.phase == "degraded"
    assert "daemon lost" in policy.reason
    assert str(policy.config()) == "1c/-m/0g"  # the last config is kept


def test_policy_for_trial_without_a_daemon_is_none(socket_dir: Path) -> None:
    ref = TrialRef(job="j", trial="t", node="n")
    space = SystemSpace.parse("cores=1")
    assert policy_for_trial(ref, mode="v1", space=space,
                            socket_path=socket_dir / "absent.sock") is None
    # A socket file nobody listens on (a daemon that died) is no daemon either.
    import socket

    stale = socket_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    assert policy_for_trial(ref, mode="v1", space=space, socket_path=stale) is None
    with pytest.raises(ConnectionError, match="connection refused"):
        DaemonClient(stale).health()


def test_a_burst_of_trials_ending_epochs_together_is_served(daemons: Daemons) -> None:
    """Many trials at one epoch boundary: a full listen backlog must make
    clients wait, not look like a dead daemon (which would degrade them)."""
    import threading

    d = daemons.recording()
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(48)]
    errors: list[str] = []
    try:
        for i, p in enumerate(procs):
            d.client.register(job="burst", trial=f"b{i}", pids=[p.pid], mode="v1",
                              space="cores=1")

        def trial(i: int) -> None:
            client = DaemonClient(daemons.socket, timeout_s=30)
            for epoch in range(10):
                try:
                    client.epoch_end(f"b{i}", EpochResult(epoch, SystemConfig(1), 0.1))
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
