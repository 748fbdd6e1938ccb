"""Rebuild or inspect the ground-truth model (offline, cluster-wide).

``pipetune groundtruth retrain [--store URL] [--out PATH] [--k K|auto]
[--clusterer NAME] [--objective OBJ]`` reads every ground-truth record from
the store (a trial that probed wrote its winner; a matched one, its profile
as an observation), refits the clustering model,
prints cluster sizes, silhouette and each cluster's best config, and writes
the model atomically (default: the ``model`` setting).

``pipetune groundtruth show PATH`` prints a model file.
"""

from __future__ import annotations

import argparse
from typing import Any

COMMAND = "groundtruth"
HELP = "retrain the ground-truth model from the store, or show a model file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    r = sub.add_parser("retrain", help="refit the model from all ground-truth records")
    r.add_argument("--store", metavar="URL", help="store URL (default: the store setting)")
    r.add_argument("--out", metavar="PATH", help="model file to write (default: the model setting)")
    r.add_argument("--k", default="auto", metavar="K|auto",
                   help="number of clusters, or auto (best silhouette); default auto")
    r.add_argument("--clusterer", default="kmeans", metavar="NAME",
                   help="kmeans (default) or any scikit-learn clusterer name")
    r.add_argument("--objective", metavar="OBJ",
                   help="records of which objective (default: the objective setting)")
    r.add_argument("--seed", type=int, default=0, help="random seed of the clusterer")
    r.add_argument("--force", action="store_true",
                   help="replace an output file that cannot be read as a model "
                        "(by default such a file is kept and the retrain refused)")
    s = sub.add_parser("show", help="print a model file")
    s.add_argument("path", metavar="PATH", help="model file")


def run(args: argparse.Namespace, settings: Any) -> int:
    from pipetune.groundtruth import load_model, retrain

    if args.action == "show":
        print(f"{args.path}:")
        print(load_model(args.path).describe())
        return 0

    from pipetune.probing import Objective
    from pipetune.store import open_store

    objective = Objective.parse(args.objective or settings.objective).value
    out = args.out or settings.model
    store = open_store(settings.store, spool_root=settings.spool_dir)
    try:
        model = retrain(store, out, objective=objective, k=args.k, clusterer=args.clusterer,
                        seed=args.seed, force=args.force)
    finally:
        store.close()
    print(model.describe())
    print(f"wrote {out}")
    return 0
