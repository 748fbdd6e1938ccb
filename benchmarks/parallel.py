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
    return p.parse_args(argv)


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
