"""`pipetune daemon` as users run it: a real process on a real Unix socket."""

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
from daemon_helpers import PYTHON, ROOT, DaemonProcess, Daemons, child_env, wait_until

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
    assert health["api_version"] == 1
    assert health["pid"] == d.pid
    assert health["status"] == "ok"
    assert health["uptime_s"] >= 0
    # The doctor's facts, collected once at start.
    assert health["capabilities"]["node.cpus"] == os.cpu_count()
    assert "store.reachable" in health["capabilities"]
    assert set(health["modes"]) == {"pipetune", "v1", "v2"}
    assert oct(daemons.socket.stat().st_mode & 0o777) == "0o666"
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    out = subprocess.run(
        ["curl", "-sS", "--unix-socket", str(daemons.socket), "http://localhost/v1/health"],
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
        ("POST", "/v1/trials", b"{not json", 400, "not valid JSON"),
        ("POST", "/v1/trials", b"[1, 2]", 400, "must be a JSON object"),
        ("POST", "/v1/trials", b'{"pids": [1]}', 400, "'trial' is required"),
        ("POST", "/v1/trials", b'{"trial": "t"}', 400, "'pids' is required"),
        ("POST", "/v1/trials", b'{"trial": "t", "pids": ["x"]}', 400, "not a positive integer"),
        ("POST", "/v1/trials", b'{"trial": "t", "pids": [PID], "mode": "v9"}', 400, "mode"),
        ("POST", "/v1/trials", b'{"trial": "t", "pids": [PID], "space": "cores=999"}', 400,
         "do not fit"),
        ("POST", "/v1/trials", b'{"trial": "t", "pids": [PID], "space": {"cores": ["a"]}}',
         400, "not an integer"),
        ("POST", "/v1/trials", b'{"trial": "t", "pids": [4194304]}', 400, "no such process"),
        ("POST", "/v1/trials/nope/epoch_end", b'{"epoch": 0, "seconds": 1}', 404,
         "not registered"),
        ("GET", "/v1/trials/nope/epoch_end", None, 405, "allowed POST"),
        ("GET", "/v2/health", None, 404, "paths start with /v1/"),
        ("GET", "/v1/nothing", None, 404, "no endpoint"),
        ("DELETE", "/v1/trials/nope", None, 404, "not registered"),
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


def test_duplicate_trial_is_a_conflict_and_epoch_end_needs_fields(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    d = daemons.cli()
    first = d.client.register(job="j", trial="dup", pids=[sleeper.pid], mode="v1",
                              space="cores=1")
    assert first["trial"] == "dup"
    status, answer = raw_request(daemons.socket, "POST", "/v1/trials",
                                 json.dumps({"trial": "dup", "pids": [sleeper.pid]}).encode())
    assert status == 409 and answer["type"] == "TrialConflictError"
    status, answer = raw_request(daemons.socket, "POST", "/v1/trials/dup/epoch_end", b"{}")
    assert status == 400 and "'epoch' is required" in answer["error"]
    status, answer = raw_request(daemons.socket, "POST", "/v1/trials/dup/epoch_end",
                                 b'{"epoch": 1, "seconds": 2, "metrics": {"acc": "high"}}')
    assert status == 400 and "'acc'" in answer["error"]
    d.client.close("dup")
    with pytest.raises(UnknownTrialError):
        d.client.trial("dup")


NOBODY_CLIENT = r"""
import json, os, sys
from pipetune.daemon import DaemonClient
from pipetune.errors import PrivilegeError
c = DaemonClient(sys.argv[1])
out = {"uid": os.getuid()}
try:
    c.register(job="j", trial="steal", pids=[int(sys.argv[2])], mode="v1", space="cores=1")
    out["root_pid"] = "accepted"
except PrivilegeError as e:
    out["root_pid"] = ["refused", e.status, str(e)]
try:
    c.epoch_start("roots", 1)
    out["root_trial"] = "accepted"
except PrivilegeError as e:
    out["root_trial"] = ["refused", e.status, str(e)]
a = c.register(job="j", trial="mine", pids=[os.getpid()], mode="v1", space="cores=1")
out["own_pid"] = a
out["listed"] = [t["trial"] for t in c.trials()]
c.close("mine")
print(json.dumps(out))
"""


def _as_nobody() -> list[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    pytest.skip("neither setpriv nor runuser is installed")


def test_ownership_checked_from_the_socket_peer(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    """A non-root caller may not register a root-owned PID nor touch a root
    trial, and may register its own process."""
    d = daemons.cli()
    d.client.register(job="j", trial="roots", pids=[sleeper.pid], mode="v1", space="cores=1")
    out = subprocess.run(
        [*_as_nobody(), PYTHON, "-c", NOBODY_CLIENT, str(daemons.socket), str(sleeper.pid)],
        capture_output=True, text=True, timeout=60, env=child_env(HOME="/tmp"), cwd="/tmp",
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["uid"] == 65534
    refused, status, message = got["root_pid"]
    assert (refused, status) == ("refused", 403)
    assert f"pid {sleeper.pid} belongs to uid 0" in message
    assert got["root_trial"][:2] == ["refused", 403]
    assert got["own_pid"]["trial"] == "mine"
    assert got["listed"] == ["mine"]  # a caller sees its own trials only
    # Root sees all; the refused trial was never registered.
    assert sorted(t["trial"] for t in d.client.trials()) == ["roots"]


def test_root_may_register_another_users_process(daemons: Daemons) -> None:
    d = daemons.cli()
    proc = subprocess.Popen([*_as_nobody(), "sleep", "60"])
    try:
        wait_until(lambda: _uid_of(proc.pid) == 65534, what="sleep runs as nobody")
        answer = d.client.register(job="j", trial="theirs", pids=[proc.pid], mode="v1",
                                   space="cores=1")
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


def test_sigkill_mid_trial_training_goes_on_and_next_daemon_cleans_up(
    daemons: Daemons, socket_dir: Path
) -> None:
    first = daemons.cli()
    gate = socket_dir / "gate"
    gate.mkdir()
    child = subprocess.Popen(
        [PYTHON, str(Path(__file__).parent / "train_child.py"), str(daemons.socket), "kill-me",
         str(gate), "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        epochs = [json.loads(child.stdout.readline()) for _ in range(2)]
        hosted = first.client.trials()
        assert [t["trial"] for t in hosted] == ["kill-me"]
        # While the daemon lives, the trial reports what the daemon decided.
        assert [e["pt_phase"] for e in epochs] == [hosted[0]["phase"]] * 2
        assert all("daemon lost" not in e["pt_reason"] for e in epochs)

        first.signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
        assert daemons.socket.exists()  # a dead daemon leaves its socket behind
        (gate / "go1").touch()
        rest = [json.loads(child.stdout.readline()) for _ in range(3)]
        assert [e["loss"] for e in rest] == [1 / 3, 1 / 4, 1 / 5]  # training went on
        assert rest[-1]["pt_phase"] == "degraded"
        assert "daemon lost" in rest[-1]["pt_reason"]
        assert "training continues untouched" in rest[-1]["pt_reason"]

        # The next daemon: stale socket removed, the dead one's trial recovered.
        second = daemons.cli()
        health = second.client.health()
        assert health["recovered"]["stale_socket"] is True
        assert health["recovered"]["stale_trials"] == ["kill-me"]
        assert health["recovered"]["restored_pids"] == 1  # the child still runs
        assert second.client.trials() == []
        (gate / "go2").touch()
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["done"] is True
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_graceful_stop_removes_socket_and_state(daemons: Daemons, sleeper: subprocess.Popen,
                                                signum: int) -> None:
    d = daemons.cli()
    d.client.register(job="j", trial="t", pids=[sleeper.pid], mode="v1", space="cores=1")
    state = Path(str(daemons.socket) + ".state.json")
    assert "t" in json.loads(state.read_text())["trials"]
    d.signal(signum)
    assert d.wait() == 0
    assert not daemons.socket.exists()
    assert not state.exists()
    assert "trial t (job j) closed: daemon stopping" in d.output()
    with pytest.raises(DaemonUnavailableError, match="no daemon socket"):
        DaemonClient(daemons.socket).health()


GROUP_CLIENT = r"""
import json, os, sys
from pipetune.daemon import DaemonClient, DaemonUnavailableError
try:
    DaemonClient(sys.argv[1]).health()
    print(json.dumps({"gid": os.getgid(), "health": "ok"}))
except DaemonUnavailableError as e:
    print(json.dumps({"gid": os.getgid(), "health": str(e)}))
"""


def test_socket_group_decides_who_may_connect(daemons: Daemons) -> None:
    _as_nobody()
    d = daemons.cli("--group", "nogroup", "--socket-mode", "0660")
    st = daemons.socket.stat()
    assert (st.st_gid, oct(st.st_mode & 0o777)) == (65534, "0o660")
    results = {}
    for who, cmd in {
        "member": ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"],
        "outsider": ["setpriv", "--reuid=daemon", "--regid=daemon", "--clear-groups"],
    }.items():
        out = subprocess.run([*cmd, PYTHON, "-c", GROUP_CLIENT, str(daemons.socket)],
                             capture_output=True, text=True, timeout=60,
                             env=child_env(HOME="/tmp"), cwd="/tmp")
        assert out.returncode == 0, out.stderr
        results[who] = json.loads(out.stdout)["health"]
    assert results["member"] == "ok"
    assert "permission denied" in results["outsider"]
    assert d.client.health()["status"] == "ok"


def test_unknown_socket_group_is_a_usage_error(socket_dir: Path) -> None:
    out = subprocess.run(
        [PYTHON, "-m", "pipetune", "daemon", "--socket", str(socket_dir / "d.sock"),
         "--group", "no-such-group-here"],
        capture_output=True, text=True, timeout=60, env=child_env(), cwd=ROOT,
    )
    assert out.returncode == 2
    assert "no such group" in out.stderr
    assert not (socket_dir / "d.sock").exists()
