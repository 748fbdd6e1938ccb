"""Who trains a stage, and when, is Tune's scheduler's call.

Every trial stays a Tune trial, so the scheduler's priorities reach the
stages through the trials it runs, stops and pauses: a stopped trial never
trains its own unshared stages, the stages surviving trials need are trained
by them, and a paused trial's claims are handed back at once (not after a
lease) so the trials the scheduler keeps running are not kept waiting.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipetune.stages import StageRunner, StageStore, plan_for
from pipetune.stages.flags import schedule_grid
from pipetune.stages.ledger import space_of
from pipetune.store import open_store
from pipetune.tune.job import _workload_train_fn

EPOCHS = 4
WORKLOAD = "lenet5-mnist"
SMALL = {"max_train_samples": 256, "batch_size": 32}


def _trials() -> list[dict[str, Any]]:
    return [{**SMALL, **t} for t in schedule_grid(["lr=step:0.05/rate=0.5,0.2/at=1,2"])]


@pytest.mark.slow
def test_a_stopped_trial_never_trains_its_unshared_stages(
    ray_session: None, tmp_path: Path
) -> None:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class StopRate02(FIFOScheduler):
        """Stops the rate-0.2 trials after their second epoch (like a rung)."""

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            if trial.config["trial"]["lr"]["rate"] == 0.2 and result["training_iteration"] >= 2:
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

    inner = _workload_train_fn(WORKLOAD, EPOCHS, 0)

    def train(config: dict[str, Any]) -> None:
        import torch

        torch.set_num_threads(1)
        inner(config)

    url = f"sqlite:///{tmp_path / 'pt.db'}"
    runner = StageRunner(tmp_path / "stages", prune_safe=True, store=url,
                         spool_dir=tmp_path / "spool", job="prio")
    try:
        runner.register(plan_for(t, EPOCHS, namespace=WORKLOAD) for t in _trials())
        tuner = tune.Tuner(
            tune.with_resources(runner.wrap(train, EPOCHS, namespace=WORKLOAD,
                                            hparams=lambda c: c["trial"]), {"cpu": 1}),
            param_space={"trial": tune.grid_search(_trials())},
            tune_config=tune.TuneConfig(max_concurrent_trials=2, scheduler=StopRate02()),
            run_config=tune.RunConfig(name="prio", storage_path=str(tmp_path / "ray"),
                                      verbose=0, callbacks=[runner.callback()]),
        )
        results = tuner.fit()
        rows = runner.tree()
    finally:
        runner.close()
    assert all(r.error is None for r in results)
    store = open_store(url, spool_root=tmp_path / "spool")
    try:
        trained = list(store.query("stage", {"space": space_of(WORKLOAD)})["prefix"])
    finally:
        store.close()
    assert len(trained) == len(set(trained))  # every epoch trained once
    for t in _trials():
        keys = plan_for(t, EPOCHS, namespace=WORKLOAD).epoch_keys()
        if t["lr"]["rate"] == 0.5:  # survivors: every epoch of theirs trained
            assert set(keys) <= set(trained)
        else:  # stopped after epoch 1: nothing of theirs after it
            assert set(keys[:2]) <= set(trained) and not set(keys[2:]) & set(trained)
    # 7 epochs of the survivors' tree, and the one unshared epoch (1) of the
    # rate-0.2 trial that decays at epoch 1, trained before it was stopped.
    assert runner.figures is not None and runner.figures["epochs_trained"] == 8 == len(trained)
    marks = "".join(r["epoch_marks"] for r in rows)  # the report's figure colours these
    assert (marks.count("t"), marks.count("-")) == (8, 12 - 8)


def test_a_paused_trial_hands_back_its_claims_at_once() -> None:
    # The callback releases a trial once when Tune pauses it …
    released: list[str] = []
    fake = SimpleNamespace(release=SimpleNamespace(remote=released.append))
    runner = StageRunner.__new__(StageRunner)
    runner.store = fake
    cb = runner.callback()
    running, paused = SimpleNamespace(trial_id="a", status="RUNNING"), \
        SimpleNamespace(trial_id="b", status="PAUSED")
    cb.on_step_begin(1, [running, paused])
    cb.on_step_begin(2, [running, paused])
    assert released == ["b"]
    paused.status = "RUNNING"
    cb.on_step_begin(3, [running, paused])
    paused.status = "PAUSED"
    cb.on_step_begin(4, [running, paused])
    assert released == ["b", "b"]

    # … and then a trial waiting for its prefix goes on without a lease.
    grid = _trials()
    a, b = (plan_for(grid[i], EPOCHS, namespace="w") for i in (1, 3))  # share epochs 0..1
    store = StageStore(lease_s=3600)
    store.register([a, b])
    store.acquire("ta", a)
    assert store.acquire("tb", b).wait_for == "ta"
    store.release("ta")  # paused
    assert store.acquire("tb", b).wait_for is None
    assert store.acquire("ta", a).wait_for == "tb"  # resumed: waits for the one now training
