"""Profiles of real child processes, shared by the separation and ground-truth benchmarks.

One *run* is one child process (a bundled workload through
``bundled_runner.py``, or any command) watched by the real
:class:`pipetune.profiler.TrialProfiler`: profiling starts at launch, but the
profile is the window of ``seconds`` after the child's ``READY`` line (its
imports, data load and first step left out), then the child is ended by its
PID.  Runs are saved as JSON (``[{"workload", "kind", "rates", ...}, ...]``),
so the clustering can be re-analysed without profiling again, and one
profiled set serves both benchmarks.

:func:`collect_packed` profiles each workload the way two packed trials run
on a node: pinned to its own CPUs while another workload trains on the
other CPUs (``os.sched_setaffinity``, inherited by the child's threads, so
its torch/OpenMP pool is sized to its share as a packed trial's is).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pipetune.procs import end_child  # noqa: E402
from pipetune.profiler import TrialProfiler  # noqa: E402

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled_runner.py")


@dataclass
class Run:
    """One profiled child: its labels, mean rates over the window, and how it went."""

    workload: str
    kind: str
    rates: dict[str, float]
    startup_s: float = 0.0  # launch to READY (or the skip, without one)
    window_s: float = 0.0
    ready: bool = True
    meta: dict[str, str] = field(default_factory=dict)


def bundled_kinds() -> dict[str, str]:
    """Registered workload name -> its type ("I", "II", "III"), in registry order."""
    from workloads import REGISTRY

    return {name: cls.kind for name, cls in REGISTRY.items()}


def runner_command(name: str, sets: Sequence[str] = ()) -> list[str]:
    """The child that trains workload ``name`` (``KEY=VALUE`` hyperparameters) until ended."""
    return [sys.executable, RUNNER, name, *sets]


def _launch(cmd: list[str], cpus: Sequence[int] | None = None
            ) -> tuple[subprocess.Popen[str], threading.Event]:
    """Start ``cmd`` (pinned to ``cpus`` if given); the event is set on its READY line."""
    env = dict(os.environ)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    pin = None
    if cpus is not None:
        mask = set(cpus)

        def pin() -> None:  # in the child before exec: every thread it starts inherits it
            os.sched_setaffinity(0, mask)

    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, preexec_fn=pin)
    ready = threading.Event()

    def watch() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == "READY":
                ready.set()

    threading.Thread(target=watch, daemon=True).start()
    return proc, ready


def profile_once(workload: str, kind: str, cmd: list[str], seconds: float, interval_ms: int,
                 events: Sequence[str], skip_s: float, ready_timeout_s: float,
                 cpus: Sequence[int] | None = None) -> Run:
    """Launch ``cmd``, profile ``seconds`` after its READY line, end it by its PID.

    Without a READY line within ``ready_timeout_s`` the window starts
    ``skip_s`` after that timeout instead (and the run says ``ready=False``).
    ``cpus`` pins the child (and so its threads) to those CPUs.
    """
    t_launch = time.time()
    proc, ready = _launch(cmd, cpus)
    tp = TrialProfiler([proc.pid], interval_ms=interval_ms, events=tuple(events))
    try:
        tp.start()
        got_ready = ready.wait(ready_timeout_s)
        if not got_ready:
            time.sleep(max(0.0, skip_s))
        start = time.time()
        if proc.poll() is not None:
            raise RuntimeError(f"{workload}: child exited with {proc.returncode} before "
                               "its profile window")
        time.sleep(seconds)
        end = time.time()
        prof = tp.profile(start, end, wait_s=2 * interval_ms / 1000)
    finally:
        tp.stop()
        end_child(proc)  # our own child, by its handle (PID)
    meta = {} if cpus is None else {"cpus": ",".join(map(str, sorted(set(cpus))))}
    return Run(workload, kind, dict(prof.rates), startup_s=start - t_launch,
               window_s=end - start, ready=got_ready, meta=meta)


def collect(jobs: dict[str, tuple[str, list[str], float]], runs: int, seconds: float,
            interval_ms: int, events: Sequence[str], skip_s: float,
            report: Callable[[int, Run], None] | None = None) -> list[Run]:
    """Profile every job ``runs`` times: ``jobs`` maps name -> (kind, command, READY timeout).

    Runs are interleaved (rep 0 of every job, then rep 1 ...), so slow drifts
    of the shared machine hit every workload alike.
    """
    out: list[Run] = []
    for rep in range(runs):
        for name, (kind, cmd, ready_timeout_s) in jobs.items():
            r = profile_once(name, kind, cmd, seconds, interval_ms, events, skip_s,
                             ready_timeout_s)
            out.append(r)
            if report is not None:
                report(rep, r)
    return out


def collect_packed(jobs: dict[str, tuple[str, list[str], float]], runs: int, seconds: float,
                   interval_ms: int, events: Sequence[str], skip_s: float,
                   cpus: Sequence[int], neighbour_cpus: Sequence[int], shift: int = 1,
                   report: Callable[[int, Run], None] | None = None) -> list[Run]:
    """Profile every job ``runs`` times beside another job, as two packed trials.

    Run ``rep`` of job ``i`` has job ``(i + shift + rep) mod n`` as its
    neighbour (a different one each repetition), started first on
    ``neighbour_cpus`` and training (past its READY line) before the profiled
    job starts on ``cpus``; the neighbour is ended by its PID after the
    window.  Each run's ``meta`` names its CPUs and its neighbour.
    """
    names = list(jobs)
    n = len(names)
    out: list[Run] = []
    for rep in range(runs):
        for i, name in enumerate(names):
            kind, cmd, ready_timeout_s = jobs[name]
            off = (shift + rep) % n or 1  # never itself
            other = names[(i + off) % n]
            nproc, nready = _launch(jobs[other][1], neighbour_cpus)
            try:
                nready.wait(jobs[other][2])
                if nproc.poll() is not None:
                    raise RuntimeError(f"neighbour {other} exited with {nproc.returncode}")
                r = profile_once(name, kind, cmd, seconds, interval_ms, events, skip_s,
                                 ready_timeout_s, cpus=cpus)
            finally:
                end_child(nproc)  # our own child, by its handle (PID)
            r.meta.update(neighbour=other,
                          neighbour_cpus=",".join(map(str, sorted(set(neighbour_cpus)))))
            out.append(r)
            if report is not None:
                report(rep, r)
    return out


def save_runs(path: str | Path, runs: Sequence[Run], meta: dict[str, object]) -> Path:
    """Write the runs (and how they were taken) as JSON; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=1))
    return p


def load_runs(path: str | Path, kinds: dict[str, str] | None = None) -> list[Run]:
    """Runs saved by :func:`save_runs`, or the older plain list of ``{"workload", "rates"}``.

    ``kinds`` fills in the type of records that lack one (name -> type; "?" if unknown).
    Runs recorded before the profiler had ``proc.cpus`` get it from how they
    were taken: the run's ``meta["cpus"]`` (pinned), else the session's
    ``meta["host_cpus"]`` (unpinned on a host of that many CPUs).
    """
    raw = json.loads(Path(path).read_text())
    items = raw["runs"] if isinstance(raw, dict) else raw
    host_cpus = raw.get("meta", {}).get("host_cpus") if isinstance(raw, dict) else None
    kinds = kinds or {}
    out = []
    for it in items:
        rates = {k: float(v) for k, v in it["rates"].items()}
        meta = {str(k): str(v) for k, v in it.get("meta", {}).items()}
        if "proc.cpus" not in rates:
            if meta.get("cpus"):
                rates["proc.cpus"] = float(len(meta["cpus"].split(",")))
            elif host_cpus:
                rates["proc.cpus"] = float(host_cpus)
        out.append(Run(it["workload"], it.get("kind") or kinds.get(it["workload"], "?"), rates,
                       startup_s=float(it.get("startup_s", 0.0)),
                       window_s=float(it.get("window_s", 0.0)),
                       ready=bool(it.get("ready", True)), meta=meta))
    return out
