"""What pipetune itself costs: ground truth, store writes, daemon requests.

1. **Ground truth** as the history grows (10², 10³, 10⁴, 10⁵ records):
   retrain time (:func:`pipetune.groundtruth.fit_groundtruth`, ``k`` fixed to
   the number of workloads, and ``k="auto"``, the default, whose silhouette
   scan is O(n²): skipped where the time of the last size scaled by n² is over
   ``--auto-budget-s``, and the guess printed) and match latency
   (``model.match`` of a fresh profile: median and p99 of many calls).
   A fixed-k fit whose n² extrapolation is over 3x ``--auto-budget-s`` is
   skipped too (the guess is printed).
   Records are synthetic but built from real profile shapes: the profiling
   epochs of a real ``pipetune tune lenet5-mnist`` job on this VM
   (``benchmarks/data/profile_shapes.json``, perf software events + procfs),
   each synthetic workload a per-event log-normal distortion of one (σ = 0.7
   in log units), each record that workload times run-to-run noise (σ = 0.25).
2. **Store writes**: 1, 4 and 16 writer threads (think: trials) each calling
   ``Store.write_sample`` with a real sample's fields, into SQLite and into a
   real ``influxd`` (InfluxDB 1.x, started here on free ports, stopped by
   PID).  Points/s accepted by ``write`` (what a training thread sees),
   points/s until ``flush`` returns (what the backend absorbed; the rest
   spooled), how many points went to the spool, and the max and p99.9
   latency of one ``write`` call: the answer to "is training ever delayed".
3. **Daemon**: ``pipetune daemon`` (dry-run controller) started as a
   subprocess on a temp socket; latency of ``health``, ``register`` (open a
   trial's group), ``apply`` (a config on CPUs from its allocator) and
   ``usage`` via :class:`DaemonClient` — what a trial's tuner pays per call
   when its controller is the daemon.

Usage::

    PYTHONPATH=$PWD python benchmarks/costs.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from pipetune.procs import end_child  # noqa: E402

SHAPES = Path(__file__).resolve().parent / "data" / "profile_shapes.json"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, nearest-rank; nan when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(s)))
    return s[min(rank, len(s)) - 1]


# -- 1. ground truth ----------------------------------------------------------------------


def synthetic_records(shapes: Sequence[Mapping[str, float]], n: int, *, workloads: int,
                      seed: int) -> list[Any]:
    """``n`` records of ``workloads`` synthetic workloads built from ``shapes``."""
    from pipetune.groundtruth import GroundTruthRecord
    from pipetune.types import SystemConfig

    rng = np.random.default_rng(seed)
    events = sorted(set.intersection(*(set(s) for s in shapes)))
    centres, winners = [], []
    for w in range(workloads):
        base = shapes[w % len(shapes)]
        centres.append({e: max(base[e], 1e-6) * math.exp(rng.normal(0, 0.7)) for e in events})
        winners.append(SystemConfig(int(rng.integers(1, 3))))
    out = []
    for i in range(n):
        w = i % workloads
        rates = {e: v * math.exp(rng.normal(0, 0.25)) for e, v in centres[w].items()}
        out.append(GroundTruthRecord(rates, winners[w], "runtime", float(rng.uniform(1, 10)),
                                     f"w{w}"))
    return out


def bench_groundtruth(sizes: Sequence[int], *, workloads: int, match_calls: int,
                      auto_budget_s: float) -> list[dict[str, Any]]:
    from pipetune.groundtruth import fit_groundtruth

    shapes = json.loads(SHAPES.read_text())["profiles"]
    probes = synthetic_records(shapes, match_calls, workloads=workloads, seed=99)
    rows = []
    last_auto: tuple[int, float] | None = None
    last_k: tuple[int, float] | None = None
    fit_groundtruth(synthetic_records(shapes, 50, workloads=workloads, seed=1), k="auto")  # imports
    for n in sizes:
        records = synthetic_records(shapes, n, workloads=workloads, seed=n)
        row: dict[str, Any] = {"records": n}
        guess_k = last_k[1] * (n / last_k[0]) ** 2 if last_k else 0.0
        row["fit_fixed_k_predicted_s"] = guess_k if last_k else None
        if guess_k > auto_budget_s * 3:
            # what a fit this size would cost, from the last one scaled by n^2;
            # match latency needs a model, so the last size's model is timed
            row["fit_fixed_k_s"] = None
            print(f"  {n:>7} records: fit k={workloads} skipped (~{guess_k:.0f} s by n^2)",
                  flush=True)
            rows.append(row)
            continue
        t0 = time.perf_counter()
        model = fit_groundtruth(records, k=workloads)
        row["fit_fixed_k_s"] = time.perf_counter() - t0
        last_k = (n, row["fit_fixed_k_s"])
        row["clusters"] = model.n_clusters
        # k="auto" scores every k with a silhouette, O(n^2): extrapolate from the
        # last size measured and skip when the guess is over the budget.
        guess = last_auto[1] * (n / last_auto[0]) ** 2 if last_auto else 0.0
        row["fit_auto_predicted_s"] = guess if last_auto else None
        if guess > auto_budget_s:
            row["fit_auto_s"] = None
        else:
            t0 = time.perf_counter()
            fit_groundtruth(records, k="auto")
            row["fit_auto_s"] = time.perf_counter() - t0
            last_auto = (n, row["fit_auto_s"])
        lat, hits = [], 0
        for rec in probes:
            t0 = time.perf_counter()
            m = model.match(rec.rates)
            lat.append(time.perf_counter() - t0)
            hits += m.config == rec.config
        row["match_median_ms"] = statistics.median(lat) * 1e3
        row["match_p99_ms"] = percentile(lat, 99) * 1e3
        row["match_right_config"] = hits / len(probes)
        rows.append(row)
        print(f"  {n:>7} records: fit k={workloads} {row['fit_fixed_k_s']:.2f} s, fit auto "
              f"{_s(row['fit_auto_s'], row['fit_auto_predicted_s'])}, match median "
              f"{row['match_median_ms']:.3f} ms, p99 {row['match_p99_ms']:.3f} ms", flush=True)
    return rows


def _s(v: float | None, guess: float | None) -> str:
    return f"skipped (~{guess:.0f} s by n^2)" if v is None else f"{v:.2f} s"


# -- 2. store writes ----------------------------------------------------------------------


def _real_sample() -> Any:
    from pipetune.types import Sample

    shapes = json.loads(SHAPES.read_text())["profiles"]
    counts = {k: float(v) for k, v in shapes[0].items() if not k.startswith("proc.")}
    return Sample(timestamp=time.time(), interval_s=1.0, counts=counts)


def bench_store(url: str, spool_root: Path, writers: int, points: int) -> dict[str, Any]:
    """``writers`` threads write ``points`` points in all, as fast as they can."""
    from pipetune.store import open_store
    from pipetune.types import SystemConfig, TrialRef

    sample = _real_sample()
    store = open_store(url, spool_root=spool_root)
    per = points // writers
    lat: list[list[float]] = [[] for _ in range(writers)]
    barrier = threading.Barrier(writers + 1)

    def writer(i: int) -> None:
        ref = TrialRef(job="bench", trial=f"t{i}", node="vm")
        cfg = SystemConfig(1)
        mine = lat[i]
        barrier.wait()
        for _ in range(per):
            t0 = time.perf_counter()
            store.write_sample(ref, sample, phase="profiling", config=cfg)
            mine.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    accepted_s = time.perf_counter() - t0
    store.flush(120)
    flushed_s = time.perf_counter() - t0
    spooled, written = store.spooled, store.written
    store.close()
    all_lat = [x for xs in lat for x in xs]
    return {
        "url": url.split("://")[0], "writers": writers, "points": per * writers,
        "accepted_per_s": per * writers / accepted_s, "flushed_per_s": per * writers / flushed_s,
        "written": written, "spooled": spooled,
        "write_max_ms": max(all_lat) * 1e3, "write_p999_ms": percentile(all_lat, 99.9) * 1e3,
        "write_median_us": statistics.median(all_lat) * 1e6,
    }


def bench_stores(points: int, writer_counts: Sequence[int], tmp: Path,
                 influx: bool) -> list[dict[str, Any]]:
    rows = []
    servers = []
    urls = [("sqlite", None)]
    if influx:
        sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
        try:
            from influxd import InfluxServer

            srv = InfluxServer(tmp / "influxd")
            srv.start()
            servers.append(srv)
            urls.append(("influxdb", srv))
        except Exception as e:  # noqa: BLE001 - no influxd here: say so, measure SQLite
            print(f"  no influxd: {e}", flush=True)
    try:
        for n in writer_counts:
            for name, srv in urls:
                if srv is None:
                    url = f"sqlite:///{tmp / f'store-{n}.db'}"
                else:
                    srv.create_database(f"bench{n}")
                    url = srv.url(f"bench{n}")
                row = bench_store(url, tmp / f"spool-{name}-{n}", n, points)
                rows.append(row)
                print(f"  {name:<8} {n:>2} writers: accepted {row['accepted_per_s']:>9.0f} pt/s, "
                      f"flushed {row['flushed_per_s']:>8.0f} pt/s, spooled {row['spooled']}, "
                      f"write() max {row['write_max_ms']:.2f} ms, p99.9 "
                      f"{row['write_p999_ms']:.3f} ms", flush=True)
    finally:
        for srv in servers:
            srv.stop()
    return rows


# -- 3. daemon ----------------------------------------------------------------------------


def bench_daemon(tmp: Path, calls: int) -> dict[str, Any]:
    from pipetune.daemon.client import DaemonClient
    from pipetune.types import SystemConfig

    sock = tmp / "d.sock"
    env = dict(os.environ, PIPETUNE_HOME=str(tmp / "dhome"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipetune", "daemon", "--socket", str(sock),
         "--controller", "dry-run", "--store", f"sqlite:///{tmp / 'daemon.db'}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    sleeper = subprocess.Popen(["sleep", "600"])
    client = DaemonClient(sock, timeout_s=10)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.health(timeout_s=2).get("pid") == proc.pid:
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daemon did not start: "
                                   + (tmp / "daemon.log").read_text()[-1000:])
            time.sleep(0.1)

        def timed(fn: Any, *a: Any, **kw: Any) -> float:
            t0 = time.perf_counter()
            fn(*a, **kw)
            return time.perf_counter() - t0

        health = [timed(client.health) for _ in range(calls)]
        register, apply, usage = [], [], []
        for r in range(max(1, calls // 20)):
            trial = f"t{r}"
            register.append(timed(client.register, job="bench", trial=trial,
                                  pids=[sleeper.pid]))
            for e in range(20):
                apply.append(timed(client.apply, trial, SystemConfig(1 + e % 2)))
                usage.append(timed(client.usage, trial))
            client.close(trial)
        out = {}
        for name, xs in (("health", health), ("register", register), ("apply", apply),
                         ("usage", usage)):
            out[name] = {"calls": len(xs), "median_ms": statistics.median(xs) * 1e3,
                         "p99_ms": percentile(xs, 99) * 1e3, "max_ms": max(xs) * 1e3}
            print(f"  daemon {name:<9}: {len(xs):>4} calls, median {out[name]['median_ms']:.2f} ms,"
                  f" p99 {out[name]['p99_ms']:.2f} ms, max {out[name]['max_ms']:.2f} ms",
                  flush=True)
        return out
    finally:
        sleeper.kill()
        sleeper.wait()
        end_child(proc, timeout_s=30)
        log.close()


# -- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10^2..10^4 records, fewer points")
    p.add_argument("--sizes", default=None, help="history sizes (default 100,1000,10000,100000)")
    p.add_argument("--workloads", type=int, default=8, help="synthetic workloads (= k)")
    p.add_argument("--auto-budget-s", type=float, default=60.0,
                   help="skip k=auto where its n^2 extrapolation is longer")
    p.add_argument("--points", type=int, default=None, help="points per store run (20000)")
    p.add_argument("--no-influx", action="store_true", help="SQLite only")
    p.add_argument("--daemon-calls", type=int, default=200)
    p.add_argument("--only", default="groundtruth,store,daemon", help="sections to run")
    p.add_argument("--out", default="results/costs")
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("100,1000,10000" if args.quick
                                             else "100,1000,10000,100000")).split(",")]
    points = args.points or (5000 if args.quick else 20000)
    tmp = Path(tempfile.mkdtemp(prefix="pipetune-costs-"))
    started = time.monotonic()
    data: dict[str, Any] = {"benchmark": "costs", "argv": sys.argv[1:],
                            "machine": {"cpus": os.cpu_count()}}
    try:
        only = set(args.only.split(","))
        if "groundtruth" in only:
            print("ground truth (synthetic records from real profile shapes):", flush=True)
            data["groundtruth"] = bench_groundtruth(sizes, workloads=args.workloads,
                                                    match_calls=200,
                                                    auto_budget_s=args.auto_budget_s)
        if "store" in only:
            print(f"store writes ({points} sample points per run):", flush=True)
            data["store"] = bench_stores(points, (1, 4, 16), tmp, not args.no_influx)
        if "daemon" in only:
            print("daemon requests:", flush=True)
            data["daemon"] = bench_daemon(tmp, args.daemon_calls)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data["total_s"] = time.monotonic() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, default=str)
    (out / "costs.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    print(f"JSON {out / 'costs.json'}; total {data['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
