"""How well does ground truth tell workloads apart on this host's events?

Profiles the bundled workloads of the three types of the paper
(``workloads/``: Type I lenet5-mnist, lenet5-fashion, deepcnn-mnist; Type II
cnn-news20, lstm-news20; Type III jacobi, bfs, kmeans), each run a child
process through ``benchmarks/bundled_runner.py`` watched by the real
:class:`pipetune.profiler.TrialProfiler` (perf software events and
tracepoints, this VM has no PMU, plus procfs figures) for ``--seconds``
after its start-up, then clusters the profiles:

- baseline: plain k-means, fixed k, on log-scaled standardised raw rates;
- pipetune: :func:`pipetune.groundtruth.fit_groundtruth` (per CPU-second,
  k from the data, overlapping clusters merged, trimmed distances);

and prints the adjusted Rand index against the workload and against its
type (the paper's Figure 8), plus leave-one-out matching: fit on all other
runs, does the held-out run match (score >= threshold) its own workload? and
leave-one-workload-out: does a never-seen workload match anyway?

    PYTHONPATH=$PWD python benchmarks/groundtruth_ari.py [--runs 3] [--seconds 4]
    PYTHONPATH=$PWD python benchmarks/groundtruth_ari.py --load results/profiles.json
    PYTHONPATH=$PWD python benchmarks/groundtruth_ari.py --load a.json --test b.json

``--load`` also reads what ``benchmarks/profile_separation.py --save`` wrote
(one profiled set for both benchmarks).  Sets recorded on the 2-vCPU VM are in
``benchmarks/data/profiles/``: two on a quiet host, one with two busy
loops beside the workloads (``bundled-contended.json``), one packed
(``bundled-packed.json``, ``--packed``: each workload pinned to half the
CPUs while another bundled workload trains on the other half, as the node
allocator runs two trials); ``--test`` fits on one and matches another,
which is how a model trained in the past meets today's trials.

    PYTHONPATH=$PWD python benchmarks/groundtruth_ari.py --packed --save bundled-packed.json

``--standins`` profiles the older
synthetic stand-ins (built-in scripts, raw ``perf stat`` of a fixed event
list) instead of the bundled workloads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bundled_profiles import (  # noqa: E402
    bundled_kinds,
    collect,
    collect_packed,
    load_runs,
    runner_command,
    save_runs,
)

from pipetune.groundtruth import (  # noqa: E402
    FeatureScaler,
    GroundTruthRecord,
    cluster_labels,
    fit_groundtruth,
)
from pipetune.profiler import available_events  # noqa: E402
from pipetune.types import SystemConfig  # noqa: E402

EVENTS = [
    "task-clock", "context-switches", "cpu-migrations", "page-faults", "major-faults",
    "sched:sched_wakeup", "sched:sched_switch", "sched:sched_process_fork",
    "syscalls:sys_enter_read", "syscalls:sys_enter_write", "syscalls:sys_enter_futex",
    "syscalls:sys_enter_mmap", "syscalls:sys_enter_munmap", "kmem:mm_page_alloc",
    "kmem:mm_page_free", "timer:hrtimer_start",
]

WORKLOADS = {
    "lenet5": "I", "cnn_cifar": "I",
    "lstm_text": "II", "cnn_text": "II",
    "jacobi": "III", "bfs": "III", "kmeans": "III",
}

CHILD = r'''
import sys, time, random
kind = sys.argv[1]
if kind in ("lenet5", "cnn_cifar", "lstm_text", "cnn_text"):
    import torch, torch.nn as nn
    torch.manual_seed(0)
    if kind == "lenet5":
        model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                              nn.Linear(84, 10))
        def batch(): return torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    elif kind == "cnn_cifar":
        model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(64 * 8 * 8, 10))
        def batch(): return torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    elif kind == "lstm_text":
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(5000, 64); self.rnn = nn.LSTM(64, 128, batch_first=True)
                self.out = nn.Linear(128, 20)
            def forward(self, x):
                h, _ = self.rnn(self.emb(x)); return self.out(h[:, -1])
        model = M()
        def batch(): return torch.randint(0, 5000, (32, 100)), torch.randint(0, 20, (32,))
    else:
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(5000, 64); self.conv = nn.Conv1d(64, 128, 5)
                self.out = nn.Linear(128, 20)
            def forward(self, x):
                h = torch.relu(self.conv(self.emb(x).transpose(1, 2)))
                return self.out(h.max(dim=2).values)
        model = M()
        def batch(): return torch.randint(0, 5000, (64, 200)), torch.randint(0, 20, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    def step():
        x, y = batch(); opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
else:
    import numpy as np
    rng = np.random.default_rng(0)
    if kind == "jacobi":
        grid = rng.random((400, 400))
        def step():
            global grid
            for _ in range(20):
                grid[1:-1, 1:-1] = 0.25 * (grid[:-2, 1:-1] + grid[2:, 1:-1]
                                           + grid[1:-1, :-2] + grid[1:-1, 2:])
    elif kind == "bfs":
        n = 20000
        adj = [[random.randrange(n) for _ in range(8)] for _ in range(n)]
        def step():
            seen = {0}; frontier = [0]
            while frontier:
                nxt = []
                for u in frontier:
                    for v in adj[u]:
                        if v not in seen:
                            seen.add(v); nxt.append(v)
                frontier = nxt
    else:
        pts = rng.random((20000, 8))
        def step():
            c = pts[rng.choice(len(pts), 16, replace=False)]
            for _ in range(5):
                d = ((pts[:, None, :] - c[None]) ** 2).sum(-1)
                lab = d.argmin(1)
                c = np.array([pts[lab == k].mean(0) if (lab == k).any() else c[k]
                              for k in range(16)])
print("ready", flush=True)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    step()
'''


def profile_once(kind: str, seconds: float, warmup_s: float) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(CHILD)
        script = fh.name
    child = subprocess.Popen([sys.executable, script, kind, str(seconds + warmup_s + 2)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(warmup_s)
        t0 = time.time()
        perf = subprocess.run(
            ["perf", "stat", "-x", ";", "-e", ",".join(EVENTS), "-p", str(child.pid),
             "--", "sleep", str(seconds)],
            capture_output=True, text=True, check=False,
        )
        window = time.time() - t0
        with open(f"/proc/{child.pid}/status") as fh:
            status = dict(line.split(":", 1) for line in fh if ":" in line)
    finally:
        child.kill()  # our own child, by its handle
        child.wait()
        os.unlink(script)
    rates: dict[str, float] = {}
    for line in perf.stderr.splitlines():
        parts = line.split(";")
        if len(parts) < 3 or parts[2] not in EVENTS:
            continue
        try:
            rates[parts[2]] = float(parts[0]) / window
        except ValueError:  # <not counted> / <not supported>
            continue
    rates["rss_mb"] = int(status["VmRSS"].split()[0]) / 1024
    rates["threads"] = float(status["Threads"])
    return rates


def baseline_labels(records: list[GroundTruthRecord], k: int) -> list[int]:
    from sklearn.cluster import KMeans

    events = sorted(set.intersection(*(set(r.rates) for r in records)))
    X = np.log1p(np.array([[max(r.rates[e], 0.0) for e in events] for r in records]))
    X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    return KMeans(k, n_init=10, random_state=0).fit_predict(X).tolist()


def load_profiles(args: argparse.Namespace) -> list[dict]:
    """``[{"workload", "kind", "rates"}, ...]``: loaded, or profiled now (and saved if asked)."""
    if args.load:
        kinds = {**WORKLOADS, **bundled_kinds()}
        runs = [r for path in args.load for r in load_runs(path, kinds=kinds)]
        return [{"workload": r.workload, "kind": r.kind, "rates": r.rates} for r in runs]
    raw: list[dict] = []
    if args.standins:
        for r in range(args.runs):
            for kind in WORKLOADS:
                t = time.time()
                raw.append({"workload": kind, "kind": WORKLOADS[kind],
                            "rates": profile_once(kind, args.seconds, args.warmup)})
                print(f"run {r} {kind}: {time.time() - t:.1f} s", file=sys.stderr)
        if args.save:
            Path(args.save).write_text(json.dumps(raw, indent=1))
        return raw
    kinds = bundled_kinds()
    names = args.only.split(",") if args.only else list(kinds)
    for n in names:
        if n not in kinds:
            raise SystemExit(f"--only: unknown workload {n!r} (known: {', '.join(kinds)})")
    events = available_events().default_events()
    jobs = {n: (kinds[n], runner_command(n), 120.0) for n in names}
    def say(rep: int, r) -> None:
        print(f"run {rep} {r.workload}: start-up {r.startup_s:.1f} s"
              + (f", beside {r.meta['neighbour']}" if "neighbour" in r.meta else ""),
              file=sys.stderr)

    meta: dict[str, object] = {}
    if args.packed:
        ncpu = sorted(os.sched_getaffinity(0))
        if len(ncpu) < 2:
            raise SystemExit("--packed needs at least two CPUs")
        half = len(ncpu) // 2
        own, other = ncpu[:half], ncpu[half:]
        runs = collect_packed(jobs, args.runs, args.seconds, args.interval_ms, events,
                              args.warmup, own, other, report=say)
        meta = {"packed": True, "cpus": own, "neighbour_cpus": other}
    else:
        runs = collect(jobs, args.runs, args.seconds, args.interval_ms, events, args.warmup,
                       say)
    if args.save:
        save_runs(args.save, runs, {"runs": args.runs, "seconds": args.seconds,
                                    "interval_ms": args.interval_ms, "events": list(events),
                                    "pmu": False, "standins": False, **meta,
                                    "host_cpus": len(os.sched_getaffinity(0)),
                                    "loadavg_end": list(os.getloadavg()),
                                    "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                           time.gmtime())})
    return [{"workload": r.workload, "kind": r.kind, "rates": r.rates} for r in runs]


def cross_session(recs: list[GroundTruthRecord], kind_of: dict[str, str],
                  paths: list[str], threshold: float) -> dict[str, object]:
    """Fit on ``recs`` (one session), match the runs in ``paths`` (another)."""
    kinds = {**WORKLOADS, **bundled_kinds()}
    test = [r for p in paths for r in load_runs(p, kinds=kinds)]
    model = fit_groundtruth(recs, k="auto")
    own = matched = 0
    for r in test:
        m = model.match(r.rates)
        own += r.workload in m.workloads
        matched += r.workload in m.workloads and m.score >= threshold
    unseen = cross_type = 0
    for w in sorted({r.workload for r in test}):
        rest = [r for r in recs if r.workload != w]
        if not rest:
            continue
        held = fit_groundtruth(rest, k="auto")
        for r in test:
            if r.workload == w and (m := held.match(r.rates)).score >= threshold:
                unseen += 1
                cross_type += any(kind_of.get(x, "?") != r.kind for x in m.workloads)
    print(f"cross-session ({len(recs)} fitted, {len(test)} new runs, {model.n_clusters} "
          f"clusters): nearest cluster holds its workload {own}/{len(test)}, matched with "
          f"score >= {threshold} {matched}/{len(test)}; its workload left out of the fit, "
          f"matched anyway {unseen}/{len(test)} (a cluster of another type {cross_type})")
    return {"n_fit": len(recs), "n_test": len(test), "clusters": model.n_clusters,
            "own_cluster": own, "matched": matched, "unseen_matched": unseen,
            "unseen_matched_other_type": cross_type, "threshold": threshold}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0,
                    help="stand-ins: seconds after ready; bundled: skip without a READY line")
    ap.add_argument("--interval-ms", type=int, default=500, help="bundled: profiler interval")
    ap.add_argument("--only", help="comma-separated subset of the bundled workloads")
    ap.add_argument("--packed", action="store_true",
                    help="bundled: profile each workload pinned to half the CPUs while "
                         "another bundled workload trains on the other half (two packed "
                         "trials)")
    ap.add_argument("--standins", action="store_true",
                    help="profile the synthetic stand-ins instead of the bundled workloads")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--save", metavar="JSON", help="write the profiles here")
    ap.add_argument("--load", metavar="JSON", action="append",
                    help="reuse profiles saved before (repeat to pool several sets)")
    ap.add_argument("--test", metavar="JSON", action="append",
                    help="profiles of another session: fit on --load, match these "
                         "(a model trained earlier meets today's trials)")
    ap.add_argument("--results", metavar="JSON", help="write the figures here")
    args = ap.parse_args()
    from sklearn.metrics import adjusted_rand_score as ari
    from sklearn.metrics import completeness_score, homogeneity_score

    raw = load_profiles(args)
    out: dict[str, object] = {"loadavg": list(os.getloadavg())}
    recs = [GroundTruthRecord(p["rates"], SystemConfig(1), "runtime", 1.0, p["workload"])
            for p in raw]
    kind_of = {p["workload"]: p.get("kind") or WORKLOADS.get(p["workload"], "?") for p in raw}
    wl = [r.workload for r in recs]
    ty = [kind_of[w] for w in wl]
    n_w, n_t = len(set(wl)), len(set(ty))
    print(f"{len(recs)} profiles of {n_w} workloads ({n_t} types), "
          f"{len(set.intersection(*(set(r.rates) for r in recs)))} figures each")
    base_w = baseline_labels(recs, n_w)
    base_t = baseline_labels(recs, n_t)
    out["kmeans_ari_workload"] = ari(wl, base_w)
    out["kmeans_ari_type"] = ari(ty, base_t)
    print(f"plain k-means k={n_w}, raw rates:            ARI vs workload {ari(wl, base_w):.2f}")
    print(f"plain k-means k={n_t}, raw rates:            ARI vs type     {ari(ty, base_t):.2f}")
    fits: list[dict] = []
    for names in (False, True):
        tag = "noise units (names)" if names else "overall spread"
        for k in dict.fromkeys(("auto", n_w, n_t)):  # k=n_w once if n_w == n_t
            model = fit_groundtruth(recs, k=k, use_workloads=names)
            lab = cluster_labels(model, recs)
            # completeness 1.0: no workload's runs are split over clusters
            comp = completeness_score(wl, lab)
            # homogeneity 1.0: no cluster mixes types (a type split over
            # several clusters lowers the ARI vs type, not the homogeneity)
            homog = homogeneity_score(ty, lab)
            fits.append({"scaling": tag, "k": k, "clusters": model.n_clusters,
                         "ari_workload": ari(wl, lab), "ari_type": ari(ty, lab),
                         "workload_completeness": comp, "type_homogeneity": homog})
            print(f"pipetune {tag:20s} k={str(k):4s} -> {model.n_clusters} clusters: "
                  f"ARI vs workload {ari(wl, lab):.2f}, vs type {ari(ty, lab):.2f}, "
                  f"workload completeness {comp:.2f}, type homogeneity {homog:.2f}")
    out["fit_groundtruth"] = fits
    loo: list[dict] = []
    for names in (False, True):
        within = matched = same_type = 0
        for i, r in enumerate(recs):
            rest = recs[:i] + recs[i + 1:]
            m = fit_groundtruth(rest, k="auto", use_workloads=names).match(r.rates)
            own = r.workload in m.workloads  # its own earlier runs are in that cluster
            within += own
            matched += own and m.score >= args.threshold
            top = Counter(m.workloads).most_common(1)
            same_type += bool(top) and kind_of[top[0][0]] == kind_of[r.workload]
        print(f"leave-one-out ({'noise units' if names else 'overall spread'}): the nearest "
              f"cluster holds its own workload {within}/{len(recs)}, matched with score >= "
              f"{args.threshold} {matched}/{len(recs)}; cluster's main type is its type "
              f"{same_type}/{len(recs)}")
        unseen = 0
        unseen_by: dict[str, list[str]] = {}
        for w in sorted(set(wl)):
            rest = [r for r in recs if r.workload != w]
            model = fit_groundtruth(rest, k="auto", use_workloads=names)
            for r in recs:
                if r.workload != w:
                    continue
                mm = model.match(r.rates)
                if mm.score >= args.threshold:
                    unseen += 1
                    unseen_by.setdefault(w, []).append(
                        f"{mm.score:.2f}:{'+'.join(sorted(set(mm.workloads)))}")
        print(f"  leave-one-workload-out: runs of a never-seen workload matched anyway "
              f"{unseen}/{len(recs)} (they would skip probing with a neighbour's config)"
              + (f": {unseen_by}" if unseen_by else ""))
        loo.append({"scaling": "noise units" if names else "overall spread",
                    "own_cluster": within, "matched": matched, "same_type": same_type,
                    "unseen_matched": unseen, "unseen_matched_by": unseen_by,
                    "n": len(recs), "threshold": args.threshold})
    out["leave_one_out"] = loo
    # supervised reference (the DESIGN's first measurement): per-workload centroids
    ok = 0
    for i, r in enumerate(recs):
        rest = recs[:i] + recs[i + 1:]
        sc = FeatureScaler.fit([x.rates for x in rest], labels=[x.workload for x in rest])
        X = sc.transform_many([x.rates for x in rest])
        z, _ = sc.transform(r.rates)
        labs = np.array([x.workload for x in rest])
        cents = {w: X[labs == w].mean(axis=0) for w in set(labs)}
        ok += min(cents, key=lambda w: float(np.linalg.norm(cents[w] - z))) == r.workload
    out["reference_nearest_centroid"] = ok / len(recs)
    print(f"reference, nearest per-workload centroid (labels known): {ok}/{len(recs)}")
    if args.test:
        out["cross_session"] = cross_session(recs, kind_of, args.test, args.threshold)
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
