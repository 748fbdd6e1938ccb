"""Profile a command (or a running process) with perf and procfs figures.

Cuts the run into epochs — fixed windows (``--epoch-seconds``) or the times
of output lines matching ``--epoch-marker`` (each match ends an epoch) — and
prints the mean rate per second of every event in every epoch.  ``--json``
prints ``{"events": [...], "epochs": [{"index", "start", "end", "seconds",
"rates": {event: per_second}}]}`` instead; ``--plot`` draws a heatmap of
events × epochs (each row normalised), like the paper's Figure 2.

perf's unit for task-clock is msec, so a busy thread reads ≈ 1000 msec/s.
The exit code is the command's own when it fails, 2 for bad arguments.

Marker lines are timed when they arrive, so the command must not
block-buffer its output (``PYTHONUNBUFFERED=1`` is set for it; other
programs need to flush per line).  ``--pid`` profiles until the process
exits, ``--duration-s`` passes, or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

from pipetune.config import Settings
from pipetune.errors import PipetuneError, ProfilerError, UsageError
from pipetune.procs import end_child

COMMAND = "profile"
HELP = "profile a command or process with perf: events × epochs table, JSON, heatmap"

log = logging.getLogger(__name__)

# Runs in the child: waits until the profiler is attached, then becomes the
# command (same PID, so perf's counters carry on across exec).
_GATE = "import os,sys\nos.read(int(sys.argv[1]),1)\nos.close(int(sys.argv[1]))\n" \
        "os.execvp(sys.argv[2],sys.argv[2:])\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval-ms", type=int, metavar="N",
                        help="sampling interval (default: setting interval_ms, 1000)")
    cut = parser.add_mutually_exclusive_group()
    cut.add_argument("--epoch-seconds", type=float, metavar="S",
                     help="cut the run into fixed windows of S seconds")
    cut.add_argument("--epoch-marker", metavar="REGEX",
                     help="each output line of the command matching REGEX ends an epoch")
    parser.add_argument("--warmup-s", type=float, default=0.0, metavar="S",
                        help="seconds at the start of each epoch left out (default 0)")
    parser.add_argument("--events", metavar="LIST",
                        help="comma-separated perf events (default: what this host supports)")
    parser.add_argument("--no-procfs", action="store_true",
                        help="leave out the procfs figures (proc.*)")
    parser.add_argument("--store", metavar="URL",
                        help="also write samples and epoch profiles to this store")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--plot", metavar="FILE.png", help="write an events × epochs heatmap")
    parser.add_argument("--pid", type=int, help="profile this running process instead")
    parser.add_argument("--duration-s", type=float, metavar="S",
                        help="with --pid: stop after S seconds (default: until it exits "
                             "or Ctrl-C)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                        help="the command to run and profile")


def _validate(args: argparse.Namespace) -> list[str]:
    cmd = list(args.cmd or [])
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if bool(cmd) == (args.pid is not None):
        raise UsageError("give either a command (after --) or --pid PID")
    if args.epoch_seconds is not None and args.epoch_seconds <= 0:
        raise UsageError(f"--epoch-seconds {args.epoch_seconds}: must be > 0")
    if args.warmup_s < 0:
        raise UsageError(f"--warmup-s {args.warmup_s}: must be >= 0")
    if args.pid is not None and args.epoch_marker:
        raise UsageError("--epoch-marker needs a command whose output pipetune reads, not --pid")
    if args.duration_s is not None and (args.pid is None or args.duration_s <= 0):
        raise UsageError("--duration-s needs --pid and a value > 0")
    if args.epoch_marker:
        try:
            re.compile(args.epoch_marker)
        except re.error as e:
            raise UsageError(f"--epoch-marker {args.epoch_marker!r}: not a regex: {e}") from e
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UsageError(f"--plot {args.plot!r}: must end in .png")
    return cmd


def _choose_events(args: argparse.Namespace) -> tuple[str, ...] | None:
    from pipetune.profiler import available_events

    if args.events:
        return tuple(e.strip() for e in args.events.split(",") if e.strip())
    support = available_events()
    if not support.perf_available:
        print(f"pipetune profile: warning: {support.reason}; using procfs figures only",
              file=sys.stderr)
        return ()
    return support.default_events()


class _OutputPump:
    """Copies one stream of the command to ours, noting when marker lines came."""

    def __init__(self, src: Any, dst: TextIO, marker: re.Pattern[str] | None,
                 marks: list[float], lock: threading.Lock) -> None:
        self.src, self.dst, self.marker, self.marks, self.lock = src, dst, marker, marks, lock
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for raw in iter(self.src.readline, b""):
            now = time.time()
            line = raw.decode(errors="replace")
            if self.marker is not None and self.marker.search(line):
                with self.lock:
                    self.marks.append(now)
            try:
                self.dst.write(line)
                self.dst.flush()
            except (OSError, ValueError):
                pass
        self.src.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipetune.profiler import TrialProfiler

    cmd = _validate(args)
    interval_ms = args.interval_ms or settings.interval_ms
    if interval_ms < 10:
        raise UsageError(f"--interval-ms {interval_ms}: must be >= 10")
    if cmd and shutil.which(cmd[0]) is None:
        print(f"pipetune profile: error: command not found: {cmd[0]}", file=sys.stderr)
        return 127
    events = _choose_events(args)
    procfs = not args.no_procfs
    if events == () and not procfs:
        raise UsageError("nothing to sample: perf is unusable here and --no-procfs was given")

    marks: list[float] = []
    exit_code = 0
    child: subprocess.Popen[bytes] | None = None
    pumps: list[_OutputPump] = []
    if cmd:
        gate_r, gate_w = os.pipe()
        # Marker times are when lines arrive: ask Python commands not to
        # block-buffer their output into a pipe (others must flush themselves).
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        child = subprocess.Popen([sys.executable, "-c", _GATE, str(gate_r), *cmd],
                                 pass_fds=(gate_r,), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        os.close(gate_r)
        target = child.pid
    else:
        import psutil

        if not psutil.pid_exists(args.pid):
            raise UsageError(f"--pid {args.pid}: no such process")
        target = args.pid

    profiler = TrialProfiler([target], interval_ms=interval_ms, events=events, procfs=procfs)
    try:
        profiler.start()
    except PipetuneError as e:
        if child is not None:
            os.close(gate_w)  # the gate reads EOF and execs; end it at once
            child.kill()
            child.wait()
        if args.events and isinstance(e, ProfilerError) and "rejected" in str(e):
            raise UsageError(str(e)) from e
        raise
    start = profiler.started_at or time.time()
    try:
        if child is not None:
            marker = re.compile(args.epoch_marker) if args.epoch_marker else None
            lock = threading.Lock()
            out = sys.stderr if args.json else sys.stdout
            pumps = [_OutputPump(child.stdout, out, marker, marks, lock),
                     _OutputPump(child.stderr, sys.stderr, marker, marks, lock)]
            start = time.time()
            os.write(gate_w, b"x")
            os.close(gate_w)
            rc = child.wait()
            for p in pumps:
                p.thread.join(5.0)
            exit_code = rc if rc >= 0 else 128 - rc
        else:
            deadline = None if args.duration_s is None else time.time() + args.duration_s
            while profiler.running and (deadline is None or time.time() < deadline):
                time.sleep(0.05)
    except KeyboardInterrupt:
        # With --pid, Ctrl-C is the normal way to end the profile (exit 0).
        if child is not None:
            end_child(child, sig=signal.SIGINT, timeout_s=10.0)
            exit_code = 130
    end = time.time()
    # perf ends by itself once the target is reaped and prints the last partial interval.
    profiler.profile(end, end, wait_s=min(2.0, 2 * interval_ms / 1000))
    profiler.stop()

    windows = _windows(args, start, end, marks)
    profiles = [profiler.profile(a, b, epoch=i, warmup_s=args.warmup_s)
                for i, (a, b) in enumerate(windows)]
    used = sorted({e for p in profiles for e in p.rates})
    report = {
        "command": cmd or None,
        "pid": target,
        "interval_ms": interval_ms,
        "exit_code": exit_code,
        "start": start,
        "end": end,
        "n_samples": len(profiler.samples),
        "events": used,
        "epochs": [
            {"index": p.epoch, "start": p.start, "end": p.end, "seconds": p.seconds,
             "n_samples": p.n_samples, "rates": {k: p.rates[k] for k in sorted(p.rates)}}
            for p in profiles
        ],
    }
    if profiler.error is not None and not _target_gone(profiler.error):
        print(f"pipetune profile: warning: {profiler.error}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(used, report["epochs"]))
    if args.plot:
        plot_heatmap(used, report["epochs"], args.plot)
    if args.store:
        _write_store(args.store, profiler.samples, profiles, target, settings)
    if not profiles:
        print("pipetune profile: warning: no epoch in the run (shorter than one epoch, "
              "or no marker line)", file=sys.stderr)
    return exit_code


def _target_gone(error: Exception) -> bool:
    from pipetune.profiler import TargetExitedError

    return isinstance(error, TargetExitedError)


def _windows(args: argparse.Namespace, start: float, end: float,
             marks: Sequence[float]) -> list[tuple[float, float]]:
    from pipetune.profiler import fixed_windows, marker_windows

    if args.epoch_marker:
        return marker_windows(start, marks)
    if args.epoch_seconds:
        return fixed_windows(start, end, args.epoch_seconds)
    return [(start, end)] if end > start else []


def format_table(events: Sequence[str], epochs: Sequence[dict[str, Any]], max_cols: int = 10
                 ) -> str:
    """Events (rows) × epochs (columns) of mean rates per second."""
    shown = list(epochs)[:max_cols]
    width = max([len("event / epoch")] + [len(e) for e in events]) + 2
    head = "event / epoch".ljust(width) + "".join(f"{e['index']:>11}" for e in shown)
    lines = [head, "seconds".ljust(width) + "".join(f"{e['seconds']:>11.2f}" for e in shown)]
    for ev in events:
        cells = []
        for e in shown:
            v = e["rates"].get(ev)
            cells.append(f"{'-':>11}" if v is None else f"{v:>11.4g}")
        lines.append(ev.ljust(width) + "".join(cells))
    if len(epochs) > max_cols:
        lines.append(f"({len(epochs) - max_cols} more epochs: use --json)")
    lines.append("rates are per second; task-clock in msec/s; proc.rss_mb, proc.threads, "
                 "proc.processes are means")
    return "\n".join(lines)


def plot_heatmap(events: Sequence[str], epochs: Sequence[dict[str, Any]], path: str) -> None:
    """Events × epochs heatmap, each row scaled to its own maximum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[e["rates"].get(ev, np.nan) for e in epochs] for ev in events], dtype=float)
    if data.size == 0:
        data = np.zeros((max(1, len(events)), max(1, len(epochs))))
    peak = np.nanmax(np.abs(data), axis=1, keepdims=True) if data.size else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(peak > 0, data / peak, 0.0)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(epochs) + 4), 0.3 * len(events) + 1.5))
    im = ax.imshow(norm, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                   interpolation="nearest")
    ax.set_yticks(range(len(events)))
    ax.set_yticklabels(events, fontsize=7)
    ax.set_xticks(range(len(epochs)))
    ax.set_xticklabels([str(e["index"]) for e in epochs], fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_title("rate per epoch (each row / its max)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise PipetuneError(f"--plot {path!r}: cannot write: {e.strerror}") from e
    finally:
        plt.close(fig)


def _write_store(url: str, samples: Sequence[Any], profiles: Sequence[Any], pid: int,
                 settings: Settings) -> None:
    from pipetune.store import open_store
    from pipetune.types import EpochResult, SystemConfig, TrialRef

    try:
        cores = len(os.sched_getaffinity(pid))
    except OSError:
        cores = os.cpu_count() or 1
    config = SystemConfig(cores)
    job = "profile-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    ref = TrialRef(job=job, trial=str(pid), node=settings.node)
    store = open_store(url, spool_root=settings.spool_dir)
    try:
        for s in samples:
            store.write_sample(ref, s, phase="profile", config=config)
        for p in profiles:
            store.write_epoch(ref, EpochResult(epoch=p.epoch, config=config, seconds=p.seconds),
                              phase="profile", profile=p, time_s=p.end)
    finally:
        store.close()
    print(f"pipetune profile: wrote {len(samples)} samples and {len(profiles)} epochs "
          f"to {url} as job {job}", file=sys.stderr)
