"""Run a command under a fresh pipetune cgroup with the given limits, like
``systemd-run --scope``, and report what was applied and what it used.

The command is started held at a gate, moved into its trial group, given its
limits, and only then let go, so none of its work (nor any process it
starts) runs outside them.  Exit status: the command's own (128 + signal
number when a signal ended it, 137 for an OOM kill); 2 when the limits are
wrong or cannot be applied (the command then never runs).  A summary goes to
stderr; with ``--json`` one JSON object is the last line of stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from pipetune.errors import ConfigError, PipetuneError, UsageError

COMMAND = "run"
HELP = "run a command under a pipetune cgroup with core/quota/memory limits"

# Held until the parent writes one byte, then becomes the command.
_GATE = (
    "import os,sys\n"
    "fd=int(sys.argv[1])\n"
    "ok=os.read(fd,1)==b'g'\n"
    "os.close(fd)\n"
    "if not ok: sys.exit(125)\n"
    "os.execv(sys.argv[2],sys.argv[3:])\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cores", type=int, metavar="N", help="number of CPUs (a cpuset)")
    where.add_argument("--cpus", metavar="LIST", help="exact CPUs, e.g. 0-1,3")
    parser.add_argument("--cpu-quota", type=float, metavar="F",
                        help="CPU time cap in CPUs' worth (0.25 = a quarter of one core)")
    parser.add_argument("--memory-mb", type=int, metavar="M", help="memory limit in MB")
    parser.add_argument("--controller", choices=["auto", "cgroup", "affinity", "dry-run"],
                        help="how limits are applied (default: the controller setting)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                        help="the command to run")


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run(args: argparse.Namespace, settings: Any) -> int:
    from pipetune.control import (
        ControlInputError,
        detect_controller,
        format_cpus,
        parse_cpus,
    )
    from pipetune.types import SystemConfig

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("no command given (pipetune run [limits] -- CMD ARGS...)")
    exe = shutil.which(cmd[0])
    if exe is None:
        raise UsageError(f"command not found: {cmd[0]}")
    if args.cores is not None and args.cores < 1:
        raise UsageError(f"--cores {args.cores}: must be >= 1")
    if args.memory_mb is not None and args.memory_mb < 1:
        raise UsageError(f"--memory-mb {args.memory_mb}: must be >= 1")
    if args.cpu_quota is not None and not args.cpu_quota > 0:
        raise UsageError(f"--cpu-quota {args.cpu_quota}: must be > 0")

    try:
        ctl = detect_controller(args.controller or settings.controller)
        ctl.cleanup_stale()
        allowed = ctl.allowed_cpus()
        cpus = parse_cpus(args.cpus) if args.cpus else None
        if args.cpus and not cpus:
            raise UsageError(f"--cpus {args.cpus!r}: no CPU named")
        cores = len(cpus) if cpus else (args.cores or len(allowed))
        if cores > len(allowed):
            raise UsageError(f"--cores {cores}: this node lets pipetune use {len(allowed)} "
                             f"CPUs ({format_cpus(allowed)})")
        config = SystemConfig(cores, args.memory_mb)
    except ControlInputError as e:
        raise UsageError(str(e)) from e

    r, w = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GATE, str(r), exe, *cmd],
                                 pass_fds=(r,))
    finally:
        os.close(r)
    handle = None
    try:
        handle = ctl.open_trial(f"run-{os.getpid()}", [child.pid])
        applied = ctl.apply(handle, config, cpus=cpus, cpu_quota=args.cpu_quota)
        unenforced = {} if ctl.name == "dry-run" else applied.skipped
        if unenforced:
            raise UsageError("cannot enforce " + "; ".join(
                f"{k} ({v})" for k, v in unenforced.items()))
    except BaseException as e:
        os.close(w)  # the gate reads EOF: the command never starts
        child.kill()
        child.wait()
        if handle is not None:
            ctl.close_trial(handle)
        if isinstance(e, PipetuneError) and not isinstance(e, ConfigError):
            raise UsageError(str(e)) from e
        raise

    forwarded = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    old_int = signal.getsignal(signal.SIGINT)
    try:
        for s in forwarded:
            signal.signal(s, lambda signum, _f: child.send_signal(signum))
        # The terminal's Ctrl-C reaches the command itself; we wait to report.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        start = time.monotonic()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        os.write(w, b"g")
        os.close(w)
        usage = ctl.usage(handle)
        while True:
            try:
                child.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                usage = ctl.usage(handle)  # backends without a kernel peak need samples
        wall_s = time.monotonic() - start
        usage = ctl.usage(handle)
        if not ctl.name.startswith("cgroup"):
            # Without a cgroup's accounting, the reaped command's own rusage
            # (ours is its only child) is exact where /proc samples miss the end.
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
            usage = dataclasses.replace(usage, cpu_s=max(usage.cpu_s, cpu_s))
    finally:
        signal.signal(signal.SIGINT, old_int)
        for s, h in forwarded.items():
            signal.signal(s, h)
        ctl.close_trial(handle)

    rc = child.returncode
    report = {
        "command": cmd,
        "controller": ctl.name,
        "applied": applied.to_dict(),
        "exit_code": _exit_code(rc),
        "signal": signal.Signals(-rc).name if rc < 0 else None,
        "wall_s": round(wall_s, 3),
        "cpu_s": round(usage.cpu_s, 3),
        "cpu_per_wall": round(usage.cpu_s / wall_s, 3) if wall_s > 0 else None,
        "memory_peak_mb": round(usage.memory_peak_mb, 1),
        "oom_kills": usage.oom_kills,
        "throttled_s": round(usage.throttled_s, 3),
        "usage": usage.to_dict(),
    }
    a = applied
    print(f"pipetune run: {ctl.name}: {a.config} on cpus {format_cpus(a.cpus)}, "
          f"cpu quota {a.cpu_quota if a.cpu_quota is not None else 'none'}, "
          f"memory {str(a.memory_mb) + ' MB' if a.memory_mb else 'no limit'}", file=sys.stderr)
    print(f"pipetune run: exit {report['exit_code']}"
          f"{' (' + report['signal'] + ')' if report['signal'] else ''} after "
          f"{wall_s:.2f} s wall, {usage.cpu_s:.2f} CPU s ({report['cpu_per_wall']} CPU/s), "
          f"peak memory {usage.memory_peak_mb:.1f} MB, {usage.oom_kills} OOM kill(s)",
          file=sys.stderr)
    if args.json:
        sys.stdout.flush()
        print(json.dumps(report))
    return _exit_code(rc)
