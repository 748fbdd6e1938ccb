"""Does a ground truth learnt from real tuning jobs separate the workload types?

The check of issue 6, end to end: runs one real pipetune-mode tuning job
(``pipetune tune``: Ray Tune, each trial's SystemTuner with perf, cgroups and
the embedded store) per bundled workload, all into one fresh
``PIPETUNE_HOME``, so the store fills as on a node that has tuned these
workloads; then retrains the model from that store as ``pipetune
groundtruth retrain`` does and reports how its clusters relate to the
workloads and to their types (Type I image CNNs, II text models, III
iterative HPC-style kernels):

- type homogeneity (1.0: no cluster mixes types) and ARI vs type;
- workload completeness (1.0: no workload's trials split over clusters) and
  ARI vs workload;
- the records behind it: probe winners and observations (matched trials).

    PYTHONPATH=$PWD python benchmarks/groundtruth_jobs.py [--samples 3] [--epochs 5]
        [--only lenet5-mnist,jacobi,...] [--home DIR] [--json OUT]
    PYTHONPATH=$PWD python benchmarks/groundtruth_jobs.py --home DIR --analyse-only
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

#: Hyperparameters that keep a bundled workload's epochs around a second or
#: two here, so a job of a few trials takes about a minute.
SMALL = {
    "lenet5-mnist": ["max_train_samples=2048"],
    "lenet5-fashion": ["max_train_samples=2048"],
    "deepcnn-mnist": ["max_train_samples=512"],
    "cnn-news20": ["max_train_samples=1024"],
    "lstm-news20": ["max_train_samples=1024"],
    "jacobi": [],
    "bfs": ["nodes=50000", "traversals_per_epoch=6"],
    "kmeans": ["points=30000"],
}
DEFAULT = "lenet5-mnist,deepcnn-mnist,cnn-news20,lstm-news20,jacobi,bfs,kmeans"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=DEFAULT, help="comma list of bundled workloads")
    ap.add_argument("--samples", type=int, default=3, help="trials per job")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per trial")
    ap.add_argument("--home", help="PIPETUNE_HOME to fill (default: a fresh temp dir)")
    ap.add_argument("--analyse-only", action="store_true",
                    help="run no job: retrain and report on what --home's store holds")
    ap.add_argument("--json", metavar="OUT", help="write the figures here")
    args = ap.parse_args()
    if args.analyse_only and not args.home:
        ap.error("--analyse-only needs --home")

    from sklearn.metrics import adjusted_rand_score, completeness_score, homogeneity_score

    from pipetune.config import Settings
    from pipetune.groundtruth import cluster_labels, records_from_frame, retrain
    from pipetune.store import open_store
    from workloads import REGISTRY, get_workload

    names = [] if args.analyse_only else [n for n in args.only.split(",") if n]
    for n in names:
        get_workload(n)  # unknown names fail here, before any job
    kind = {n: get_workload(n).kind for n in REGISTRY}
    home = Path(args.home or tempfile.mkdtemp(prefix="pipetune-gt-jobs-"))
    env = {**os.environ, "PIPETUNE_HOME": str(home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}
    print(f"home {home}; {len(names)} jobs of {args.samples} trials x {args.epochs} epochs",
          flush=True)
    started = time.monotonic()
    for n in names:
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "pipetune", "tune", n, "--mode", "pipetune",
               "--samples", str(args.samples), "--epochs", str(args.epochs), "--json"]
        if SMALL.get(n):
            cmd += ["--set", *SMALL[n]]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"job {n} failed (exit {proc.returncode})")
        print(f"[{time.monotonic() - started:5.0f} s] {n} (type {kind[n]}) done in "
              f"{time.monotonic() - t0:.0f} s", flush=True)

    settings = Settings.load({}, env=env)
    store = open_store(settings.store, spool_root=settings.spool_dir)
    try:
        model = retrain(store, settings.model, k="auto")  # what `groundtruth retrain` does
        recs = [r for r in records_from_frame(store.groundtruth_records())
                if r.objective == model.objective and r.rates]
    finally:
        store.close()
    print(model.describe())
    labels = cluster_labels(model, recs)
    wl = [r.workload for r in recs]
    ty = [kind.get(w, "?") for w in wl]
    out = {
        "records": len(recs), "probed": sum(r.probed for r in recs),
        "per_workload": dict(Counter(wl)), "clusters": model.n_clusters,
        "type_homogeneity": homogeneity_score(ty, labels),
        "ari_type": adjusted_rand_score(ty, labels),
        "workload_completeness": completeness_score(wl, labels),
        "ari_workload": adjusted_rand_score(wl, labels),
        "total_s": time.monotonic() - started, "loadavg": list(os.getloadavg()),
    }
    print(f"{out['records']} records ({out['probed']} probe winners, the rest observations) "
          f"of {len(set(wl))} workloads -> {out['clusters']} clusters: type homogeneity "
          f"{out['type_homogeneity']:.2f}, ARI vs type {out['ari_type']:.2f}, workload "
          f"completeness {out['workload_completeness']:.2f}, ARI vs workload "
          f"{out['ari_workload']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
