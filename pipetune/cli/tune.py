"""Run a whole tuning job on a bundled workload (Ray Tune + pipetune).

Ray is started locally unless ``--address`` or ``$RAY_ADDRESS`` points at a
cluster.  The job's epochs, decisions and job facts go to the store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict

from pipetune.config import Settings
from pipetune.errors import ConfigError

COMMAND = "tune"
HELP = "run a tuning job on a bundled workload (modes: pipetune, v1, v2)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "workload", help="bundled workload name or dotted path (see `pipetune train --list`)"
    )
    parser.add_argument("--mode", default="pipetune", help="pipetune | v1 | v2 (default pipetune)")
    parser.add_argument("--samples", type=int, default=4, help="trials (default 4)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default 3)")
    parser.add_argument(
        "--scheduler", default="fifo", help="hyperband | asha | fifo (default fifo)"
    )
    parser.add_argument(
        "--space",
        nargs="+",
        metavar="KEY=V1,V2",
        help="system space, e.g. cores=1,2 memory_mb=1024,none",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="fix a hyperparameter for every trial",
    )
    parser.add_argument("--concurrent", type=int, default=1, help="trials at once (default 1)")
    parser.add_argument("--store", metavar="URL", help="store URL (default: embedded SQLite)")
    parser.add_argument("--job", default="", help="job name (default WORKLOAD-MODE-TIME)")
    parser.add_argument("--seed", type=int, default=0, help="seed for hyperparameters and data")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    parser.add_argument(
        "--schedule",
        nargs="+",
        default=[],
        metavar="KEY=KIND:…",
        help="hyperparameter schedules as a grid (replaces --samples), e.g. "
        "lr=step:0.1,0.05/rate=0.1,0.2/at=2,3/at=5,6 or batch_size=batch:32/factor=2/at=3",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="stage-tree execution: prefixes trials share are trained once",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _parse_set(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipetune.tune.job import JobSpec, run_job
    from pipetune.types import SystemSpace

    kwargs = {}
    if args.space:
        kwargs["space"] = SystemSpace.parse(args.space)
    spec = JobSpec(
        workload=args.workload,
        mode=args.mode,
        samples=args.samples,
        epochs=args.epochs,
        scheduler=args.scheduler,
        concurrent=args.concurrent,
        job=args.job,
        seed=args.seed,
        address=args.address,
        fixed_hparams=_parse_set(args.set),
        schedules=tuple(args.schedule),
        stages=args.stages,
        **kwargs,
    )
    if args.json:
        # Tune prints its progress boxes even at verbose=0: keep stdout pure JSON.
        with contextlib.redirect_stdout(sys.stderr):
            result = run_job(spec, settings, verbose=0)
    else:
        result = run_job(spec, settings, verbose=1)
    if args.json:
        print(json.dumps(asdict(result), indent=2, default=str))
        return 0
    print(
        f"\njob {result.job} ({result.mode}, {result.workload}): "
        f"{len(result.trials)} trials in {result.tuning_s:.1f} s; store {result.store}"
    )
    header = (
        f"{'trial':<14} {'system config':<14} {'chosen by':<10} {'metric':>8} "
        f"{'epochs':>6} {'time s':>7}  hyperparameters"
    )
    print(header)
    print("-" * len(header))
    for t in result.trials:
        metric = next(
            (t[k] for k in ("accuracy", "score") if isinstance(t.get(k), (int, float))), None
        )
        hp = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["hparams"].items()
        )
        print(
            f"{str(t['trial']):<14} {str(t['config']):<14} {str(t['how']):<10} "
            f"{metric if metric is None else f'{metric:.4f}':>8} {str(t['epochs']):>6} "
            f"{(t['seconds'] or 0):>7.1f}  {hp}" + (f"  FAILED: {t['error']}" if t["error"] else "")
        )
    if result.best:
        print(f"best: {result.best['trial']} ({result.best['config']})")
    return 0
