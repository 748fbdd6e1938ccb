"""A two-node Ray cluster on one machine: ``ray start --head`` and
``ray start --address``, each with its own resources, as an operator would
start them on two hosts.

Both run with ``--block`` in their own process session; stopping sends
SIGTERM to those PIDs (Ray's launcher then ends its own children), and
anything left in the sessions we created is ended by process group.
Authentication is off: the cluster listens on loopback only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from support.influxd import free_port

RAY = str(Path(sys.executable).with_name("ray"))


class RayCluster:
    def __init__(self, tmp: Path, cpus_per_node: int = 1) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.cpus = cpus_per_node
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
        # Ray's Unix socket paths must stay under 107 bytes: a short folder.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="ptray", dir="/tmp"))

    def _start(self, args: list[str], log: str) -> None:
        with open(self.tmp / log, "wb") as fh:
            self.procs.append(
                subprocess.Popen(
                    [
                        RAY,
                        "start",
                        "--block",
                        "--disable-usage-stats",
                        f"--num-cpus={self.cpus}",
                        *args,
                    ],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                )
            )

    def start(self, timeout_s: float = 90) -> None:
        self._start(
            [
                "--head",
                f"--port={self.port}",
                "--include-dashboard=false",
                f"--temp-dir={self.ray_tmp}",
                '--resources={"node_a": 1}',
            ],
            "head.log",
        )
        self._wait_nodes(1, timeout_s)
        self._start([f"--address={self.address}", '--resources={"node_b": 1}'], "worker.log")
        self._wait_nodes(2, timeout_s)

    def _wait_nodes(self, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(
                        f"ray start exited: {(self.tmp / 'head.log').read_text()[-2000:]}"
                    )
            r = subprocess.run(
                [RAY, "status", f"--address={self.address}"],
                capture_output=True,
                text=True,
                env=self.env,
                timeout=60,
            )
            if r.returncode == 0 and r.stdout.count(" node_") >= n:
                return
            time.sleep(1)
        raise RuntimeError(f"Ray cluster did not reach {n} nodes in {timeout_s}s")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(30)
            with contextlib.suppress(ProcessLookupError):  # what is left in our session
                os.killpg(p.pid, signal.SIGKILL)
        self.procs.clear()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
