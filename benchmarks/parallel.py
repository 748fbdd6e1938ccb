"""Compare the parallel strategies side by side: time per epoch and memory per partition.

For LeNet-5 and a deeper sequential CNN on MNIST, trains with ``none``,
``ddp``, ``mp`` and ``gpipe`` in one run on this machine and prints, per
strategy, the time per epoch (and its ratio to ``none``) and each
partition's peak memory: parameters + gradients + optimizer state +
activations saved for backward (counted by autograd's saved-tensor hooks),
plus the worker process's peak RSS; on CUDA also each rank's
``torch.cuda.max_memory_allocated`` on its own device (``cuda max`` column).
Each row says where it ran (``--device``: cpu = gloo, cuda = NCCL with one
GPU per rank, auto = cuda when there is one GPU per process).  Writes
``parallel.json`` and ``parallel.png`` into ``--out`` (default
``results/parallel/``).

    python benchmarks/parallel.py [--epochs 3] [--samples 2048] [--workers 2] [--chunks 4]
                                  [--device auto|cpu|cuda]

On a GPU machine (at least ``--workers`` GPUs; untested on this project's hosts)::

    python benchmarks/parallel.py --device cuda --out results/parallel-cuda

Machines here are shared and noisy: compare the ratios within one run, not
absolute seconds across runs.

``--tune`` runs whole ``pipetune tune`` jobs instead, one per strategy, each
in its own ``PIPETUNE_HOME`` (same seed, so the same trials' hyperparameters):
the single process with all cores' threads (no ``--parallel``: the
workload's own loop in the trial process), DDP with ``--workers`` ranks of
``cores // workers`` threads, GPipe with ``--workers`` stages and mp with
``--workers`` parts.  It prints per strategy the epoch time (the trials'
median of their last epoch: the first one also pays the group's start),
the peak RSS of each rank, the trials' final training loss and its largest
deviation from the single process's (same trial, same epochs), the job's
tuning time, and the ratios to the single process::

    python benchmarks/parallel.py --tune --quick      # lenet5-mnist, v1, 2 trials x 2 epochs

``--auto`` adds a ``--parallel auto`` job (mode pipetune: each trial's tuner
probes the strategies and keeps the fastest) and prints its tuning time and
best accuracy against the best fixed strategy's (issue 17's target: within
1.10x at equal best accuracy), and a ``--parallel none`` job in mode
pipetune beside it (the same tuner with the strategy known: what choosing
the strategy costs, apart from what the tuner costs)::

    python benchmarks/parallel.py --tune --auto --workloads deepcnn-mnist --trials 1 \
        --epochs 6 --samples 0

(``--mode v1`` by default: every trial holds all cores, so the rows differ by
strategy only; in mode pipetune the single-process trial also pays its step
windows' decision waits and the tuner's probes, which the groups do not.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipetune.parallel import DEVICE_CHOICES, ParallelConfig, train  # noqa: E402
from pipetune.parallel.device import cuda_device_count  # noqa: E402
from workloads.base import cpu_count  # noqa: E402

WORKLOADS = ("lenet5-mnist", "deepcnn-mnist")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/parallel"))
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (first is warm-up)")
    p.add_argument("--samples", type=int, default=2048, help="training samples per epoch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(2, cpu_count()))
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    p.add_argument("--strategies", nargs="+", default=["none", "none/1t", "ddp", "mp", "gpipe"],
                   help="none/1t is none with one torch thread")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: cores / processes)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="cpu (gloo), cuda (NCCL, one GPU per rank) or auto (default)")
    p.add_argument("--tune", action="store_true",
                   help="run a `pipetune tune` job per strategy instead (see the docstring)")
    p.add_argument("--quick", action="store_true",
                   help="with --tune: lenet5-mnist, 2 trials x 2 epochs, 1024 samples")
    p.add_argument("--trials", type=int, default=2, help="with --tune: trials per job")
    p.add_argument("--auto", action="store_true",
                   help="with --tune: also a --parallel auto job (mode pipetune), compared "
                   "with the best fixed strategy")
    p.add_argument("--mode", default="v1",
                   help="with --tune: the jobs' mode (default v1: every trial on all cores, "
                   "so the strategies differ and the tuner's probing does not)")
    return p.parse_args(argv)


TUNE_STRATEGIES = ("single", "ddp", "gpipe", "mp")


def run_tune_job(workload: str, strategy: str, args: argparse.Namespace,
                 home: Path, mode: str | None = None) -> dict[str, Any]:
    """One ``pipetune tune`` job (a subprocess, its own home); its figures.

    ``mode``: the job's mode (default: pipetune for auto, ``--mode`` for the others)."""
    import subprocess

    from pipetune.config import Settings
    from pipetune.store import open_store

    # auto needs the tuner (it is the one choosing), so it always runs in mode
    # pipetune; the fixed strategies run in --mode (v1: nothing but the strategy).
    mode = mode or ("pipetune" if strategy == "auto" else args.mode)
    job = f"bench-{strategy}-{mode}"
    cmd = [sys.executable, "-m", "pipetune", "tune", workload, "--mode", mode,
           "--samples", str(args.trials),
           "--epochs", str(args.epochs), "--concurrent", "1", "--job", job, "--json",
           "--set", f"max_train_samples={args.samples}", f"batch_size={args.batch_size}",
           "dropout=0.0"]
    if strategy != "single":
        cmd += ["--parallel", strategy,
                "--workers", "1" if strategy == "none" else str(args.workers),
                "--device", args.device]
        if strategy == "gpipe":
            cmd += ["--chunks", str(args.chunks)]
    env = {**os.environ, "PIPETUNE_HOME": str(home),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    trials = sorted(result["trials"], key=lambda t: t["trial"])
    settings = Settings.load({"home": str(home)}, env={})
    store = open_store(settings.store, spool_root=settings.spool_dir)
    epochs = store.epochs(job)
    store.close()
    losses = []
    for t in trials:
        rows = epochs[epochs["trial"] == t["trial"]].sort_values("time")
        losses.append(float(rows["metric.loss"].iloc[-1]))
    last = [t["history"][-1] for t in trials]
    ranks: dict[int, float] = {}
    for h in (h for t in trials for h in t["history"]):
        for key, v in h.items():
            if key.startswith("pt_rank") and key.endswith("_rss_peak_mb") and v is not None:
                r = int(key.removeprefix("pt_rank").split("_")[0])
                ranks[r] = max(ranks.get(r, 0.0), float(v))
    return {
        "workload": workload, "strategy": strategy, "job": job, "mode": mode,
        "parallel": trials[0].get("parallel"), "workers": trials[0].get("workers"),
        "chosen": [h.get("pt_parallel") for h in last],
        "epoch_s": statistics.median(h["pt_epoch_s"] for h in last),
        "threads_per_rank": last[0].get("pt_rank0_threads") or last[0].get("pt_threads"),
        "rank_rss_peak_mb": [ranks[r] for r in sorted(ranks)],
        "final_losses": losses, "accuracy": [t.get("accuracy") for t in trials],
        "tuning_s": result["tuning_s"], "wall_s": wall,
        "errors": [t["error"] for t in trials if t["error"]],
    }


def tune_table(rows: list[dict[str, Any]]) -> str:
    base = next(r for r in rows if r["strategy"] == "single")
    head = (f"{'strategy':14s} {'epoch s':>8s} {'x single':>8s} {'tuning s':>9s} "
            f"{'x single':>8s} {'final loss (trials)':>22s} {'max |dloss|':>11s}  "
            "peak RSS per rank (MB)")
    lines = [head, "-" * len(head)]
    for r in rows:
        d = max(abs(a - b) / abs(b) for a, b in zip(r["final_losses"], base["final_losses"],
                                                  strict=True))
        label = ("single " + f"{r['threads_per_rank']}t" if r["strategy"] == "single"
                 else f"none {r['threads_per_rank']}t {r['mode']}" if r["strategy"] == "none"
                 else "auto->" + "/".join(sorted({str(c) for c in r["chosen"]}))
                 if r["strategy"] == "auto"
                 else f"{r['strategy']} {r['workers']}x{r['threads_per_rank']}t")
        rss = ", ".join(f"{v:.0f}" for v in r["rank_rss_peak_mb"]) or "-"
        loss = ", ".join(f"{v:.4f}" for v in r["final_losses"])
        lines.append(
            f"{label:14s} {r['epoch_s']:8.2f} {r['epoch_s'] / base['epoch_s']:8.2f} "
            f"{r['tuning_s']:9.1f} {r['tuning_s'] / base['tuning_s']:8.2f} {loss:>22s} "
            f"{100 * d:10.2f}%  {rss}")
    auto = next((r for r in rows if r["strategy"] == "auto"), None)
    fixed = [r for r in rows if r["strategy"] != "auto"]
    if auto is not None and fixed:
        best = min(fixed, key=lambda r: r["tuning_s"])
        lines.append(
            f"\nauto / best fixed ({best['strategy']}): tuning time "
            f"{auto['tuning_s'] / best['tuning_s']:.2f}x; best accuracy "
            f"{_best(auto['accuracy'])} vs {_best(best['accuracy'])}")
        same = next((r for r in fixed if r["strategy"] == "none"), None)
        if same is not None:
            lines.append(
                f"auto / none in mode {same['mode']} (the same tuner, the strategy known): "
                f"tuning time {auto['tuning_s'] / same['tuning_s']:.2f}x; best accuracy "
                f"{_best(auto['accuracy'])} vs {_best(same['accuracy'])}")
    return "\n".join(lines)


def _best(values: list[Any]) -> str:
    scored = [float(v) for v in values if v is not None]
    return f"{max(scored):.4f}" if scored else "-"


def main_tune(args: argparse.Namespace) -> int:
    import tempfile

    if args.quick:
        args.epochs, args.samples, args.trials = 2, 2048, 2
    workload = args.workloads[0] if args.workloads != list(WORKLOADS) else "lenet5-mnist"
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pipetune-bench-") as tmp:
        for strategy in TUNE_STRATEGIES + (("auto",) if args.auto else ()):
            print(f"pipetune tune {workload} with {strategy} ...", file=sys.stderr, flush=True)
            rows.append(run_tune_job(workload, strategy, args, Path(tmp) / strategy))
            print(f"  tuning {rows[-1]['tuning_s']:.1f} s, chosen {rows[-1]['chosen']}",
                  file=sys.stderr, flush=True)
        if args.auto and args.mode != "pipetune":
            # auto's own mode with the strategy known: what choosing it costs
            print(f"pipetune tune {workload} with none, mode pipetune ...", file=sys.stderr,
                  flush=True)
            rows.append(run_tune_job(workload, "none", args, Path(tmp) / "none", "pipetune"))
    text = tune_table(rows)
    print(f"{workload}: mode {args.mode}, {args.trials} trials x {args.epochs} epochs, "
          f"{args.samples} samples, batch {args.batch_size}, {cpu_count()} cores, one trial "
          "at a time")
    print(text)
    load = os.getloadavg()
    (args.out / "parallel-tune.json").write_text(json.dumps(
        {"host": {"cores": cpu_count(), "loadavg": load},
         "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    (args.out / "parallel-tune.txt").write_text(text + "\n")
    print(f"\nload average during the run: {load[0]:.1f}; wrote {args.out}/parallel-tune.json",
          file=sys.stderr)
    return 0


def run_one(workload: str, strategy: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run.  ``none/1t`` is ``none`` with one torch thread; by default a process
    gets cores / processes threads (``none`` all of them, ddp/mp/gpipe workers one
    each on two cores), which the ``Nt`` suffix of each row says."""
    threads = args.threads
    if strategy == "none/1t":
        strategy, threads = "none", 1
    workers = 1 if strategy == "none" else args.workers
    config = ParallelConfig(strategy, workers=workers,
                            chunks=args.chunks if strategy == "gpipe" else 1,
                            device=args.device)
    eff_threads = threads or max(1, cpu_count() // workers)
    hparams = {"max_train_samples": args.samples, "batch_size": args.batch_size, "dropout": 0.0}
    t0 = time.perf_counter()
    records = train(workload, hparams, parallel=config, epochs=args.epochs,
                    data_dir=args.data_dir, measure_memory=True,
                    threads_per_worker=threads)
    wall = time.perf_counter() - t0
    seconds = [r["seconds"] for r in records]
    steady = seconds[1:] or seconds  # the first epoch pays one-off costs (allocator, gloo)
    return {
        "workload": workload,
        "strategy": strategy,
        "config": f"{config} {eff_threads}t",
        "threads": eff_threads,
        "workers": workers,
        "chunks": config.chunks,
        "device": records[0]["device"],
        "epoch_s": statistics.median(steady),
        "first_epoch_s": seconds[0],
        "epoch_seconds": seconds,
        "wall_s": wall,
        "loss": records[-1]["loss"],
        "accuracy": records[-1]["accuracy"],
        "partitions": records[0]["partitions"],
        "data": records[0].get("data", ""),
    }


def table(rows: list[dict[str, Any]]) -> str:
    cuda = any("cuda_max_allocated_mb" in p for r in rows for p in r["partitions"])
    head = (f"{'workload':14s} {'strategy':24s} {'epoch s':>8s} {'x none':>7s} {'loss':>7s} "
            f"{'acc':>6s} | {'part':>4s} {'device':>6s} {'params':>7s} {'grads':>7s} "
            f"{'optim':>7s} {'activ':>7s} {'total':>7s} {'rss':>7s}"
            + (f" {'cuda max':>8s}" if cuda else "") + "  (MB)")
    lines = [head, "-" * len(head)]
    base: dict[str, float] = {}
    for r in rows:  # the first "none" row of each workload (default threads)
        if r["strategy"] == "none":
            base.setdefault(r["workload"], r["epoch_s"])
    for r in rows:
        ratio = r["epoch_s"] / base[r["workload"]] if r["workload"] in base else float("nan")
        for i, p in enumerate(r["partitions"]):
            left = (f"{r['workload']:14s} {r['config']:24s} {r['epoch_s']:8.2f} {ratio:7.2f} "
                    f"{r['loss']:7.4f} {r['accuracy']:6.3f}") if i == 0 else " " * 71
            cuda_max = p.get("cuda_max_allocated_mb")
            lines.append(
                f"{left} | {i:4d} {p.get('device', r['device']):>6s} {p['params_mb']:7.3f} "
                f"{p['grads_mb']:7.3f} {p['optimizer_mb']:7.3f} {p['activations_mb']:7.3f} "
                f"{p['total_mb']:7.3f} {p['rss_peak_mb']:7.1f}"
                + ((f" {cuda_max:8.2f}" if cuda_max is not None else f" {'-':>8s}")
                   if cuda else "")
            )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(len(workloads), 2, figsize=(12, 3.6 * len(workloads)),
                             squeeze=False)
    parts = ("params_mb", "grads_mb", "optimizer_mb", "activations_mb")
    colours = ("#4c72b0", "#55a868", "#c44e52", "#8172b2")
    for row, wl in enumerate(workloads):
        rs = [r for r in rows if r["workload"] == wl]
        ax = axes[row][0]
        ax.bar([r["config"] for r in rs], [r["epoch_s"] for r in rs], color="#4c72b0")
        ax.set_ylabel("seconds per epoch")
        ax.set_title(f"{wl}: time per epoch")
        ax.tick_params(axis="x", labelrotation=15)
        ax = axes[row][1]
        labels, bottoms = [], []
        for r in rs:
            for i, _ in enumerate(r["partitions"]):
                labels.append(f"{r['strategy']} {r['threads']}t:{i}")
                bottoms.append(0.0)
        for key, colour in zip(parts, colours, strict=True):
            values = [p[key] for r in rs for p in r["partitions"]]
            ax.bar(labels, values, bottom=bottoms, color=colour, label=key.removesuffix("_mb"))
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
        cuda_max = [p.get("cuda_max_allocated_mb") for r in rs for p in r["partitions"]]
        if any(v is not None for v in cuda_max):
            ax.scatter([lb for lb, v in zip(labels, cuda_max, strict=True) if v is not None],
                       [v for v in cuda_max if v is not None], color="black", marker="_",
                       s=300, zorder=3, label="cuda max allocated")
        ax.set_ylabel("MB per partition")
        ax.set_title(f"{wl}: peak memory per partition (rank)")
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cuda_names() -> list[str]:
    """Names of the CUDA devices torch sees (empty on a CPU-only host)."""
    import torch

    return [torch.cuda.get_device_name(i) for i in range(cuda_device_count())]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tune:
        return main_tune(args)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for wl in args.workloads:
        for strategy in args.strategies:
            print(f"running {wl} with {strategy} ...", file=sys.stderr, flush=True)
            rows.append(run_one(wl, strategy, args))
    text = table(rows)
    print(text)
    load = os.getloadavg()
    result = {
        "host": {"machine": platform.machine(), "cores": cpu_count(), "python": sys.version,
                 "loadavg": load, "cuda_devices": _cuda_names()},
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
    }
    (args.out / "parallel.json").write_text(json.dumps(result, indent=1))
    (args.out / "parallel.txt").write_text(text + "\n")
    plot(rows, args.out / "parallel.png")
    print(f"\nload average during the run: {load[0]:.1f}; wrote {args.out}/parallel.json, "
          f"parallel.txt, parallel.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
