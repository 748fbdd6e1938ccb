"""Run a real daemon (real socket, real HTTP, real processes) whose controller
records every call to a JSON-lines file instead of writing cgroups.

Used by the tests that check *which* controller calls the daemon makes
(open, apply on CPUs from its allocator, usage, close on stop/reap) on any
host; the real controller is exercised by test_daemon_cgroup.py.

    python recording_daemon.py SOCKET RECORD_FILE [--model PATH] [--cpus 0,1] [--rapl-root DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipetune.config import Settings
from pipetune.control import Applied, CpuTopo, NodeAllocator, Usage
from pipetune.daemon import Daemon
from pipetune.energy import RaplMeter
from pipetune.types import SystemConfig


@dataclass(frozen=True)
class Handle:
    trial_id: str


class RecordingController:
    """Implements the controller contract (open_trial, add_pids, apply,
    usage, close_trial, cleanup_stale) by appending one JSON line per call."""

    name = "recording"

    def __init__(self, record: Path) -> None:
        self.record = record
        self._lock = threading.Lock()
        self._open: set[str] = set()

    def _write(self, **entry: object) -> None:
        with self._lock, open(self.record, "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def open_trial(self, trial_id: str, pids: Sequence[int]) -> Handle:
        if trial_id in self._open:
            raise ValueError(f"trial {trial_id} already open")
        self._open.add(trial_id)
        self._write(op="open", trial=trial_id, pids=list(pids))
        return Handle(trial_id)

    def add_pids(self, handle: Handle, pids: Sequence[int]) -> None:
        self._write(op="add_pids", trial=handle.trial_id, pids=list(pids))

    def apply(self, handle: Handle, config: SystemConfig, *, cpus=None,
              cpu_quota=None) -> Applied:
        self._write(op="apply", trial=handle.trial_id, config=str(config),
                    cpus=None if cpus is None else list(cpus))
        return Applied(handle.trial_id, self.name, config, tuple(cpus or ()), cpu_quota,
                       config.memory_mb)

    def usage(self, handle: Handle) -> Usage:
        self._write(op="usage", trial=handle.trial_id)
        return Usage(cpu_s=1.5, memory_peak_mb=42.0)

    def close_trial(self, handle: Handle) -> None:
        self._open.discard(handle.trial_id)
        self._write(op="close", trial=handle.trial_id)

    def cleanup_stale(self) -> int:
        self._write(op="cleanup_stale")
        return 0

    def describe(self) -> str:
        return "recording"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("socket")
    p.add_argument("record", type=Path)
    p.add_argument("--model", default="")
    p.add_argument("--cpus", default=",".join(str(c) for c in sorted(os.sched_getaffinity(0))))
    p.add_argument("--reap-interval-s", type=float, default=0.2)
    p.add_argument("--rapl-root", default="", help="a fake sysfs tree with RAPL zones")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flags = {"socket": args.socket, "model": args.model or None}
    settings = Settings.load(flags)
    daemon = Daemon(
        settings,
        socket_mode=0o666,
        controller=RecordingController(args.record),
        allocator=NodeAllocator([int(c) for c in args.cpus.split(",")],
                                topology=[CpuTopo(int(c)) for c in args.cpus.split(",")]),
        reap_interval_s=args.reap_interval_s,
        capabilities={"recording": True},
        meters=[RaplMeter(Path(args.rapl_root))] if args.rapl_root else None,
    )
    daemon.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
