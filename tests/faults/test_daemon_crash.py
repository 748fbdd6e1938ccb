"""The node daemon SIGKILLed mid-trial and started again: a real daemon on a
real socket, real cgroups, a real training loop (train_child.py) whose
controller is the daemon's.

The trial's training goes on, it says what still confines it (the dead
daemon's cgroup), the next daemon releases the dead one's groups at start,
and the trial is adopted again at its next boundary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from support.daemons import PYTHON, ROOT, Daemons, child_env, wait_until


def test_sigkill_mid_trial_the_trial_says_what_confines_it_and_the_next_daemon_readopts(
    daemons: Daemons, socket_dir: Path
) -> None:
    first = daemons.cli()
    gate = socket_dir / "gate"
    gate.mkdir()
    child = subprocess.Popen(
        [PYTHON, str(Path(__file__).parent / "train_child.py"), str(daemons.socket), "kill-me",
         str(gate), "6"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT,
    )
    all_cpus = set(os.sched_getaffinity(0))
    try:
        assert child.stdout is not None

        def epochs(n: int) -> list[dict]:
            return [json.loads(child.stdout.readline()) for _ in range(n)]

        before = epochs(2)
        assert [t["trial"] for t in first.client.trials()] == ["kill-me"]
        kind = first.client.health()["controller_kind"]
        assert {e["pt_controller"] for e in before} == {f"daemon:{kind}"}
        confined = before[0]["pt_cpus"]
        assert len(confined.split(",")) == 1 and "-" not in confined  # one CPU
        assert {e["pt_threads"] for e in before} == {1}

        first.signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
        assert daemons.socket.exists()  # a dead daemon leaves its socket behind
        (gate / "go1").touch()
        orphaned = epochs(2)
        assert [e["loss"] for e in orphaned] == [1 / 3, 1 / 4]  # training went on
        # The dead daemon's cgroup still confines the trial: it says so, and
        # its threads follow what it really has.
        assert {e["pt_cpus"] for e in orphaned} == {confined}
        assert {e["pt_threads"] for e in orphaned} == {1}
        assert os.sched_getaffinity(child.pid) == {int(confined)}

        # The next daemon: stale socket removed, the dead one's group released at once.
        second = daemons.cli()
        health = second.client.health()
        assert health["recovered"]["stale_socket"] is True
        assert health["recovered"]["stale_trials"] == ["kill-me"]
        assert health["recovered"]["stale_groups"] >= 1
        assert os.sched_getaffinity(child.pid) == all_cpus
        assert second.client.trials() == []
        # At its next boundary the trial sees its limits gone and is adopted again.
        (gate / "go2").touch()
        after = epochs(2)
        assert [e["loss"] for e in after] == [1 / 5, 1 / 6]
        assert len(after[1]["pt_cpus"].split(",")) == 1 and "-" not in after[1]["pt_cpus"]
        assert [t["trial"] for t in second.client.trials()] == ["kill-me"]
        assert after[1]["pt_phase"] == "v1"
        (gate / "go3").touch()
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["done"] is True
        wait_until(lambda: second.client.trials() == [], what="ended trial closed")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
