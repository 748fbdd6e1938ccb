"""How well do profiles tell workloads apart on this host?

Runs each workload several times under :class:`pipetune.profiler.TrialProfiler`
with the events this host has, turns each run into one profile (mean rates
over a few seconds after start-up), and reports

- nearest-centroid accuracy under leave-one-out (is a run closest to the
  centroid of its own workload's other runs?), and
- the adjusted Rand index of k-means (k = number of workloads, and k chosen
  by silhouette) against the workload labels,

for three feature sets: perf events only, procfs figures only, and both.
This is the honest measure of whether PMU-less profiling works (DESIGN §7).

Features: every count is taken per CPU-second (divided by the task-clock /
procfs CPU rate, so a workload that got less CPU on the contended box still
looks like itself), the CPU rate itself and the gauges are kept as they are;
then log1p and standardised per feature.

Usage::

    python benchmarks/profile_separation.py                # built-in workloads
    python benchmarks/profile_separation.py --runs 2 --seconds 2
    python benchmarks/profile_separation.py --workload a="python3 x.py" \\
        --workload b="python3 y.py"                        # your own commands

A workload that prints a line ``READY`` is profiled from that line on (so
imports are left out); others from ``--skip-s`` after launch.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from pipetune.profiler import TrialProfiler, available_events, is_gauge  # noqa: E402

PY = sys.executable

# Small, clearly different workloads; each prints READY after its imports and
# then runs until it is ended.
BUILTIN: dict[str, str] = {
    "matmul": "import numpy as np\nprint('READY', flush=True)\n"
              "a = np.random.rand(300, 300)\nwhile True:\n    a = (a @ a) / 300.0\n",
    "pyloop": "print('READY', flush=True)\nx = 0\nwhile True:\n"
              "    for i in range(100000):\n        x = (x * 31 + i) % 1000003\n",
    "fileio": "import os, tempfile\nprint('READY', flush=True)\n"
              "fd, path = tempfile.mkstemp()\nbuf = os.urandom(1 << 16)\ntry:\n"
              "    while True:\n        os.write(fd, buf); os.fsync(fd)\n"
              "        if os.lseek(fd, 0, 1) > (64 << 20): os.lseek(fd, 0, 0)\n"
              "finally:\n    os.unlink(path)\n",
    "alloc": "print('READY', flush=True)\nwhile True:\n"
             "    bufs = [bytearray(1 << 20) for _ in range(64)]\n"
             "    for b in bufs: b[::4096] = b'x' * len(b[::4096])\n    del bufs\n",
    "threads": "import threading, time\nprint('READY', flush=True)\n"
               "def w():\n    while True: time.sleep(0.001)\n"
               "for _ in range(16): threading.Thread(target=w, daemon=True).start()\n"
               "while True: time.sleep(1)\n",
    "dictchurn": "import random\nprint('READY', flush=True)\nwhile True:\n"
                 "    d = {random.random(): str(i) for i in range(200000)}\n"
                 "    s = sorted(d)\n    del d, s\n",
    "torchcnn": "import torch, torch.nn as nn\ntorch.manual_seed(0)\n"
                "m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), "
                "nn.Flatten(), nn.Linear(8 * 13 * 13, 10))\n"
                "opt = torch.optim.SGD(m.parameters(), lr=0.01)\n"
                "x = torch.randn(64, 1, 28, 28); y = torch.randint(0, 10, (64,))\n"
                "print('READY', flush=True)\nwhile True:\n"
                "    opt.zero_grad(); nn.functional.cross_entropy(m(x), y).backward(); "
                "opt.step()\n",
}


@dataclass
class Run:
    label: str
    rates: dict[str, float]


def _cpu_rate(rates: dict[str, float]) -> float:
    if "task-clock" in rates:
        return rates["task-clock"] / 1000.0
    return rates.get("proc.cpu_user_s", 0.0) + rates.get("proc.cpu_system_s", 0.0)


def profile_once(label: str, cmd: list[str], seconds: float, interval_ms: int,
                 events: tuple[str, ...], skip_s: float, ready_timeout_s: float) -> Run:
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    ready = threading.Event()

    def watch() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == "READY":
                ready.set()

    threading.Thread(target=watch, daemon=True).start()
    tp = TrialProfiler([proc.pid], interval_ms=interval_ms, events=events)
    try:
        tp.start()
        if not ready.wait(ready_timeout_s):
            time.sleep(max(0.0, skip_s))
        start = time.time()
        time.sleep(seconds)
        end = time.time()
        prof = tp.profile(start, end, wait_s=2 * interval_ms / 1000)
    finally:
        tp.stop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return Run(label, dict(prof.rates))


def features(runs: list[Run], keep) -> tuple[np.ndarray, list[str]]:
    names = sorted({k for r in runs for k in r.rates if keep(k)})
    rows = []
    for r in runs:
        cpu = max(_cpu_rate(r.rates), 1e-3)
        row = []
        for k in names:
            v = r.rates.get(k, 0.0)
            if k in ("task-clock",) or is_gauge(k) or k.startswith("proc.cpu_"):
                row.append(math.log1p(max(v, 0.0)))
            else:
                row.append(math.log1p(max(v, 0.0) / cpu))
        rows.append(row)
    x = np.array(rows, dtype=float)
    sd = x.std(axis=0)
    keep_cols = sd > 1e-9
    x = (x[:, keep_cols] - x[:, keep_cols].mean(axis=0)) / sd[keep_cols]
    return x, [n for n, k in zip(names, keep_cols, strict=True) if k]


def nearest_centroid_loo(x: np.ndarray, labels: list[str]) -> tuple[float, list[str]]:
    """Accuracy, and the misses as "run i: label -> predicted"."""
    hits = 0
    misses: list[str] = []
    for i in range(len(labels)):
        best, best_d = None, math.inf
        for lab in sorted(set(labels)):
            idx = [j for j in range(len(labels)) if labels[j] == lab and j != i]
            if not idx:
                continue
            d = float(np.linalg.norm(x[i] - x[idx].mean(axis=0)))
            if d < best_d:
                best, best_d = lab, d
        hits += best == labels[i]
        if best != labels[i]:
            misses.append(f"{labels[i]}->{best}")
    return hits / len(labels), misses


def kmeans_ari(x: np.ndarray, labels: list[str]) -> tuple[float, float, int]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    k_true = len(set(labels))
    pred = KMeans(n_clusters=k_true, n_init=20, random_state=0).fit_predict(x)
    ari_k = adjusted_rand_score(labels, pred)
    best = (-1.0, 2, pred)
    for k in range(2, min(len(labels) - 1, 2 * k_true) + 1):
        p = KMeans(n_clusters=k, n_init=20, random_state=0).fit_predict(x)
        s = silhouette_score(x, p)
        if s > best[0]:
            best = (s, k, p)
    return ari_k, adjusted_rand_score(labels, best[2]), best[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", action="append", default=[], metavar="NAME=CMD",
                    help="a workload command (repeat); default: the built-in set")
    ap.add_argument("--only", help="comma-separated subset of the built-in workloads")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="profiled seconds per run")
    ap.add_argument("--interval-ms", type=int, default=500)
    ap.add_argument("--full-events", action="store_true",
                    help="every supported event, redundant ones included (default: lean set)")
    ap.add_argument("--skip-s", type=float, default=1.0,
                    help="start-up left out for commands that print no READY line")
    args = ap.parse_args(argv)

    support = available_events()
    events = support.default_events(full=args.full_events)
    if not support.perf_available:
        print(f"perf unusable ({support.reason}): procfs figures only")
    workloads: dict[str, tuple[list[str], float]] = {}
    for item in args.workload:
        name, sep, cmd = item.partition("=")
        if not sep or not cmd.strip():
            ap.error(f"--workload {item!r}: expected NAME=CMD")
        workloads[name] = (shlex.split(cmd), 0.0)
    if not workloads:
        names = args.only.split(",") if args.only else list(BUILTIN)
        for name in names:
            if name not in BUILTIN:
                ap.error(f"--only: unknown workload {name!r} (known: {', '.join(BUILTIN)})")
            workloads[name] = ([PY, "-c", BUILTIN[name]], 60.0)

    print(f"host: pmu={support.pmu}, {len(events)} perf events + procfs figures; "
          f"{len(workloads)} workloads x {args.runs} runs x {args.seconds:.1f} s "
          f"@ {args.interval_ms} ms")
    t_start = time.time()
    runs: list[Run] = []
    # Interleave the runs so slow drifts of the shared machine hit every workload alike.
    for rep in range(args.runs):
        for name, (cmd, ready_timeout) in workloads.items():
            r = profile_once(name, cmd, args.seconds, args.interval_ms, events, args.skip_s,
                             ready_timeout)
            runs.append(r)
            print(f"  run {rep} {name:<10} cpu={_cpu_rate(r.rates):5.2f} CPU-s/s  "
                  f"figures={len(r.rates)}", flush=True)
    labels = [r.label for r in runs]
    print()
    print(f"{'features':<22}{'n':>4}{'NC-LOO acc':>12}{'ARI k=true':>12}{'ARI k=sil':>11}")
    sets = {
        "perf (sw+tracepoints)" if not support.pmu else "perf events":
            lambda k: not k.startswith("proc."),
        "procfs only": lambda k: k.startswith("proc."),
        "all": lambda k: True,
    }
    for title, keep in sets.items():
        x, names = features(runs, keep)
        if x.shape[1] == 0:
            print(f"{title:<22}{0:>4}  (no features)")
            continue
        acc, misses = nearest_centroid_loo(x, labels)
        ari, ari_sil, k_sil = kmeans_ari(x, labels)
        print(f"{title:<22}{len(names):>4}{acc:>12.3f}{ari:>12.3f}{ari_sil:>8.3f} (k={k_sil})"
              + (f"  misses: {', '.join(misses)}" if misses else ""))
    print(f"\n{len(runs)} runs in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
