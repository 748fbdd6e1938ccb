"""Shared fixtures: a real InfluxDB 1.x server, isolated PIPETUNE_HOME, one
Ray session, and the daemon tests' socket folder, daemons and a sleeper
(tests/daemon and tests/faults)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# Tests run with --import-mode=importlib (test files of the same name may
# live in several folders); helper modules beside the tests are importable
# by their plain names.
for _folder in [
    Path(__file__).parent,
    *sorted(
        p
        for p in Path(__file__).parent.iterdir()
        if p.is_dir() and not p.name.startswith(("_", "."))
    ),
]:
    sys.path.insert(0, str(_folder))

from support.influxd import InfluxServer  # noqa: E402

if TYPE_CHECKING:
    from support.daemons import Daemons


@pytest.fixture(autouse=True)
def pipetune_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own data folder: no test sees another's store or spool."""
    home = tmp_path / "pipetune-home"
    monkeypatch.setenv("PIPETUNE_HOME", str(home))
    monkeypatch.delenv("PIPETUNE_STORE", raising=False)
    monkeypatch.delenv("PIPETUNE_CONFIG", raising=False)
    return home


@pytest.fixture(scope="session")
def influx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One real influxd for the session (tests that stop it make their own)."""
    if shutil.which("influxd") is None:
        pytest.fail("influxd is not installed: run .ci/run or `apt-get install influxdb`")
    server = InfluxServer(tmp_path_factory.mktemp("influxd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def influx_url(influx_server: InfluxServer) -> str:
    """A fresh database on the session's influxd."""
    name = "t_" + uuid.uuid4().hex[:10]
    influx_server.create_database(name)
    return influx_server.url(name)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for every Tune test (starting Ray costs seconds)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


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
    """Daemons started by the test on ``socket_dir/daemon.sock``, stopped by PID."""
    from support.daemons import Daemons

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
