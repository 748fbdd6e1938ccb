"""`pipetune daemon` as users run it: a real process on a real Unix socket.

Its faults — a SIGKILL mid-trial, an unprivileged caller — are in
tests/faults/."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemons import PYTHON, ROOT, DaemonProcess, Daemons, child_env, wait_until
from support.nobody import setpriv_prefix

from pipetune.daemon import DaemonClient, DaemonUnavailableError
from pipetune.daemon.base import UnknownTrialError


def raw_request(sock_path: Path, method: str, path: str, body: bytes | None = None) -> tuple[
    int, dict
]:
    """One HTTP request written by hand (to send what a client would not)."""
    head = f"{method} {path} HTTP/1.0\r\nHost: localhost\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    data = head.encode() + b"\r\n" + (body or b"")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    header, _, payload = raw.partition(b"\r\n\r\n")
    status = int(header.split()[1])
    return status, json.loads(payload)


def test_health_over_socket_and_curl(daemons: Daemons, socket_dir: Path) -> None:
    model = socket_dir / "gt.json"
    store = f"sqlite:///{socket_dir / 'store.db'}"
    d = daemons.cli("--model", str(model), "--store", store)
    health = d.client.health()
    assert health["model"] == {"path": str(model), "version": 0, "mtime_ns": None}
    assert health["capabilities"]["store.url"] == store
    assert health["api_version"] == 2
    assert health["pid"] == d.pid
    assert health["status"] == "ok"
    assert health["uptime_s"] >= 0
    # The doctor's facts, collected once at start.
    assert health["capabilities"]["node.cpus"] == os.cpu_count()
    assert "store.reachable" in health["capabilities"]
    assert health["controller_kind"] in ("cgroup-v1", "cgroup-v2", "affinity")
    assert oct(daemons.socket.stat().st_mode & 0o777) == "0o666"
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    out = subprocess.run(
        ["curl", "-sS", "--unix-socket", str(daemons.socket), "http://localhost/v2/health"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert json.loads(out.stdout)["pid"] == d.pid


def test_second_daemon_refused_with_exit_2(daemons: Daemons) -> None:
    first = daemons.cli()
    out = subprocess.run(
        [PYTHON, "-m", "pipetune", "daemon", "--socket", str(daemons.socket)],
        capture_output=True, text=True, timeout=60, env=child_env(), cwd=ROOT,
    )
    assert out.returncode == 2, out.stderr
    assert "another daemon answers" in out.stderr
    assert f"pid {first.pid}" in out.stderr
    # The first one is unharmed and still owns the socket.
    assert first.client.health()["pid"] == first.pid


def test_path_that_is_not_a_socket_is_left_alone(socket_dir: Path) -> None:
    path = socket_dir / "not-a-socket"
    path.write_text("precious")
    out = subprocess.run(
        [PYTHON, "-m", "pipetune", "daemon", "--socket", str(path)],
        capture_output=True, text=True, timeout=60, env=child_env(), cwd=ROOT,
    )
    assert out.returncode == 2
    assert "is not a socket" in out.stderr
    assert path.read_text() == "precious"


@pytest.fixture(scope="module")
def shared_daemon() -> Iterator[DaemonProcess]:
    """One daemon for the many malformed requests (they change nothing)."""
    folder = Path(tempfile.mkdtemp(prefix="pipetune-daemon-test-"))
    ds = Daemons(folder)
    try:
        yield ds.cli()
    finally:
        ds.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [
        ("POST", "/v2/trials", b"{not json", 400, "not valid JSON"),
        ("POST", "/v2/trials", b"[1, 2]", 400, "must be a JSON object"),
        ("POST", "/v2/trials", b'{"pids": [1]}', 400, "'trial' is required"),
        ("POST", "/v2/trials", b'{"trial": "t"}', 400, "'pids' is required"),
        ("POST", "/v2/trials", b'{"trial": "t", "pids": ["x"]}', 400, "not a positive integer"),
        ("POST", "/v2/trials", b'{"trial": "t", "pids": [4194304]}', 400, "no such process"),
        ("POST", "/v2/trials/nope/apply", b'{"config": "1c"}', 404, "not registered"),
        ("GET", "/v2/trials/nope/apply", None, 405, "allowed POST"),
        ("POST", "/v2/trials/nope/usage", None, 405, "allowed GET"),
        ("POST", "/v2/trials/nope/epoch_end", b'{"epoch": 0}', 404, "no endpoint"),
        ("GET", "/v1/health", None, 404, "paths start with /v2/"),
        ("GET", "/v2/nothing", None, 404, "no endpoint"),
        ("DELETE", "/v2/trials/nope", None, 404, "not registered"),
        ("POST", "/v2/trials", b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    ],
)
def test_malformed_requests_get_4xx_with_a_message(
    shared_daemon: DaemonProcess, method: str, path: str, body: bytes | None,
    status: int, fragment: str,
) -> None:
    if body is not None:
        body = body.replace(b"PID", str(os.getpid()).encode())
    got, answer = raw_request(shared_daemon.socket, method, path, body)
    assert got == status, answer
    assert fragment in answer["error"]
    assert answer["type"]
    # The daemon survives every one of them, and registered nothing.
    assert shared_daemon.client.health()["trials"] == 0


def test_duplicate_trial_is_a_conflict_and_apply_needs_a_config(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    d = daemons.cli()
    first = d.client.register(job="j", trial="dup", pids=[sleeper.pid])
    assert first["trial"] == "dup"
    status, answer = raw_request(daemons.socket, "POST", "/v2/trials",
                                 json.dumps({"trial": "dup", "pids": [sleeper.pid]}).encode())
    assert status == 409 and answer["type"] == "TrialConflictError"
    # one process, one trial: the same pid under another id is a conflict too
    status, answer = raw_request(daemons.socket, "POST", "/v2/trials",
                                 json.dumps({"trial": "dup2", "pids": [sleeper.pid]}).encode())
    assert status == 409 and "already belong to a trial" in answer["error"]
    for body, fragment in [
        (b"{}", "'config' is required"),
        (b'{"config": "lots"}', "is not a system config"),
        (b'{"config": "1c", "cpu_quota": -1}', "must be a finite number > 0"),
        (b'{"config": "999c"}', "999 cores"),
    ]:
        status, answer = raw_request(daemons.socket, "POST", "/v2/trials/dup/apply", body)
        assert status == 400 and fragment in answer["error"], answer
    d.client.close("dup")
    with pytest.raises(UnknownTrialError):
        d.client.trial("dup")


def test_root_may_register_another_users_process(daemons: Daemons) -> None:
    d = daemons.cli()
    proc = subprocess.Popen([*setpriv_prefix(), "sleep", "60"])
    try:
        wait_until(lambda: _uid_of(proc.pid) == 65534, what="sleep runs as nobody")
        answer = d.client.register(job="j", trial="theirs", pids=[proc.pid])
        assert answer["trial"] == "theirs"
    finally:
        proc.kill()
        proc.wait()
    # The reaper drops the trial once its only process is gone.
    wait_until(lambda: d.client.trials() == [], what="dead trial dropped")


def _uid_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_graceful_stop_removes_socket_and_state(daemons: Daemons, sleeper: subprocess.Popen,
                                                signum: int) -> None:
    d = daemons.cli()
    d.client.register(job="j", trial="t", pids=[sleeper.pid])
    state = Path(str(daemons.socket) + ".state.json")
    assert "t" in json.loads(state.read_text())["trials"]
    d.signal(signum)
    assert d.wait() == 0
    assert not daemons.socket.exists()
    assert not state.exists()
    assert "trial t (job j) closed: daemon stopping" in d.output()
    with pytest.raises(DaemonUnavailableError, match="no daemon socket"):
        DaemonClient(daemons.socket).health()



def test_unknown_socket_group_is_a_usage_error(socket_dir: Path) -> None:
    out = subprocess.run(
        [PYTHON, "-m", "pipetune", "daemon", "--socket", str(socket_dir / "d.sock"),
         "--group", "no-such-group-here"],
        capture_output=True, text=True, timeout=60, env=child_env(), cwd=ROOT,
    )
    assert out.returncode == 2
    assert "no such group" in out.stderr
    assert not (socket_dir / "d.sock").exists()
