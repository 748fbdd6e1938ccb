"""Fixtures for energy tests: real CPU-burning child processes.

This folder goes on ``sys.path`` so the tests import their helper modules
(``energy_fake_nvml``) under pytest's importlib import mode too.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

BURNER = HERE / "burner.py"


class Burner:
    """One running ``burner.py``; talk to it line by line."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BURNER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, bufsize=1,
        )
        self.pid = self.proc.pid
        assert self.expect("ready") == ""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str) -> str:
        """Read lines until one starts with ``word``; returns the rest of it."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"burner {self.pid} exited before saying {word!r}")
            head, _, rest = line.strip().partition(" ")
            if head == word:
                return rest

    def burn(self, cpu_s: float) -> float:
        """Burn ``cpu_s`` CPU seconds in the child; returns what it measured."""
        self.send(f"burn {cpu_s}")
        return float(self.expect("burned"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, OSError):
                self.proc.kill()  # this one PID, which we started
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def burner() -> Iterator[Callable[[], Burner]]:
    """Factory of burner processes; all are stopped (by PID) after the test."""
    started: list[Burner] = []

    def make() -> Burner:
        b = Burner()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()
