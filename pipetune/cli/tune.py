"""Run a whole tuning job on a bundled workload (Ray Tune + pipetune).

Ray is started locally unless ``--address`` or ``$RAY_ADDRESS`` points at a
cluster.  The job's epochs, decisions and job facts go to the store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict

from pipetune.config import Settings
from pipetune.errors import ConfigError, UsageError
from pipetune.types import SystemSpace

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
        help="system space, e.g. cores=1,2 memory_mb=1024,none (a dimension left out "
        "keeps its default: cores 1 and all CPUs, no memory limit, 0 GPUs)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="fix a hyperparameter for every trial",
    )
    parser.add_argument("--concurrent", type=int, default=0,
                        help="trials at once (default 0: as many as their Ray reservations "
                             "fit: v1 reserves the default config, v2 the sampled one, "
                             "pipetune the smallest and packs)")
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
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --stages: reuse stages earlier jobs of the same workload, data and seed "
        "recorded in the store (a widened grid trains only what is new)",
    )
    parser.add_argument(
        "--parallel",
        default=None,
        metavar="STRATEGY",
        help="train every trial with a parallel strategy: none | ddp | mp | gpipe (its ranks "
        "are child processes of the trial: one cgroup, one profile); auto: the tuner "
        "probes the strategies that fit, one epoch each, and keeps the fastest. "
        "Default: one process, the workload's own loop",
    )
    parser.add_argument("--workers", type=int, default=None,
                        help="ranks per trial for --parallel (default 2; 1 for none)")
    parser.add_argument("--chunks", type=int, default=None,
                        help="GPipe micro-batches per batch (default 4 for gpipe)")
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="with --parallel: cpu (gloo), cuda (NCCL, one GPU per rank) or "
                        "auto (default)")
    parser.add_argument("--gpu-power-w", type=float, default=None, metavar="W",
                        help="GPU power limit for every GPU of every trial (NVML; through "
                        "the daemon when not root)")
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

    kwargs: dict[str, object] = {}
    parallel = parallel_config(args)
    if parallel is not None:
        kwargs["parallel"] = parallel
    if args.parallel == "auto":
        kwargs["parallel_auto"] = args.workers if args.workers is not None else 2
    if args.space:
        kwargs["space"] = space = _space(args.space)
        if args.parallel == "auto" and space.parallel != ("none",):
            raise UsageError("--parallel auto chooses the strategies: "
                             "leave parallel out of --space")
        if len(space.parallel) > 1 or len(space.workers) > 1:
            raise UsageError("--space with several parallel strategies or worker counts is not "
                             "supported: use --parallel auto --workers N (the tuner chooses "
                             "among the strategies that fit) or --parallel STRATEGY")
        if parallel is None and space.parallel != ("none",):
            from pipetune.parallel import ParallelConfig

            kwargs["parallel"] = ParallelConfig.of(space.parallel[0], workers=space.workers[0],
                                                   device=args.device)
        if not args.json:
            print(f"system space: {_describe(space)}")
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
        reuse=args.reuse,
        gpu_power_w=args.gpu_power_w,
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
        return 130 if result.interrupted else 0
    print(
        f"\njob {result.job} ({result.mode}, {result.workload}): "
        f"{len(result.trials)} trials in {result.tuning_s:.1f} s; store {result.store}"
    )
    if result.spooled:
        print(
            f"{result.spooled} points wait in the spool (the store was unreachable); "
            "the next pipetune command that opens the store replays them"
        )
    if any(t.get("parallel") not in (None, "none") for t in result.trials):
        print("parallel: " + ", ".join(sorted({f"{t.get('parallel')} x{t.get('workers')}"
                                                for t in result.trials})))
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
        # A trial that failed or was stopped before its first result has no
        # metric, epochs or time: show "-", never format None.
        shown = "-" if metric is None else f"{metric:.4f}"
        seconds = t["seconds"]
        secs = f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "-"
        print(
            f"{_cell(t['trial']):<14} {_cell(t['config']):<14} {_cell(t['how']):<10} "
            f"{shown:>8} {_cell(t['epochs']):>6} {secs:>7}  {hp}"
            + (f"  FAILED: {_one_line(t['error'])}" if t["error"] else "")
        )
    if result.best:
        print(f"best: {result.best['trial']} ({result.best['config']})")
    if result.stages:
        st = result.stages
        print(
            f"stages: {st['epochs_trained']} epochs trained of {st['epochs_reported']} "
            f"reported to Tune ({st['epochs_replayed']} replayed, {st['epochs_reused']} of "
            f"them from earlier jobs); stage tree of {st['tree_nodes']} nodes"
        )
    if result.interrupted:
        print(f"job {result.job} was interrupted: the store records it as interrupted")
        return 130
    return 0


def parallel_config(args: argparse.Namespace) -> object:
    """``--parallel/--workers/--chunks/--device`` as a ParallelConfig, or None
    (no ``--parallel``: trials train in one process, as before).

    ``auto``: a trial starts with ``none`` and the tuner chooses among the
    strategies that fit (see :func:`pipetune.tune.job.auto_strategies`).
    """
    if args.parallel is None:
        for flag in ("workers", "chunks"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag} needs --parallel")
        return None
    from pipetune.parallel import ParallelConfig

    if args.parallel == "auto":
        # The trial starts in one process; the tuner probes the strategies
        # that fit (pipetune.tune.job.auto_strategies) with --workers ranks.
        if args.chunks is not None:
            raise UsageError("--chunks with --parallel auto is not supported: gpipe is "
                             "probed with 4 micro-batches")
        return ParallelConfig("none", workers=1, device=args.device)

    return ParallelConfig.of(args.parallel, workers=args.workers, chunks=args.chunks,
                             device=args.device)


def _space(items: list[str]) -> SystemSpace:
    """``--space`` as given; a dimension it leaves out keeps the job's default
    (cores 1 and all of this node's), never the bare type's 1 core:
    ``--space memory_mb=64`` must not quietly mean one core."""
    space = SystemSpace.parse(items)
    given = {item.partition("=")[0].strip().replace("-", "_") for item in items}
    if "cores" not in given:
        space = SystemSpace(
            cores=tuple(sorted({1, os.cpu_count() or 1})),
            memory_mb=space.memory_mb,
            gpus=space.gpus,
            default=space.default if "default" in given else None,
            parallel=space.parallel,
            workers=space.workers,
        )
    return space


def _describe(space: SystemSpace) -> str:
    def values(vs: tuple[int | None, ...]) -> str:
        return ",".join("none" if v is None else str(v) for v in vs)

    return (
        f"cores={values(space.cores)} memory_mb={values(space.memory_mb)} "
        f"gpus={values(space.gpus)}; {len(space)} configs, default {space.default}"
    )


def _cell(v: object) -> str:
    return "-" if v is None else str(v)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
