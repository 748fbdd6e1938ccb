"""A user's own Ray Tune script, changed by exactly the README's three lines
(marked ``# pipetune``), as the trial-path tests run it.

    python user_script.py --name JOB --mode pipetune --samples 1 --epochs 8 \
        --space cores=1,2 [--barrier DIR]

A wide MLP on scikit-learn's bundled digits, several passes an epoch, so an
epoch lasts a second or two and its speed depends on the threads it has.
``--barrier DIR``: every trial waits until ``--samples`` trials have started
(so concurrent trials really overlap).  Prints one JSON line per trial with
every result row Tune received.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from ray import tune
from sklearn.datasets import load_digits
from torch import nn

import pipetune  # pipetune (1/3)


def train(config: dict) -> None:
    barrier = config.get("barrier")
    if barrier:
        Path(barrier, f"{os.getpid()}").touch()
        deadline = time.monotonic() + 120
        while len(list(Path(barrier).iterdir())) < config["samples"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the other trials never started")
            time.sleep(0.05)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    width = 768
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 10))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    n_train, batch = 1400, 64
    for _epoch in range(config["epochs"]):
        steps = 0
        for _ in range(config["passes"]):
            perm = torch.randperm(n_train)
            for i in range(0, n_train, batch):
                idx = perm[i : i + batch]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
                steps += 1
        with torch.no_grad():
            acc = (model(x[n_train:]).argmax(1) == y[n_train:]).float().mean().item()
        pipetune.report({"loss": loss.item(), "accuracy": acc}, steps=steps)  # pipetune (2/3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--mode", default="pipetune")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--passes", type=int, default=30)
    p.add_argument("--space", default="cores=1,2")
    p.add_argument("--barrier", default="")
    p.add_argument("--storage", default=str(Path.cwd() / "ray_results"))
    args = p.parse_args()
    param_space = {
        "lr": tune.grid_search([0.01, 0.02, 0.03, 0.05][: args.samples]),
        "epochs": args.epochs,
        "passes": args.passes,
        "samples": args.samples,
        "barrier": args.barrier,
    }
    tuner = tune.Tuner(
        pipetune.wrap(train, system=pipetune.SystemSpace.parse(args.space),  # pipetune (3/3)
                      mode=args.mode),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="accuracy", mode="max", num_samples=1),
        run_config=tune.RunConfig(name=args.name, storage_path=args.storage, verbose=0),
    )
    results = tuner.fit()
    for r in results:
        rows = r.metrics_dataframe
        keep = [c for c in rows.columns if c.startswith("pt_") or c in ("accuracy", "trial_id")]
        print(json.dumps({"trial": r.metrics.get("trial_id"),
                          "error": str(r.error) if r.error else None,
                          "rows": rows[keep].to_dict("records")}, default=str), flush=True)


if __name__ == "__main__":
    main()
