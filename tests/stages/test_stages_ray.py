"""A real stage tree on Ray Tune against trial-based runs of the same trials.

Six trials of LeNet-5 (256 MNIST images, 4 epochs, one torch thread) with
learning-rate step decays and a growing batch size that share prefixes run
twice through the same trainable: trial-based (nothing shared) and
stage-based (every node of the tree trained once, children resumed from
their parent's checkpoint).  Every trial's per-epoch numbers must match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipetune.stages import StageRunner, StageTree, growing_batch, plan_for, step_decay
from pipetune.tune.job import _workload_train_fn

EPOCHS = 4
WORKLOAD = "lenet5-mnist"


def _trials() -> list[dict[str, Any]]:
    fixed = {"max_train_samples": 256, "batch_size": 32}
    return [
        {**fixed, "lr": step_decay(0.05, 0.5, [2])},
        {**fixed, "lr": step_decay(0.05, 0.2, [2])},
        {**fixed, "lr": step_decay(0.05, 0.5, [1, 3])},
        {**fixed, "lr": step_decay(0.02, 0.5, [2])},
        # lr constant 0.05: the same values as the decays' first epochs.
        {**fixed, "lr": 0.05, "batch_size": growing_batch(32, 2, [2])},
        {**fixed, "lr": 0.05},
    ]


def _hparams(config: dict[str, Any]) -> dict[str, Any]:
    return config["trial"]


def _run(tmp: Path, *, share: bool) -> tuple[dict[str, list[dict[str, float]]], dict[str, Any]]:
    from ray import tune

    inner = _workload_train_fn(WORKLOAD, EPOCHS, 0)

    def train(config: dict[str, Any]) -> None:
        import torch

        torch.set_num_threads(1)  # the same float summation order in every trial
        inner(config)

    runner = StageRunner(tmp / "stages", share=share)
    try:
        plans = [plan_for(t, EPOCHS, namespace=WORKLOAD) for t in _trials()]
        runner.register(plans)
        tuner = tune.Tuner(
            tune.with_resources(runner.wrap(train, EPOCHS, namespace=WORKLOAD,
                                            hparams=_hparams), {"cpu": 1}),
            param_space={"trial": tune.grid_search(_trials())},
            tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
            run_config=tune.RunConfig(name=f"share-{share}", storage_path=str(tmp / "ray"),
                                      verbose=0),
        )
        results = tuner.fit()
        stats = runner.stats()
    finally:
        runner.close()
    per_trial: dict[str, list[dict[str, float]]] = {}
    for r in results:
        assert r.error is None, r.error
        plan = plan_for(r.config["trial"], EPOCHS, namespace=WORKLOAD)
        df = r.metrics_dataframe.sort_values("epoch")
        per_trial[plan.trial_id] = df[["epoch", "loss", "accuracy", "test_loss",
                                       "pt_stage_replayed"]].to_dict("records")
    return per_trial, stats


def test_stage_tree_on_tune_matches_trial_based_runs(ray_session: None, tmp_path: Path) -> None:
    alone, alone_stats = _run(tmp_path, share=False)
    shared, shared_stats = _run(tmp_path, share=True)

    tree = StageTree()
    for t in _trials():
        tree.add(plan_for(t, EPOCHS, namespace=WORKLOAD))
    assert alone_stats["epochs_trained"] == tree.trial_epochs() == 6 * EPOCHS
    # Every node trained once, not one epoch more: waiting trials waited.
    assert shared_stats["epochs_trained"] == tree.unique_epochs() < tree.trial_epochs()
    assert shared_stats["epochs_replayed"] == tree.trial_epochs() - tree.unique_epochs()

    assert set(shared) == set(alone) and len(shared) == 6
    for trial, rows in alone.items():
        assert [r["epoch"] for r in shared[trial]] == list(range(EPOCHS)), trial
        for a, s in zip(rows, shared[trial], strict=True):
            for key in ("loss", "accuracy", "test_loss"):
                assert s[key] == pytest.approx(a[key], rel=1e-3), (trial, a["epoch"], key)
    assert sum(r["pt_stage_replayed"] for rows in shared.values() for r in rows) == (
        tree.trial_epochs() - tree.unique_epochs()
    )
    # The trials really differ (the comparison can fail): not all final losses equal.
    assert len({round(rows[-1]["loss"], 6) for rows in alone.values()}) == 6
