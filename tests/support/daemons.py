"""Helpers of the daemon tests (tests/daemon, tests/faults): daemons and
children started as subprocesses of the test, stopped by PID (never by
name).  The fixtures built on them (``socket_dir``, ``daemons``,
``sleeper``) are in tests/conftest.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipetune.daemon import DaemonClient, DaemonUnavailableError

ROOT = Path(__file__).resolve().parents[2]
DAEMON_TESTS = ROOT / "tests" / "daemon"
PYTHON = sys.executable


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


class DaemonProcess:
    """A daemon running as a child process on ``socket``."""

    def __init__(self, argv: Sequence[str], socket: Path, log: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.socket = socket
        self.log = log
        self._log_fh = open(log, "ab")  # noqa: SIM115 - lives as long as the daemon
        self.proc = subprocess.Popen(list(argv), stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     env=child_env(**(env or {})), cwd=ROOT)
        self.client = DaemonClient(socket, timeout_s=10.0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n"
                                     + self.output())
            try:
                health = self.client.health(timeout_s=2.0)
                if health.get("pid") == self.pid:
                    return health
            except DaemonUnavailableError:
                pass
            time.sleep(0.05)
        raise AssertionError("daemon not ready in time:\n" + self.output())

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signum)

    def wait(self, timeout_s: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout_s)

    def output(self) -> str:
        self._log_fh.flush()
        return self.log.read_text(errors="replace")

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=15)
        self._log_fh.close()


class Daemons:
    """Starts daemons for one test and cleans every one up."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[DaemonProcess] = []
        self.socket = folder / "daemon.sock"

    def cli(self, *args: str, ready: bool = True, socket: Path | None = None) -> DaemonProcess:
        sock = socket or self.socket
        argv = [PYTHON, "-m", "pipetune", "daemon", "--socket", str(sock),
                "--socket-mode", "0666", "--reap-interval-s", "0.2", *args]
        return self._start(argv, sock, ready)

    def recording(self, *args: str, ready: bool = True,
                  env: Mapping[str, str] | None = None) -> DaemonProcess:
        """The recording daemon; ``env`` adds to its environment (a fake
        ``pynvml`` on its ``PYTHONPATH`` ...)."""
        argv = [PYTHON, str(DAEMON_TESTS / "recording_daemon.py"), str(self.socket),
                str(self.record), *args]
        return self._start(argv, self.socket, ready, env)

    @property
    def record(self) -> Path:
        return self.folder / "record.jsonl"

    def records(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]

    def _start(self, argv: list[str], sock: Path, ready: bool,
               env: Mapping[str, str] | None = None) -> DaemonProcess:
        d = DaemonProcess(argv, sock, self.folder / f"daemon-{len(self.started)}.log", env)
        self.started.append(d)
        if ready:
            d.wait_ready()
        return d

    def cleanup(self) -> None:
        for d in self.started:
            d.cleanup()


def wait_until(predicate: Callable[[], Any], timeout_s: float = 15.0,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached within {timeout_s} s")
