"""Trial-based vs stage-based execution of a learning-rate-decay grid, on Ray Tune.

The grid (the seed's, scaled to this machine): initial rates x decay rates x
first decay epoch x second decay epoch, each trial a step decay on
``deepcnn-mnist`` (width 8, a reduced training set, one torch thread per
trial, two trials at once).  Four Tune jobs in one Ray session, through the
*same* trainable (``pipetune tune``'s) and the same stage store code:

- ``trial``: every trial trains alone (the store shares nothing);
- ``stage``: every stage-tree node trained once, children resumed from
  their parent's checkpoint, prefixes replayed to Tune;
- ``trial+asha`` / ``stage+asha``: the same under Tune's ASHA scheduler
  (successive halving; a stopped trial prunes only its unshared stages).

Figures per job: CPU-seconds of the trial processes (``time.process_time``
in each trial: model build, training, evaluation, checkpoints, replays),
end-to-end wall time of ``Tuner.fit``, epochs trained, best final accuracy;
ratios trial/stage.  ``max_rel_metric_diff``: the largest relative
difference between a trial's final accuracy and loss in ``stage`` and in
``trial`` (every trial of the grid); ``max_rel_epoch_diff``: the same over
every epoch.  ``ideal_compute_ratio`` is the tree's trial epochs / unique
epochs: what sharing can save at most on this grid.

Usage::

    PYTHONPATH=$PWD python benchmarks/stages.py --quick --json /tmp/stages.json
    PYTHONPATH=$PWD python benchmarks/stages.py            # 36 trials x 12 epochs
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

WORKLOAD = "deepcnn-mnist"
JOBS = ("trial", "stage", "trial+asha", "stage+asha")
#: Trials at once (one torch thread each, on a 2-core machine).
LANES = 2


def grid(quick: bool) -> tuple[list[dict[str, Any]], int]:
    """The trials (hyperparameter dicts) and epochs of the grid."""
    from pipetune.stages import step_decay

    if quick:
        epochs, firsts, seconds, train = 8, (4, 5), (6, 7), 768
    else:
        epochs, firsts, seconds, train = 12, (4, 5, 6), (8, 9, 10), 1024
    fixed = {"max_train_samples": train, "batch_size": 64, "width": 8}
    trials = [
        {**fixed, "lr": step_decay(lr0, rate, [a, b])}
        for lr0, rate, a, b in itertools.product((0.002, 0.001), (0.5, 0.2), firsts, seconds)
        if a < b
    ]
    return trials, epochs


def rel_diff(a: float, b: float) -> float:
    """|a - b| relative to |a| (absolute when a is 0)."""
    return abs(a - b) / abs(a) if a else abs(b)


def run_job(name: str, trials: list[dict[str, Any]], epochs: int, storage: Path
            ) -> dict[str, Any]:
    """One Tune job over the grid; returns its figures and per-trial epochs."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from pipetune.stages import StageRunner, order_trials, plan_for
    from pipetune.tune.job import _workload_train_fn

    share, asha = name.startswith("stage"), name.endswith("asha")
    # Both modes run the grid in the order that suits stage-based execution
    # (two lanes of depth-first subtrees): the same order for both.
    trials = order_trials(trials, epochs, LANES, namespace=WORKLOAD)
    inner = _workload_train_fn(WORKLOAD, epochs, 0)

    def train(config: dict[str, Any]) -> None:
        import torch

        torch.set_num_threads(1)
        inner(config)

    runner = StageRunner(storage / name / "stages", share=share, prune_safe=asha)
    try:
        runner.register(plan_for(t, epochs, namespace=WORKLOAD) for t in trials)
        scheduler = (
            ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=2,
                          reduction_factor=2)
            if asha else None
        )
        tuner = tune.Tuner(
            tune.with_resources(
                runner.wrap(train, epochs, namespace=WORKLOAD, hparams=lambda c: c["trial"]),
                {"cpu": 1},
            ),
            param_space={"trial": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(metric="accuracy", mode="max", scheduler=scheduler,
                                        max_concurrent_trials=LANES, reuse_actors=True),
            run_config=tune.RunConfig(name=name.replace("+", "-"), storage_path=str(storage),
                                      verbose=0, callbacks=[runner.callback()]),
        )
        t0 = time.time()
        results = tuner.fit()
        e2e = time.time() - t0
        stats = runner.stats()
    finally:
        runner.close()
    per_trial: dict[str, list[dict[str, float]]] = {}
    for r in results:
        if r.error is not None:
            raise RuntimeError(f"{name}: a trial failed: {r.error}")
        plan = plan_for(r.config["trial"], epochs, namespace=WORKLOAD)
        df = r.metrics_dataframe.sort_values("epoch")
        per_trial[plan.trial_id] = df[["epoch", "loss", "accuracy", "test_loss"]].to_dict(
            "records"
        )
    finals = [rows[-1]["accuracy"] for rows in per_trial.values() if len(rows) == epochs]
    return {
        "job": name,
        "cpu_s": stats["cpu_s"],
        "e2e_s": e2e,
        "epochs_trained": stats["epochs_trained"],
        "epochs_replayed": stats["epochs_replayed"],
        "checkpoints": stats["checkpoints"],
        "best_accuracy": max(finals) if finals else None,
        "completed_trials": len(finals),
        "per_trial": per_trial,
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, int]:
    """(max relative diff of final accuracy/loss, max over every epoch and
    metric, trials compared) between two jobs' trials that ran every epoch
    in both."""
    final, every, compared = 0.0, 0.0, 0
    for trial, rows in a["per_trial"].items():
        other = b["per_trial"].get(trial)
        if other is None or len(other) != len(rows):
            continue
        compared += 1
        for key in ("accuracy", "loss"):
            final = max(final, rel_diff(rows[-1][key], other[-1][key]))
        for x, y in zip(rows, other, strict=True):
            for key in ("accuracy", "loss", "test_loss"):
                every = max(every, rel_diff(x[key], y[key]))
    return final, every, compared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 trials x 8 epochs")
    parser.add_argument("--no-asha", action="store_true", help="skip the ASHA jobs")
    parser.add_argument("--json", metavar="OUT", help="write the figures here")
    args = parser.parse_args(argv)

    import ray

    from pipetune.stages import StageTree, plan_for

    trials, epochs = grid(args.quick)
    tree = StageTree()
    for t in trials:
        tree.add(plan_for(t, epochs, namespace=WORKLOAD))
    ideal = tree.trial_epochs() / tree.unique_epochs()
    print(f"grid: {len(trials)} trials x {epochs} epochs of {WORKLOAD}; stage tree "
          f"{len(tree)} nodes, {tree.unique_epochs()} unique of {tree.trial_epochs()} "
          f"trial epochs (ideal compute ratio {ideal:.2f})", flush=True)
    jobs = JOBS[:2] if args.no_asha else JOBS
    out: dict[str, dict[str, Any]] = {}
    ray.init(address="local", num_cpus=LANES, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="pipetune-bench-stages-") as tmp:
            for name in jobs:
                out[name] = run_job(name, trials, epochs, Path(tmp))
                j = out[name]
                print(f"  {name:<11} {j['cpu_s']:8.1f} CPU-s {j['e2e_s']:7.1f} s "
                      f"{j['epochs_trained']:4d} epochs trained, best acc "
                      f"{j['best_accuracy']}", flush=True)
    finally:
        ray.shutdown()

    final_diff, epoch_diff, compared = compare(out["trial"], out["stage"])
    if compared != len(trials):
        raise RuntimeError(f"only {compared} of {len(trials)} trials ran every epoch in both")
    t, s = out["trial"], out["stage"]
    figures: dict[str, Any] = {
        "grid": {"trials": len(trials), "epochs": epochs, "workload": WORKLOAD},
        "ideal_compute_ratio": ideal,
        "compute_ratio": t["cpu_s"] / s["cpu_s"],
        "e2e_ratio": t["e2e_s"] / s["e2e_s"],
        "epochs_ratio": t["epochs_trained"] / s["epochs_trained"],
        "max_rel_metric_diff": final_diff,
        "max_rel_epoch_diff": epoch_diff,
        "trials_compared": compared,
        "best_accuracy_trial": t["best_accuracy"],
        "best_accuracy_stage": s["best_accuracy"],
        "jobs": {k: {f: v for f, v in j.items() if f != "per_trial"} for k, j in out.items()},
    }
    header = f"{'job':<11} {'CPU-s':>8} {'e2e s':>7} {'epochs':>6} {'best acc':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, j in out.items():
        acc = "n/a" if j["best_accuracy"] is None else f"{j['best_accuracy']:.4f}"
        print(f"{name:<11} {j['cpu_s']:8.1f} {j['e2e_s']:7.1f} {j['epochs_trained']:6d} "
              f"{acc:>8}")
    print(f"trial/stage: compute {figures['compute_ratio']:.2f}x (ideal {ideal:.2f}x), "
          f"end-to-end {figures['e2e_ratio']:.2f}x; final metrics of {compared} trials: max rel "
          f"diff {final_diff:.2e} (every epoch {epoch_diff:.2e})")
    if "stage+asha" in out:
        sa, ta = out["stage+asha"], out["trial+asha"]
        figures["asha_compute_ratio_vs_trial"] = t["cpu_s"] / sa["cpu_s"]
        figures["asha_compute_ratio_vs_trial_asha"] = ta["cpu_s"] / sa["cpu_s"]
        figures["asha_e2e_ratio_vs_trial"] = t["e2e_s"] / sa["e2e_s"]
        figures["asha_e2e_ratio_vs_trial_asha"] = ta["e2e_s"] / sa["e2e_s"]
        print(f"with ASHA: stage+asha uses {figures['asha_compute_ratio_vs_trial']:.2f}x less "
              f"CPU than trial (FIFO), {figures['asha_compute_ratio_vs_trial_asha']:.2f}x less "
              f"than trial+asha; end-to-end {figures['asha_e2e_ratio_vs_trial']:.2f}x / "
              f"{figures['asha_e2e_ratio_vs_trial_asha']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
