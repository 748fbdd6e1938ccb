"""How the bundled workloads use CPU, memory and the kernel (what a profiler will see).

Each workload trains ``--epochs`` epochs with its default hyperparameters in
a fresh process; around the epochs the process's own counters are read
(``getrusage`` deltas and ``/proc/self/status``): CPU seconds in user and
kernel mode, cores used (CPU seconds / wall seconds), voluntary and
involuntary context switches and minor page faults per CPU-second, peak
resident memory and threads.  No perf needed.

    python benchmarks/workload_usage.py [--epochs 1] [--out results/workloads]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def measure(name: str, epochs: int, threads: int, results: Any) -> None:
    import torch

    from workloads import get_workload

    torch.set_num_threads(threads)
    wl = get_workload(name)(seed=0)
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    threads_seen = _status("Threads")
    for epoch in range(1, epochs + 1):
        result = wl.train_epoch(epoch)
        threads_seen = max(threads_seen, _status("Threads"))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    cpu = max(user + system, 1e-9)
    results.put({
        "workload": name, "kind": wl.kind, "wall_s": wall, "user_s": user, "sys_s": system,
        "cores_used": cpu / wall, "sys_fraction": system / cpu,
        "vol_ctx_per_cpu_s": (after.ru_nvcsw - before.ru_nvcsw) / cpu,
        "invol_ctx_per_cpu_s": (after.ru_nivcsw - before.ru_nivcsw) / cpu,
        "minor_faults_per_cpu_s": (after.ru_minflt - before.ru_minflt) / cpu,
        "peak_rss_mb": _status("VmHWM") / 1024, "threads": threads_seen,
        "steps": result["steps"], "loss": result["loss"],
    })


def main(argv: list[str] | None = None) -> int:
    import torch.multiprocessing as tmp

    from workloads import list_workloads
    from workloads.base import cpu_count

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=cpu_count())
    p.add_argument("--workloads", nargs="+", default=list_workloads())
    p.add_argument("--out", type=Path, default=Path("results/workloads"))
    args = p.parse_args(argv)
    ctx = tmp.get_context("spawn")
    rows = []
    for name in args.workloads:
        q = ctx.Queue()
        proc = ctx.Process(target=measure, args=(name, args.epochs, args.threads, q))
        proc.start()
        rows.append(q.get(timeout=1800))
        proc.join()
    head = (f"{'workload':15s} {'type':4s} {'wall s':>7s} {'cores':>6s} {'sys %':>6s} "
            f"{'vcsw/cpu-s':>10s} {'ivcsw/cpu-s':>11s} {'minflt/cpu-s':>12s} {'peak MB':>8s} "
            f"{'thr':>4s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['workload']:15s} {r['kind']:4s} {r['wall_s']:7.2f} {r['cores_used']:6.2f} "
            f"{100 * r['sys_fraction']:6.1f} {r['vol_ctx_per_cpu_s']:10.1f} "
            f"{r['invol_ctx_per_cpu_s']:11.1f} {r['minor_faults_per_cpu_s']:12.0f} "
            f"{r['peak_rss_mb']:8.0f} {r['threads']:4d}"
        )
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workload_usage.json").write_text(json.dumps(
        {"loadavg": os.getloadavg(), "threads": args.threads, "rows": rows}, indent=1))
    (args.out / "workload_usage.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
