"""A whole tuning job, side by side: Tune V1 (alone and packed), Tune V2,
pipetune and an oracle.

Same workload, hyperparameter samples (drawn once from the seed), scheduler
and seeds for every mode; the jobs run interleaved in one Ray session (the
order rotates each repeat: V1 V2 pipetune oracle, V2 pipetune oracle V1, …)
so a drift of this shared machine hits all of them alike.  Each job gets its
own fresh ``PIPETUNE_HOME`` (store, spool, ground-truth model): pipetune
starts with an *empty* ground truth unless ``--warm`` (then it first runs one
unmeasured pipetune job on the same trials into a home the measured
pipetune jobs copy).

The **oracle**: before any job, every trial's hyperparameters are trained
in this process at every config of the system space (threads and CPU
affinity set to the config's cores) and the fastest per-epoch time picks that
trial's config; then the oracle job is a real Tune job (mode ``v2``) whose
trial *i* runs at its oracle config from the start.  pipetune's distance to
the oracle is what profiling + probing cost it.

**V1 packed**: V1 with every trial on the space's smallest config, Ray
running as many at once as those reservations fit (``--space cores=1
--concurrent 0`` by hand).  On a node where one trial cannot use every core
well, it is the fixed packing to beat; pipetune reserves the smallest config
too and lets the node allocator share the CPUs out by measured speed-up.

Per job: best accuracy, tuning wall time, training time of the best trial
(Tune's ``time_total_s``), energy twice, each the same method in every mode:
the trials' own (sum of the epochs' ``energy_j``; with no RAPL here that is
the trial's CPU time x watts per CPU, "estimated") and the node's (the job
store's power samples integrated: every process on the node, other tenants
included), epochs spent profiling/probing (from the
decisions: a trial's epochs up to its first settled/matched/fallback
decision).  Ratios pipetune/V1 and pipetune/V2 are of the per-mode means.

Usage::

    PYTHONPATH=$PWD python benchmarks/tuning.py --quick --json /tmp/tuning.json
    PYTHONPATH=$PWD python benchmarks/tuning.py --samples 4 --epochs 5 --repeats 2
    PYTHONPATH=$PWD python benchmarks/tuning.py --quick --neighbours 1   # a busy co-tenant
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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MODES = ("v1", "v1-packed", "v2", "pipetune", "oracle")
#: Decision kinds after which a trial runs at its final config.
FINAL_KINDS = ("settled", "matched", "fallback", "fixed", "degraded")
FIGURES = ("accuracy", "tuning_s", "best_train_s", "energy_j", "node_energy_j", "search_epochs")


# -- pure helpers (tested in tests/benchmarks/test_benchmarks_smoke.py) -----------------


def rotation(modes: Sequence[str], repeat: int) -> list[str]:
    """The run order of repeat ``repeat``: ``modes`` rotated left by ``repeat``."""
    k = repeat % len(modes)
    return list(modes[k:]) + list(modes[:k])


def search_epochs(decisions: Sequence[Mapping[str, Any]], trial_epochs: Mapping[str, int]) -> int:
    """Epochs the trials spent before running at their final config.

    ``decisions``: rows with ``trial``, ``kind``, ``epoch`` (the epoch whose end
    the decision was made at, 0-based).  A trial's first decision of a
    :data:`FINAL_KINDS` kind at epoch *e* means epochs 0..e were spent
    profiling or probing; a trial with none spent all its ``trial_epochs``.
    """
    first_final: dict[str, int] = {}
    for d in decisions:
        if d.get("kind") in FINAL_KINDS and d.get("kind") != "fixed":
            t, e = str(d["trial"]), int(d["epoch"])
            first_final[t] = min(e, first_final.get(t, e))
    fixed = {str(d["trial"]) for d in decisions if d.get("kind") == "fixed"}
    total = 0
    for trial, n in trial_epochs.items():
        if trial in fixed and trial not in first_final:
            continue  # a baseline: never searched
        total += min(n, first_final[trial] + 1) if trial in first_final else n
    return total


def probe_vs_oracle(runs: Sequence[Mapping[str, Any]],
                    sweep: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each pipetune probe epoch's time over the oracle sweep's epoch time of
    the same trial at the same config: how much a probe loses to being
    measured inside a live trial (thread count, warm-up, the tuner beside
    it).  Trials are matched by start order (trial ids are numbered so).
    Both include the epoch's evaluation; a Tune epoch also its checkpoint."""
    out = []
    for run in runs:
        if run.get("mode") != "pipetune":
            continue
        order = sorted({t for t, _, _ in run.get("probe_epochs", [])} |
                       {str(t["trial"]) for t in run.get("trials", [])})
        for trial, config, seconds in run.get("probe_epochs", []):
            i = order.index(trial)
            oracle = sweep[i]["epoch_s"].get(config) if i < len(sweep) else None
            if oracle:
                out.append({"trial": trial, "config": config, "seconds": seconds,
                            "oracle_s": oracle, "ratio": seconds / oracle})
    return out


def integrate_power_j(times_s: Sequence[float], watts: Sequence[float]) -> float:
    """Joules from power samples (trapezoids; 0 for fewer than two samples)."""
    pts = sorted(zip(times_s, watts, strict=True))
    return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(pts, pts[1:], strict=False))


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return statistics.fmean(vals) if vals else None


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per mode: the mean of each of :data:`FIGURES` over its runs, the
    number of runs, and the energy methods seen."""
    out: dict[str, dict[str, Any]] = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        mine = [r for r in runs if r["mode"] == mode]
        row: dict[str, Any] = {f: _mean([r.get(f) for r in mine]) for f in FIGURES}
        row["runs"] = len(mine)
        row["energy_method"] = ",".join(sorted({str(r.get("energy_method")) for r in mine}))
        row["energy_missing_epochs"] = sum(int(r.get("energy_missing_epochs") or 0) for r in mine)
        out[mode] = row
    return out


def ratios(summary: Mapping[str, Mapping[str, Any]], num: str, den: str) -> dict[str, float | None]:
    """``summary[num][f] / summary[den][f]`` per figure (None where undefined)."""
    out: dict[str, float | None] = {}
    for f in FIGURES:
        a, b = summary.get(num, {}).get(f), summary.get(den, {}).get(f)
        ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and b
        out[f] = a / b if ok else None
    return out


def format_table(summary: Mapping[str, Mapping[str, Any]],
                 ratio_rows: Mapping[str, Mapping[str, float | None]]) -> str:
    """The table the benchmark prints (and PERFORMANCE.md quotes)."""
    head = (f"{'mode':<16} {'runs':>4} {'best acc':>9} {'tuning s':>9} {'best-trial s':>12} "
            f"{'trial J':>9} {'node J':>9} {'search ep':>9}  energy method")
    lines = [head, "-" * len(head)]

    def fmt(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, (int, float)) else "-"

    for mode, r in summary.items():
        lines.append(
            f"{mode:<16} {r.get('runs', ''):>4} {fmt(r.get('accuracy'), '.4f'):>9} "
            f"{fmt(r.get('tuning_s'), '.1f'):>9} {fmt(r.get('best_train_s'), '.1f'):>12} "
            f"{fmt(r.get('energy_j'), '.0f'):>9} {fmt(r.get('node_energy_j'), '.0f'):>9} "
            f"{fmt(r.get('search_epochs'), '.1f'):>9}  {r.get('energy_method', '')}"
            + (f" ({r['energy_missing_epochs']} epochs without a figure)"
               if r.get("energy_missing_epochs") else "")
        )
    for name, r in ratio_rows.items():
        lines.append(
            f"{name:<16} {'':>4} {fmt(r.get('accuracy'), '.3f'):>9} "
            f"{fmt(r.get('tuning_s'), '.3f'):>9} {fmt(r.get('best_train_s'), '.3f'):>12} "
            f"{fmt(r.get('energy_j'), '.3f'):>9} {fmt(r.get('node_energy_j'), '.3f'):>9} "
            f"{fmt(r.get('search_epochs'), '.2f'):>9}"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def noisy_neighbours(n: int) -> Iterator[list[int]]:
    """``n`` single-threaded busy loops beside the jobs for as long as the
    block runs: a co-located tenant, as on a shared node.  Our own children,
    ended by PID."""
    import subprocess

    from pipetune.procs import end_child

    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(max(n, 0))]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            end_child(p)


# -- the oracle sweep ---------------------------------------------------------------------


@contextlib.contextmanager
def _cores(n: int) -> Iterator[None]:
    """Run this process on ``n`` CPUs with ``n`` torch threads (what a config's
    cores mean to a trial), restored afterwards."""
    import torch

    old_aff, old_threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, sorted(old_aff)[:n])
    torch.set_num_threads(n)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old_aff)
        torch.set_num_threads(old_threads)


def oracle_sweep(workload: str, trials: Sequence[Mapping[str, Any]], space: Any, *,
                 epochs: int, seed: int) -> list[dict[str, Any]]:
    """Each trial's hyperparameters at each config, ``epochs`` epochs (training
    and evaluation, as a Tune epoch) in this process; the best per-epoch time
    per config, the fastest config per trial.
    A config already twice as slow as a measured one after an epoch gets no
    more epochs (it cannot win; its time is still recorded)."""
    from workloads import get_workload

    cls = get_workload(workload)
    out = []
    for i, t in enumerate(trials):
        hp = {k: v for k, v in t.items() if k in cls.hyperparameters}
        per_config: dict[str, float] = {}
        for cfg in space.configs():
            with _cores(cfg.cores):
                w = cls(hp, seed=seed)
                times = []
                for e in range(epochs):
                    # A Tune epoch trains and evaluates: so does the oracle's.
                    t0 = time.perf_counter()
                    w.train_epoch(e)
                    w.evaluate()
                    times.append(time.perf_counter() - t0)
                    if per_config and min(times) > 2 * min(per_config.values()):
                        break  # clearly slower than a config already measured: no more epochs
            per_config[str(cfg)] = min(times)
        best = min(per_config, key=per_config.__getitem__)
        out.append({"trial": i, "hparams": hp, "epoch_s": per_config, "best": best})
        print(f"  oracle sweep trial {i}: " + ", ".join(
            f"{c} {s:.2f} s/epoch" for c, s in per_config.items()) + f" -> {best}", flush=True)
    return out


@contextlib.contextmanager
def _oracle_cores(cores: Sequence[int]) -> Iterator[None]:
    """Make the next job's trial *i* ask for ``cores[i]`` (mode v2 takes its
    cores from the trial's sampled values, drawn in the driver by
    :func:`pipetune.tune.job.sample_trials`)."""
    import pipetune.tune.job as job

    original = job.sample_trials

    def patched(cls: type, spec: Any) -> list[dict[str, Any]]:
        trials = original(cls, spec)
        for t, c in zip(trials, cores, strict=False):
            t["cores"], t["memory_mb"] = int(c), None
        return trials

    job.sample_trials = patched
    try:
        yield
    finally:
        job.sample_trials = original


# -- one job ------------------------------------------------------------------------------


def _figures(result: Any, settings: Any, metric: str) -> dict[str, Any]:
    """The job's figures from its JobResult and its own store."""
    from pipetune.store import open_store

    store = open_store(settings.store, spool_root=settings.spool_dir)
    try:
        epochs = store.epochs(result.job)
        decisions = store.decisions(result.job)
        power = store.power()
    finally:
        store.close()
    trial_epochs = ({str(t): int(n) for t, n in epochs.groupby("trial").size().items()}
                    if len(epochs) else {})
    # Two energies, the same method for every mode: the trials' own (sum of
    # the epochs' energy_j: the trial's CPU time x watts per CPU where no RAPL
    # exists) and the node's (power samples integrated: every process on the
    # node, other tenants included).
    energy_j, method, missing = None, None, 0
    if len(epochs) and "energy_j" in epochs:
        have = epochs["energy_j"].notna()
        missing = int((~have).sum())
        if have.any():
            energy_j = float(epochs.loc[have, "energy_j"].sum())
            method = "trial epochs (" + ",".join(
                sorted(set(epochs.loc[have, "energy_method"].astype(str)))) + ")"
    node_j = (integrate_power_j((power["time"] / 1e9).tolist(), power["watts"].tolist())
              if len(power) >= 2 else None)
    node_method = ("node power (" + ",".join(sorted(set(power["source"].astype(str)))) + ")"
                   if len(power) else None)
    best = result.best or {}
    return {
        "job": result.job,
        "accuracy": best.get(metric),
        "tuning_s": result.tuning_s,
        "best_train_s": best.get("seconds"),
        "best_config": best.get("config"),
        "energy_j": energy_j,
        "energy_method": method,
        "energy_missing_epochs": missing,
        "node_energy_j": node_j,
        "node_energy_method": node_method,
        "search_epochs": search_epochs(decisions.to_dict("records") if len(decisions) else [],
                                       trial_epochs),
        "trials": result.trials,
        "failed": sum(1 for t in result.trials if t.get("error")),
        # Epochs run wholly at a probe's config: (trial, config, seconds).
        "probe_epochs": ([(str(r["trial"]), str(r["config"]), float(r["seconds"]))
                          for r in epochs.to_dict("records") if r.get("phase") == "probing"]
                         if len(epochs) and "phase" in epochs else []),
    }


def run_one(mode: str, base: Any, home: Path, *, warm_home: Path | None,
            oracle_cores: Sequence[int], repeat: int) -> dict[str, Any]:
    from dataclasses import replace

    from pipetune.config import Settings
    from pipetune.tune.job import run_job
    from pipetune.types import SystemSpace
    from workloads import get_workload

    if mode == "pipetune" and warm_home is not None:
        shutil.copytree(warm_home, home, ignore=shutil.ignore_patterns("ray_results"))
    home.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home)
    space = base.space
    if mode == "v1-packed":
        # V1 packed by hand: every trial on the smallest config, Ray running
        # as many at once as those reservations fit on the node.
        space = SystemSpace(cores=(min(base.space.cores),))
    spec = replace(base, mode={"oracle": "v2", "v1-packed": "v1"}.get(mode, mode),
                   job=f"bench-{mode}-{repeat}", space=space)
    ctx = _oracle_cores(oracle_cores) if mode == "oracle" else contextlib.nullcontext()
    t0 = time.monotonic()
    with ctx, contextlib.redirect_stdout(sys.stderr):
        result = run_job(spec, settings, verbose=0)
    wall = time.monotonic() - t0
    row = _figures(result, settings, getattr(get_workload(base.workload), "metric", "accuracy"))
    row.update(mode=mode, repeat=repeat, wall_s=wall, home=str(home))
    return row


# -- main ---------------------------------------------------------------------------------


def _plot(summary: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(summary)
    panels = [("tuning_s", "tuning wall time (s)"), ("best_train_s", "best trial's time (s)"),
              ("node_energy_j", "node energy (J, estimated)"), ("accuracy", "best accuracy")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5))
    for ax, (f, label) in zip(axes, panels, strict=True):
        ax.bar(modes, [summary[m].get(f) or 0 for m in modes],
               color=["#999", "#69c", "#d62", "#4a4"][: len(modes)])
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _run_modes(args: argparse.Namespace, base: Any, trials: Sequence[Mapping[str, Any]],
               space: Any, modes: Sequence[str], repeats: int, root: Path,
               started: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The oracle sweep, then every mode's job per repeat: (sweep, runs)."""
    import ray

    sweep: list[dict[str, Any]] = []
    oracle_cores: list[int] = []
    if "oracle" in modes:
        print("oracle sweep (in-process, every config of the space):", flush=True)
        sweep = oracle_sweep(args.workload, trials, space,
                             epochs=args.sweep_epochs or (1 if args.quick else 2),
                             seed=args.seed)
        from pipetune.types import SystemConfig

        oracle_cores = [SystemConfig.parse(s["best"]).cores for s in sweep]

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             log_to_driver=False)
    runs: list[dict[str, Any]] = []
    try:
        warm_home = None
        if args.warm and "pipetune" in modes:
            warm_home = root / "warm"
            print("warm-up pipetune job (not measured) ...", flush=True)
            run_one("pipetune", base, warm_home, warm_home=None, oracle_cores=[], repeat=-1)
        for rep in range(repeats):
            for mode in rotation(modes, rep):
                print(f"[{time.monotonic() - started:6.0f} s] repeat {rep}: {mode} ...", flush=True)
                row = run_one(mode, base, root / f"{mode}-{rep}", warm_home=warm_home,
                              oracle_cores=oracle_cores, repeat=rep)
                runs.append(row)
                print(f"    tuning {row['tuning_s']:.1f} s, best acc {row['accuracy']}, "
                      f"best trial {row['best_train_s']} s at {row['best_config']}, energy "
                      f"trial {row['energy_j']} J ({row['energy_missing_epochs']} epochs "
                      f"without) node {row['node_energy_j']} J, search epochs "
                      f"{row['search_epochs']}, failed {row['failed']}", flush=True)
    finally:
        ray.shutdown()
    return sweep, runs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small job (< 10 min on 2 cores)")
    # deepcnn-mnist: its epochs (1-5 s here) are long enough against the 1 Hz
    # profile for a tuner to do anything; LeNet-5's 0.2-0.3 s epochs make a
    # 4-epoch trial ~1 s of training, which no system tuning can improve.
    p.add_argument("--workload", default="deepcnn-mnist")
    p.add_argument("--samples", type=int, help="trials per job (default 6)")
    p.add_argument("--epochs", type=int, help="epochs per trial (quick 4, else 6)")
    p.add_argument("--max-train-samples", type=int,
                   help="training samples per epoch (quick 1024, else 2048; 0 = all)")
    p.add_argument("--repeats", type=int, help="rounds of all modes (quick 1, else 2)")
    p.add_argument("--scheduler", default="fifo", help="hyperband | asha | fifo")
    p.add_argument("--space", nargs="+", default=None, metavar="KEY=V1,V2",
                   help="system space (default cores=1..N of this host)")
    p.add_argument("--concurrent", type=int, default=0,
                   help="trials at once (default 0: as many as their Ray reservations fit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep-epochs", type=int, help="epochs per config in the sweep (quick 1, "
                   "else 2)")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of " + ",".join(MODES))
    p.add_argument("--warm", action="store_true",
                   help="pipetune starts from the ground truth of one earlier pipetune job")
    p.add_argument("--out", default="results/tuning", help="folder for JSON + PNG")
    p.add_argument("--keep-homes", action="store_true", help="keep each job's PIPETUNE_HOME")
    p.add_argument("--json", metavar="OUT", help="also write the JSON here")
    p.add_argument("--neighbours", type=int, default=0, metavar="N",
                   help="N busy-loop processes run beside every mode (and the oracle "
                        "sweep): a co-located tenant on a shared node")
    args = p.parse_args(argv)

    from pipetune.tune.job import JobSpec, sample_trials
    from pipetune.types import SystemSpace
    from workloads import get_workload

    samples = args.samples or 6
    epochs = args.epochs or (4 if args.quick else 6)
    mts = args.max_train_samples if args.max_train_samples is not None else (
        1024 if args.quick else 2048)
    repeats = args.repeats or (1 if args.quick else 2)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        p.error(f"unknown mode(s) {sorted(unknown)}")
    space = SystemSpace.parse(args.space) if args.space else SystemSpace(
        cores=tuple(range(1, (os.cpu_count() or 1) + 1)))
    base = JobSpec(workload=args.workload, samples=samples, epochs=epochs,
                   scheduler=args.scheduler, space=space, seed=args.seed,
                   concurrent=args.concurrent,
                   fixed_hparams={"max_train_samples": mts} if mts else {})
    cls = get_workload(args.workload)
    trials = sample_trials(cls, base)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="pipetune-bench-"))
    started = time.monotonic()
    print(f"workload {args.workload}, {samples} trials x {epochs} epochs, max_train_samples="
          f"{mts}, scheduler {args.scheduler}, space {[str(c) for c in space.configs()]}, "
          f"{repeats} repeat(s), modes {modes}, {args.neighbours} busy neighbour(s); homes "
          f"under {root}", flush=True)

    with noisy_neighbours(args.neighbours):
        sweep, runs = _run_modes(args, base, trials, space, modes, repeats, root, started)

    summary = summarize(runs)
    ratio_rows = {}
    for den in ("v1", "v1-packed", "v2", "oracle"):
        if "pipetune" in summary and den in summary:
            ratio_rows[f"pipetune/{den}"] = ratios(summary, "pipetune", den)
    print()
    print(format_table(summary, ratio_rows))
    probes = probe_vs_oracle(runs, sweep) if sweep else []
    for row in probes:
        print(f"probe epoch {row['trial']} at {row['config']}: {row['seconds']:.2f} s, "
              f"oracle {row['oracle_s']:.2f} s/epoch -> {row['ratio']:.2f}x")
    if sweep:
        ideal = sum(min(s["epoch_s"].values()) for s in sweep) * epochs
        print(f"\noracle sweep: sum over trials of epochs x best epoch time = {ideal:.1f} s "
              f"of training and evaluation (no Ray, no checkpoints)")
    data = {
        "benchmark": "tuning",
        "argv": sys.argv[1:],
        "machine": {"cpus": os.cpu_count(), "node": os.uname().nodename},
        "workload": args.workload, "samples": samples, "epochs": epochs,
        "max_train_samples": mts, "repeats": repeats, "scheduler": args.scheduler,
        "space": [str(c) for c in space.configs()], "seed": args.seed, "warm": args.warm,
        "neighbours": args.neighbours,
        "trials": trials, "oracle_sweep": sweep, "runs": runs, "summary": summary,
        "ratios": ratio_rows, "probe_vs_oracle": probes,
        "total_s": time.monotonic() - started,
    }
    text = json.dumps(data, indent=2, default=str)
    (out_dir / "tuning.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    try:
        _plot(summary, out_dir / "tuning.png")
    except Exception as e:  # noqa: BLE001 - the figure is optional, the JSON is not
        print(f"no PNG: {e}", file=sys.stderr)
    print(f"\nJSON {out_dir / 'tuning.json'}, PNG {out_dir / 'tuning.png'}; "
          f"total {time.monotonic() - started:.0f} s")
    if not args.keep_homes:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
