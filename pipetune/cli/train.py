"""Train one trial of a bundled (or your own) workload, no Ray, no tuner.

Prints one line per epoch (loss, the workload's quality metric, seconds);
``--json`` prints the list of epoch records instead.  Which data was used
is said on stderr (the bundled workloads fall back to data that packages
ship when the real files are not under the data folder).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from pipetune.config import Settings
from pipetune.errors import UsageError

COMMAND = "train"
HELP = "train one trial of a workload (optionally data/model/pipeline parallel)"

_STRATEGIES = ("none", "ddp", "mp", "gpipe")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workload", nargs="?", metavar="WORKLOAD",
                        help="registered name (see --list) or module:Class of your own")
    parser.add_argument("--set", dest="hparams", action="append", default=[],
                        metavar="KEY=VALUE", help="a hyperparameter (repeatable)")
    parser.add_argument("--parallel", default="none", metavar="STRATEGY",
                        help=f"training strategy: {', '.join(_STRATEGIES)} (default none)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes for ddp/mp/gpipe (default 2; 1 for none)")
    parser.add_argument("--chunks", type=int, default=None,
                        help="GPipe micro-batches per batch (default 4 for gpipe)")
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="cpu (gloo), cuda (NCCL, one GPU per worker) or auto: cuda when "
                             "there is one GPU per worker, else cpu (default auto)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs to train (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and shuffling")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder with the data sets (default $PIPETUNE_HOME/data)")
    parser.add_argument("--json", action="store_true", help="print the epochs as JSON")
    parser.add_argument("--list", action="store_true",
                        help="list the workloads and their hyperparameters, then exit")


def parse_sets(items: list[str]) -> dict[str, str]:
    """``["lr=0.1", "batch_size=32"]`` -> ``{"lr": "0.1", "batch_size": "32"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from workloads import get_workload, list_workloads

    if args.list:
        for name in list_workloads():
            cls = get_workload(name)
            hp = " ".join(f"{k}={v}" for k, v in cls.hyperparameters.items())
            print(f"{name:16s} type {cls.kind:3s} metric {cls.metric:9s} {hp}")
        return 0
    if not args.workload:
        raise UsageError("name a WORKLOAD (known: " + ", ".join(list_workloads()) + ")")
    if args.parallel not in _STRATEGIES:
        raise UsageError(
            f"unknown parallel strategy {args.parallel!r} (known: {', '.join(_STRATEGIES)})"
        )
    from pipetune.parallel import ParallelConfig, train

    config = ParallelConfig.of(args.parallel, workers=args.workers, chunks=args.chunks,
                               device=args.device)
    data_dir = args.data_dir or str(settings.home / "data")
    cls = get_workload(args.workload)
    said_data = False

    def on_epoch(record: dict[str, Any]) -> None:
        nonlocal said_data
        if not said_data and record.get("data"):
            print(f"data: {record['data']}", file=sys.stderr)
            said_data = True
        if args.json:
            return
        metric = record.get(cls.metric, float("nan"))
        print(f"epoch {record['epoch']:3d}  loss {_fmt(record['loss'])}  "
              f"{cls.metric} {_fmt(metric)}  {record['seconds']:.2f} s  "
              f"({record['steps']} steps, {record['samples']} samples, {config}, "
              f"{record.get('device', 'cpu')})", flush=True)

    records = train(args.workload, parse_sets(args.hparams), parallel=config,
                    epochs=args.epochs, seed=args.seed, data_dir=data_dir, on_epoch=on_epoch)
    if args.json:
        print(json.dumps(records, indent=1, default=str))
    return 0
