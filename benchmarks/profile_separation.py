"""How well do profiles tell workloads apart on this host?

Runs each bundled workload (``workloads/``: Types I, II, III) several times
as a child process (``benchmarks/bundled_runner.py``: builds it, trains one
step, prints READY, trains until ended) under
:class:`pipetune.profiler.TrialProfiler` with the events this host has, turns
each run into one profile (mean rates over ``--seconds`` after READY, so
imports and data load are left out), and reports

- nearest-centroid accuracy under leave-one-out (is a run closest to the
  centroid of its own workload's other runs?), and
- the adjusted Rand index of k-means (k = number of workloads, and k chosen
  by silhouette) against the workload labels, and of k-means with k = number
  of types against the type labels,

for three feature sets: perf events only, procfs figures only, and both.
This is the honest measure of whether PMU-less profiling works (DESIGN §7).

Features: every count is taken per CPU-second (divided by the task-clock /
procfs CPU rate, so a workload that got less CPU on the contended box still
looks like itself), the CPU rate itself and the gauges are kept as they are;
then log1p and standardised per feature.

Usage::

    python benchmarks/profile_separation.py --save results/profiles.json
    python benchmarks/profile_separation.py --load results/profiles.json   # re-analyse
    python benchmarks/profile_separation.py --load a.json --load b.json    # pool two sets
    python benchmarks/profile_separation.py --only jacobi,bfs --runs 2 --seconds 2
    python benchmarks/profile_separation.py --standins     # the old built-in scripts
    python benchmarks/profile_separation.py --workload a="python3 x.py" \\
        --workload b="python3 y.py"                        # your own commands

A workload that prints a line ``READY`` is profiled from that line on; others
from ``--skip-s`` after launch.  ``benchmarks/groundtruth_ari.py --load`` reads
the same JSON, so one profiled set serves both benchmarks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
from bundled_profiles import (  # noqa: E402
    Run,
    bundled_kinds,
    collect,
    load_runs,
    runner_command,
    save_runs,
)

from pipetune.profiler import available_events, is_gauge  # noqa: E402

PY = sys.executable

# Stand-ins (--standins): small, clearly different scripts; each prints READY after its imports and
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


def _cpu_rate(rates: dict[str, float]) -> float:
    if "task-clock" in rates:
        return rates["task-clock"] / 1000.0
    return rates.get("proc.cpu_user_s", 0.0) + rates.get("proc.cpu_system_s", 0.0)


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


def kmeans_ari_fixed(x: np.ndarray, labels: list[str], k: int) -> float:
    """ARI of k-means with ``k`` clusters against ``labels``."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(
        labels, KMeans(n_clusters=k, n_init=20, random_state=0).fit_predict(x)))


def plot_projection(x: np.ndarray, runs: list[Run], title: str, path: str) -> None:
    """2-D PCA of the standardised profiles, one colour per type, one marker per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xc = x - x.mean(axis=0)
    _, sv, vt = np.linalg.svd(xc, full_matrices=False)
    xy = xc @ vt[:2].T
    var = (sv[:2] ** 2) / max(float((sv ** 2).sum()), 1e-12)
    colours = {"I": "tab:blue", "II": "tab:orange", "III": "tab:green"}
    markers = "osD^v<>PX*"
    names = sorted({r.workload for r in runs})
    fig, ax = plt.subplots(figsize=(7, 5))
    for n_i, name in enumerate(names):
        idx = [i for i, r in enumerate(runs) if r.workload == name]
        kind = runs[idx[0]].kind
        ax.scatter(xy[idx, 0], xy[idx, 1], c=colours.get(kind, "grey"),
                   marker=markers[n_i % len(markers)], label=f"{name} ({kind})", s=50)
    ax.set_xlabel(f"PC1 ({var[0]:.0%})")
    ax.set_ylabel(f"PC2 ({var[1]:.0%})" if len(var) > 1 else "PC2")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", action="append", default=[], metavar="NAME=CMD",
                    help="a workload command (repeat); default: the bundled workloads")
    ap.add_argument("--standins", action="store_true",
                    help="profile the built-in stand-in scripts instead of the bundled workloads")
    ap.add_argument("--only", help="comma-separated subset of the bundled (or stand-in) workloads")
    ap.add_argument("--set", action="append", default=[], metavar="NAME:KEY=VALUE",
                    help="a hyperparameter of one bundled workload (repeat)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0, help="profiled seconds per run")
    ap.add_argument("--interval-ms", type=int, default=500)
    ap.add_argument("--full-events", action="store_true",
                    help="every supported event, redundant ones included (default: lean set)")
    ap.add_argument("--skip-s", type=float, default=1.0,
                    help="start-up left out for commands that print no READY line")
    ap.add_argument("--ready-timeout-s", type=float, default=120.0,
                    help="longest wait for a bundled workload's READY line")
    ap.add_argument("--save", metavar="JSON", help="write the profiles here")
    ap.add_argument("--load", metavar="JSON", action="append",
                    help="re-analyse profiles saved before (repeat to pool several runs)")
    ap.add_argument("--results", metavar="JSON", help="write the separation figures here")
    ap.add_argument("--plot", metavar="PNG", help="2-D PCA projection of all features")
    args = ap.parse_args(argv)

    support = available_events()
    events = support.default_events(full=args.full_events)
    if not support.perf_available:
        print(f"perf unusable ({support.reason}): procfs figures only")
    t_start = time.time()
    if args.load:
        kinds = {**{n: "?" for n in BUILTIN}, **bundled_kinds()}
        runs = [r for path in args.load for r in load_runs(path, kinds=kinds)]
        print(f"loaded {len(runs)} runs from {', '.join(args.load)}")
    else:
        jobs: dict[str, tuple[str, list[str], float]] = {}
        for item in args.workload:
            name, sep, cmd = item.partition("=")
            if not sep or not cmd.strip():
                ap.error(f"--workload {item!r}: expected NAME=CMD")
            jobs[name] = ("?", shlex.split(cmd), 0.0)
        if not jobs:
            known = {n: "?" for n in BUILTIN} if args.standins else bundled_kinds()
            names = args.only.split(",") if args.only else list(known)
            sets: dict[str, list[str]] = {}
            for item in args.set:
                wl, sep, kv = item.partition(":")
                if not sep or "=" not in kv:
                    ap.error(f"--set {item!r}: expected NAME:KEY=VALUE")
                sets.setdefault(wl, []).append(kv)
            for name in names:
                if name not in known:
                    ap.error(f"--only: unknown workload {name!r} (known: {', '.join(known)})")
                if args.standins:
                    jobs[name] = ("?", [PY, "-c", BUILTIN[name]], 60.0)
                else:
                    jobs[name] = (known[name], runner_command(name, sets.get(name, ())),
                                  args.ready_timeout_s)
        print(f"host: pmu={support.pmu}, {len(events)} perf events + procfs figures; "
              f"{len(jobs)} workloads x {args.runs} runs x {args.seconds:.1f} s "
              f"@ {args.interval_ms} ms; load average {os.getloadavg()[0]:.2f}")

        def report(rep: int, r: Run) -> None:
            print(f"  run {rep} {r.workload:<15} start-up {r.startup_s:5.1f} s"
                  f"{'' if r.ready else ' (no READY)'}  cpu={_cpu_rate(r.rates):5.2f} CPU-s/s  "
                  f"figures={len(r.rates)}", flush=True)

        runs = collect(jobs, args.runs, args.seconds, args.interval_ms, events, args.skip_s,
                       report)
        if args.save:
            meta = {"runs": args.runs, "seconds": args.seconds, "interval_ms": args.interval_ms,
                    "events": list(events), "pmu": support.pmu, "standins": args.standins,
                    "loadavg_end": list(os.getloadavg()), "taken": time.strftime(
                        "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            print(f"profiles saved to {save_runs(args.save, runs, meta)}")
    labels = [r.workload for r in runs]
    kinds = [r.kind for r in runs]
    n_types = len(set(kinds))
    print()
    print(f"{'features':<22}{'n':>4}{'NC-LOO acc':>12}{'ARI k=true':>12}{'ARI k=sil':>11}"
          f"{'type ARI k=' + str(n_types):>16}")
    feature_sets = {
        "perf (sw+tracepoints)" if not support.pmu else "perf events":
            lambda k: not k.startswith("proc."),
        "procfs only": lambda k: k.startswith("proc."),
        "all": lambda k: True,
    }
    results: dict[str, object] = {"n_runs": len(runs), "workloads": sorted(set(labels)),
                                  "types": {r.workload: r.kind for r in runs},
                                  "loadavg": list(os.getloadavg()), "sets": {}}
    for title, keep in feature_sets.items():
        x, names = features(runs, keep)
        if x.shape[1] == 0:
            print(f"{title:<22}{0:>4}  (no features)")
            continue
        acc, misses = nearest_centroid_loo(x, labels)
        ari, ari_sil, k_sil = kmeans_ari(x, labels)
        ari_type = kmeans_ari_fixed(x, kinds, n_types) if n_types > 1 else float("nan")
        print(f"{title:<22}{len(names):>4}{acc:>12.3f}{ari:>12.3f}{ari_sil:>8.3f} (k={k_sil})"
              f"{ari_type:>10.3f}"
              + (f"  misses: {', '.join(misses)}" if misses else ""))
        results["sets"][title] = {  # type: ignore[index]
            "features": names, "nc_loo_accuracy": acc, "nc_loo_misses": misses,
            "kmeans_ari_workload": ari, "kmeans_ari_workload_silhouette": ari_sil,
            "silhouette_k": k_sil, "kmeans_ari_type": ari_type}
        if title == "all" and args.plot:
            plot_projection(x, runs, f"{len(runs)} profiles, {len(names)} features "
                            f"(type ARI {ari_type:.2f})", args.plot)
            print(f"projection written to {args.plot}")
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(results, indent=1))
    print(f"\n{len(runs)} runs {'analysed' if args.load else 'profiled and analysed'} in "
          f"{time.time() - t_start:.0f} s; load average "
          f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
