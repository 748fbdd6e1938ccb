"""Write the energy/runtime report of one or more tuning jobs.

For one job: tuning time, best trial (hyperparameters, system config,
metric, training time), energy in total and per trial with its method, how
each trial's system config was chosen and the time spent probing.  For
several jobs (e.g. V1, V2 and pipetune on the same workload) the same side
by side, with ratios to the first job named.  Markdown plus PNG figures, or
one self-contained HTML file (``--format html``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pipetune.config import Settings
from pipetune.errors import UsageError

COMMAND = "report"
HELP = "report tuning time, accuracy and energy of jobs (Markdown/HTML + PNG figures)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "jobs", nargs="+", metavar="JOB", help="job name(s); the first is the reference for ratios"
    )
    parser.add_argument("--store", metavar="URL", help="store URL (default: the configured one)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default ./report-JOB)")
    parser.add_argument(
        "--format", choices=["md", "html"], default="md", help="md (default) or html"
    )


def default_out_dir(jobs: list[str]) -> Path:
    name = "-".join(re.sub(r"[^A-Za-z0-9_.+-]", "_", j) for j in jobs)[:120]
    return Path(f"report-{name}")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipetune.report import build_report
    from pipetune.store import open_store

    url = settings.store
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        path = Path(url[len("sqlite://") :])
        # Opening a SQLite store creates it: a report must not leave an empty one behind.
        if not path.exists():
            raise UsageError(f"store {url}: no such file (empty store; run `pipetune tune` first)")
    out_dir = Path(args.out) if args.out else default_out_dir(args.jobs)
    store = open_store(url, spool_root=settings.spool_dir)
    try:
        path, reports = build_report(store, args.jobs, out_dir, fmt=args.format, store_url=url)
    finally:
        store.close()
    for r in reports:
        energy = "n/a" if r.energy_j is None else f"{r.energy_j:.1f} J ({r.energy_method})"
        best = "n/a" if r.best_value is None else f"{r.best_value:.4f}"
        status = " PARTIAL (interrupted)" if r.interrupted else " PARTIAL" if r.partial else ""
        print(
            f"{r.job} ({r.mode}){status}: tuning {r.tuning_s:.1f} s, "
            f"best {r.metric} {best}, energy of the trials {energy}"
        )
    print(f"report: {path}")
    return 0
