"""A stream of tuning jobs on one node: mean and p95 job response time per mode.

Jobs arrive with exponential inter-arrival times (seeded); job *i* trains a
workload of one type (``--type I``: the image CNNs) chosen round-robin, and a
fraction (``--unseen``, 20 % as in the paper) of the jobs trains a workload the
ground truth never saw.  pipetune's jobs share one ``PIPETUNE_HOME``, so the
ground truth learns along the stream (the point of it), except that an unseen
job runs in a throwaway copy of that home, so it stays unseen for the next
one too.  V1 and V2 jobs each get a fresh home.

The node serves one tuning job at a time, first come first served (a job
takes the whole node: 2 cores here).  Every job is *run for real*, one after
the other, with the modes interleaved job by job (order rotating); the
queue is then replayed on the measured service times: start = max(arrival,
previous finish), response = finish − arrival.  That is exactly the FIFO
single-server schedule those service times give, without making the machine
sit idle between arrivals.

Usage::

    PYTHONPATH=$PWD python benchmarks/multitenant.py --quick
    PYTHONPATH=$PWD python benchmarks/multitenant.py --jobs 10 --mean-interarrival-s 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MODES = ("v1", "v1-packed", "v2", "pipetune")


# -- pure helpers (tested in tests/benchmarks/test_benchmarks_smoke.py) -----------------


def arrivals(n: int, mean_s: float, seed: int) -> list[float]:
    """``n`` arrival times (first at 0) with exponential gaps of mean ``mean_s``."""
    import numpy as np

    gaps = np.random.default_rng(seed).exponential(mean_s, size=max(n - 1, 0))
    return [0.0, *np.cumsum(gaps).tolist()][:n]


def job_plan(n: int, seen: Sequence[str], unseen: Sequence[str], fraction: float,
             seed: int) -> list[tuple[str, bool]]:
    """``(workload, is_unseen)`` per job: ``round(n * fraction)`` jobs (never
    the first, picked with the seed) train an unseen workload (round-robin
    over ``unseen``), the others round-robin over ``seen``."""
    import numpy as np

    k = min(round(n * fraction), max(n - 1, 0)) if unseen else 0
    picks = set(np.random.default_rng(seed).choice(range(1, n), size=k, replace=False).tolist()
                ) if k else set()
    plan, i_seen, i_unseen = [], 0, 0
    for j in range(n):
        if j in picks:
            plan.append((unseen[i_unseen % len(unseen)], True))
            i_unseen += 1
        else:
            plan.append((seen[i_seen % len(seen)], False))
            i_seen += 1
    return plan


def fifo_response_s(arrival_s: Sequence[float], service_s: Sequence[float]) -> list[float]:
    """Response times of a single FIFO server (jobs in arrival order)."""
    out, free_at = [], 0.0
    for a, s in sorted(zip(arrival_s, service_s, strict=True)):
        start = max(a, free_at)
        free_at = start + s
        out.append(free_at - a)
    return out


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile (nan when empty)."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s), max(1, math.ceil(0.95 * len(s)))) - 1]


# -- running ------------------------------------------------------------------------------


def _run(mode: str, workload: str, home: Path, args: argparse.Namespace, job: str) -> float:
    from pipetune.config import Settings
    from pipetune.tune.job import JobSpec, run_job
    from pipetune.types import SystemSpace

    cores = tuple(range(1, (os.cpu_count() or 1) + 1))
    if mode == "v1-packed":
        # V1 packed by hand, as in benchmarks/tuning.py: every trial on one
        # core, Ray running as many at once as those reservations fit.
        cores = (1,)
    spec = JobSpec(workload=workload, mode={"v1-packed": "v1"}.get(mode, mode),
                   samples=args.samples, epochs=args.epochs, space=SystemSpace(cores=cores),
                   seed=args.seed, job=job,
                   fixed_hparams={"max_train_samples": args.max_train_samples}
                   if args.max_train_samples else {})
    t0 = time.monotonic()
    with contextlib.redirect_stdout(sys.stderr):
        run_job(spec, Settings(home=home), verbose=0)
    return time.monotonic() - t0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 jobs of 2 trials x 3 epochs")
    p.add_argument("--jobs", type=int, help="jobs in the stream (quick 4, else 10)")
    p.add_argument("--type", default="I", help="workload type: I, II or III")
    p.add_argument("--workloads", metavar="A,B,...",
                   help="the stream's workloads instead of a type's: the last one is the "
                        "unseen one (e.g. deepcnn-mnist,lenet5-fashion,lenet5-mnist)")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of " + ",".join(MODES))
    p.add_argument("--unseen", type=float, default=0.2, help="fraction of unseen jobs")
    p.add_argument("--mean-interarrival-s", type=float, default=None,
                   help="mean gap between arrivals (quick 30, else 60)")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-train-samples", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/multitenant")
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args(argv)
    n = args.jobs or (4 if args.quick else 10)
    mean_gap = args.mean_interarrival_s or (30.0 if args.quick else 60.0)

    import ray

    from workloads import REGISTRY

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if "pipetune" not in modes or "v1" not in modes or set(modes) - set(MODES):
        p.error(f"--modes {args.modes!r}: a comma list of {', '.join(MODES)} with v1 and pipetune")
    if args.workloads:
        names = [w.strip() for w in args.workloads.split(",") if w.strip()]
        missing = [w for w in names if w not in REGISTRY]
        if missing or len(names) < 2:
            p.error(f"--workloads {args.workloads!r}: two or more of {', '.join(sorted(REGISTRY))}")
    else:
        names = [w for w, cls in REGISTRY.items() if getattr(cls, "kind", "") == args.type]
        if len(names) < 2:
            p.error(f"type {args.type!r} has {len(names)} workloads; need 2 or more")
    seen, unseen = names[:-1], names[-1:]
    plan = job_plan(n, seen, unseen, args.unseen, args.seed)
    arr = arrivals(n, mean_gap, args.seed)
    root = Path(tempfile.mkdtemp(prefix="pipetune-mt-"))
    shared = root / "pipetune-shared"
    started = time.monotonic()
    print(f"{n} jobs of type {args.type}: " + ", ".join(
        f"{w}{' (unseen)' if u else ''}@{a:.0f}s" for (w, u), a in zip(plan, arr, strict=True)),
        flush=True)
    service: dict[str, list[float]] = {m: [] for m in modes}
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             log_to_driver=False)
    try:
        for j, (workload, is_unseen) in enumerate(plan):
            for k in range(len(modes)):
                mode = modes[(j + k) % len(modes)]
                if mode == "pipetune":
                    home = shared
                    if is_unseen:
                        home = root / f"pipetune-unseen-{j}"
                        if shared.exists():
                            shutil.copytree(shared, home,
                                            ignore=shutil.ignore_patterns("ray_results"))
                else:
                    home = root / f"{mode}-{j}"
                s = _run(mode, workload, home, args, f"mt-{mode}-{j}")
                service[mode].append(s)
                print(f"[{time.monotonic() - started:6.0f} s] job {j} {workload} {mode}: "
                      f"{s:.1f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)

    summary = {}
    unseen_idx = [j for j, (_, u) in enumerate(plan) if u]
    for mode in modes:
        resp = fifo_response_s(arr, service[mode])
        summary[mode] = {
            "mean_response_s": statistics.fmean(resp), "p95_response_s": p95(resp),
            "mean_service_s": statistics.fmean(service[mode]),
            "unseen_mean_service_s": statistics.fmean([service[mode][j] for j in unseen_idx])
            if unseen_idx else None,
            "response_s": resp, "service_s": service[mode],
        }
    head = f"{'mode':<20} {'mean resp s':>11} {'p95 resp s':>10} {'mean service s':>14}"
    print("\n" + head + "\n" + "-" * len(head))
    for mode, r in summary.items():
        print(f"{mode:<20} {r['mean_response_s']:>11.1f} {r['p95_response_s']:>10.1f} "
              f"{r['mean_service_s']:>14.1f}")
    for den in (m for m in modes if m != "pipetune"):
        print(f"{'pipetune/' + den:<20} {summary['pipetune']['mean_response_s'] / summary[den]['mean_response_s']:>11.3f} "  # noqa: E501
              f"{summary['pipetune']['p95_response_s'] / summary[den]['p95_response_s']:>10.3f}")
    data = {"benchmark": "multitenant", "argv": sys.argv[1:], "plan": plan, "arrivals_s": arr,
            "samples": args.samples, "epochs": args.epochs,
            "max_train_samples": args.max_train_samples, "summary": summary,
            "total_s": time.monotonic() - started}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, default=str)
    (out / "multitenant.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    print(f"JSON {out / 'multitenant.json'}; total {data['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
