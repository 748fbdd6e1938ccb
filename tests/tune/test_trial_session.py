"""The trial session's contract, without Ray: threads follow cores at the
same boundary as the config change, results say what was in force, lifted
limits are applied again, a trial records itself, and a workload's default
identity tells scripts apart."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from pipetune.control import AffinityController, format_cpus
from pipetune.policy import FixedPolicy, SystemPolicy
from pipetune.store import open_store
from pipetune.tune import default_workload
from pipetune.tune.session import TrialSession
from pipetune.types import EpochResult, SystemConfig, TrialRef

REF = TrialRef("job", "trial", "node")


class SlowDecider(SystemPolicy):
    """Decides 1 core at the end of epoch 0 on a thread of its own, 0.3 s
    later (a tuner's worker taking its profile): the session must wait."""

    def __init__(self) -> None:
        self._config = SystemConfig(2)
        self._decided = threading.Event()
        self._decided.set()
        self.phase = "profiling"

    def start(self, pids: list[int]) -> None:
        return None

    def epoch_end(self, result: EpochResult) -> None:
        if result.epoch == 0:
            self._decided.clear()

            def decide() -> None:
                time.sleep(0.3)
                self._config = SystemConfig(1)
                self.phase = "probing"
                self._decided.set()

            threading.Thread(target=decide).start()

    def wait_decision(self, timeout_s: float) -> bool:
        return self._decided.wait(timeout_s)

    def config(self) -> SystemConfig:
        return self._config


def test_threads_follow_the_cores_at_the_boundary_where_they_change() -> None:
    pytest.importorskip("torch")
    import torch

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    seen: list[dict[str, Any]] = []
    threads_during: list[int] = []
    session = TrialSession(REF, SlowDecider(), report_fn=seen.append).start()
    for epoch in range(3):
        threads_during.append(torch.get_num_threads())
        session.report({"loss": 1.0, "epoch": epoch}, steps=1)
    session.close()
    # Epoch 0 ran at 2 cores with 2 threads; the 1-core decision taken at its
    # end was in force, threads included, from epoch 1 on.
    assert threads_during == [2, 1, 1]
    assert [(r["pt_config"], r["pt_threads"]) for r in seen] == [
        ("2c/-m/0g", 2), ("1c/-m/0g", 1), ("1c/-m/0g", 1)]
    assert [r["pt_phase"] for r in seen] == ["profiling", "probing", "probing"]
    assert all(r["pt_threads"] == r["pt_cores"] for r in seen)
    torch.set_num_threads(len(os.sched_getaffinity(0)))


def test_limits_lifted_from_outside_are_applied_again() -> None:
    """A restarted daemon releases the groups of the one that died: the
    trial notices at its next boundary that it runs on CPUs its config did
    not give it, and applies the config again."""
    everything = set(os.sched_getaffinity(0))
    if len(everything) < 2:
        pytest.skip("needs 2 CPUs")
    seen: list[dict[str, Any]] = []
    policy = FixedPolicy(SystemConfig(1), trial_id="lifted", controller=AffinityController(),
                         phase="v1")
    session = TrialSession(REF, policy, report_fn=seen.append)
    try:
        session.start()
        mine = set(os.sched_getaffinity(0))
        assert len(mine) == 1
        session.report({"loss": 1.0}, steps=1)
        os.sched_setaffinity(0, everything)  # the limit is lifted behind the trial's back
        session.report({"loss": 1.0}, steps=1)
        assert os.sched_getaffinity(0) == mine  # applied again at that boundary
        session.report({"loss": 1.0}, steps=1)
    finally:
        session.close()
        os.sched_setaffinity(0, everything)
    one = format_cpus(mine)
    assert [r["pt_cpus"] for r in seen] == [one, format_cpus(everything), one]
    assert {r["pt_controller"] for r in seen} == {"affinity"}
    assert {r["pt_threads"] for r in seen} == {1}


def test_a_trial_records_itself_and_its_end(tmp_path) -> None:  # noqa: ANN001
    store = open_store(f"sqlite:///{tmp_path / 's.db'}", spool_root=tmp_path / "spool")
    policy = FixedPolicy(SystemConfig(1), trial_id="t", controller="dry-run", phase="v1")
    session = TrialSession(REF, policy, store=store,
                           record={"mode": "v1", "workload": "w-1",
                                   "hparams": {"lr": 0.1, "layers": 2}}).start()
    session.report({"accuracy": 0.5}, steps=3)
    session.close(RuntimeError("boom"))
    trials = store.query("trial", {"job": "job"})
    store.close()
    assert list(trials["status"]) == ["running", "failed"]
    assert trials.iloc[0]["controller"] == "dry-run"
    assert set(trials["mode"]) == {"v1"} and set(trials["workload"]) == {"w-1"}
    assert trials.iloc[0]["hp.lr"] == 0.1
    assert "RuntimeError: boom" in trials.iloc[1]["error"]


def test_a_workloads_default_identity_is_its_name_and_code() -> None:
    def train(config: dict) -> None:
        return None

    first = train

    def train(config: dict) -> None:  # noqa: F811 - a second script's function of the same name
        config["x"] = 1

    assert default_workload(first) != default_workload(train)
    assert default_workload(first).startswith("train-")
    assert default_workload(first) == default_workload(first)
