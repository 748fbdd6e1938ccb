"""A user-style Ray Tune script with pipetune: three changed lines.

A small MLP on scikit-learn's bundled handwritten digits (real data, offline).
The lines marked ``# pipetune`` are all that differ from plain Ray Tune:

    python examples/tune_digits.py --samples 4 --epochs 3 --mode pipetune
"""

from __future__ import annotations

import argparse

import torch
from ray import tune
from sklearn.datasets import load_digits
from torch import nn

import pipetune  # pipetune  (1/3)
from pipetune.types import SystemSpace


def train(config: dict) -> None:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, config["hidden"]), nn.ReLU(), nn.Linear(config["hidden"], 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    n_train = 1400
    for epoch in range(config["epochs"]):
        if config.get("crash_at") == epoch:
            raise RuntimeError("this trial crashes on purpose")
        perm = torch.randperm(n_train)
        for i in range(0, n_train, 32):
            idx = perm[i : i + 32]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = (model(x[n_train:]).argmax(1) == y[n_train:]).float().mean().item()
        pipetune.report(
            {"loss": loss.item(), "accuracy": acc}, steps=n_train // 32
        )  # pipetune (2/3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--mode", default="pipetune", choices=["pipetune", "v1", "v2"])
    p.add_argument("--crash-one", action="store_true", help="make one trial fail")
    args = p.parse_args()
    space = SystemSpace.parse("cores=1,2")
    param_space = {
        "lr": tune.loguniform(1e-3, 1e-1),
        "hidden": tune.choice([32, 64, 128]),
        "epochs": args.epochs,
        "cores": tune.choice([1, 2]),  # used by mode v2 only
        "crash_at": tune.grid_search([None, 1] if args.crash_one else [None]),
    }
    tuner = tune.Tuner(
        pipetune.wrap(train, system=space, mode=args.mode),  # pipetune (3/3)
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="accuracy", mode="max", num_samples=args.samples),
        run_config=tune.RunConfig(name="digits", verbose=0),
    )
    results = tuner.fit()
    for r in results:
        m = r.metrics or {}
        print(
            f"{m.get('pt_config')} {m.get('pt_phase')} accuracy={m.get('accuracy')} "
            f"error={'yes' if r.error else 'no'}"
        )
    best = results.get_best_result()
    print("best accuracy", best.metrics["accuracy"], "config", best.metrics["pt_config"])


if __name__ == "__main__":
    main()
