"""Daemon test fixtures: a socket folder every user can reach, daemons and
processes started by the test and cleaned up by PID."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_helpers import Daemons  # noqa: E402


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A folder under /tmp that `nobody` can traverse (pytest's tmp_path
    sits under a 0700 folder)."""
    path = Path(tempfile.mkdtemp(prefix="pipetune-daemon-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemons(socket_dir: Path) -> Iterator[Daemons]:
    ds = Daemons(socket_dir)
    yield ds
    ds.cleanup()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A real process (owned by root) a trial can register."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()
