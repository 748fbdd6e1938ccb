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


NOBODY_CLIENT = r"""
import json, os, sys
from pipetune.daemon import DaemonClient
from pipetune.errors import PrivilegeError
from pipetune.types import SystemConfig
c = DaemonClient(sys.argv[1])
out = {"uid": os.getuid()}
try:
    c.register(job="j", trial="steal", pids=[int(sys.argv[2])])
    out["root_pid"] = "accepted"
except PrivilegeError as e:
    out["root_pid"] = ["refused", e.status, str(e)]
try:
    c.apply("roots", SystemConfig(1))
    out["root_trial"] = "accepted"
except PrivilegeError as e:
    out["root_trial"] = ["refused", e.status, str(e)]
from pipetune.daemon.base import TrialConflictError
try:
    c.register(job="j", trial="roots", pids=[os.getpid()])
    out["root_id"] = "accepted"
except TrialConflictError as e:
    out["root_id"] = ["conflict", e.status, str(e)]
a = c.register(job="j", trial="mine", pids=[os.getpid()])
out["own_pid"] = a
out["listed"] = [t["trial"] for t in c.trials()]
c.close("mine")
# A child of ours that runs set-uid root (passwd waits at its prompt): the
# daemon moves a process with its children, so registering ourselves is refused.
import subprocess, time
child = subprocess.Popen(["passwd"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
time.sleep(0.5)
try:
    c.register(job="j", trial="with-setuid-child", pids=[os.getpid()])
    out["setuid_child"] = "accepted"
except PrivilegeError as e:
    out["setuid_child"] = ["refused", e.status, str(e)]
child.kill()
child.wait()
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
    d.client.register(job="j", trial="roots", pids=[sleeper.pid])
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
    # another user's trial id: a conflict that names neither its job nor its pids
    conflict, status, message = got["root_id"]
    assert (conflict, status) == ("conflict", 409)
    assert "job" not in message and str(sleeper.pid) not in message
    refused, status, message = got["setuid_child"]
    assert (refused, status) == ("refused", 403) and "descendant" in message, message
    assert got["listed"] == ["mine"]  # a caller sees its own trials only
    # Root sees all; the refused trial was never registered.
    assert sorted(t["trial"] for t in d.client.trials()) == ["roots"]


def test_root_may_register_another_users_process(daemons: Daemons) -> None:
    d = daemons.cli()
    proc = subprocess.Popen([*_as_nobody(), "sleep", "60"])
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


def test_sigkill_mid_trial_the_trial_says_what_confines_it_and_the_next_daemon_readopts(
    daemons: Daemons, socket_dir: Path
) -> None:
    first = daemons.cli()
    gate = socket_dir / "gate"
    gate.mkdir()
    child = subprocess.Popen(
        [PYTHON, str(Path(__file__).parent / "train_child.py"), str(daemons.socket), "kill-me",
         str(gate), "6"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT,
    )
    all_cpus = set(os.sched_getaffinity(0))
    try:
        assert child.stdout is not None

        def epochs(n: int) -> list[dict]:
            return [json.loads(child.stdout.readline()) for _ in range(n)]

        before = epochs(2)
        assert [t["trial"] for t in first.client.trials()] == ["kill-me"]
        kind = first.client.health()["controller_kind"]
        assert {e["pt_controller"] for e in before} == {f"daemon:{kind}"}
        confined = before[0]["pt_cpus"]
        assert len(confined.split(",")) == 1 and "-" not in confined  # one CPU
        assert {e["pt_threads"] for e in before} == {1}

        first.signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
        assert daemons.socket.exists()  # a dead daemon leaves its socket behind
        (gate / "go1").touch()
        orphaned = epochs(2)
        assert [e["loss"] for e in orphaned] == [1 / 3, 1 / 4]  # training went on
        # The dead daemon's cgroup still confines the trial: it says so, and
        # its threads follow what it really has.
        assert {e["pt_cpus"] for e in orphaned} == {confined}
        assert {e["pt_threads"] for e in orphaned} == {1}
        assert os.sched_getaffinity(child.pid) == {int(confined)}

        # The next daemon: stale socket removed, the dead one's group released at once.
        second = daemons.cli()
        health = second.client.health()
        assert health["recovered"]["stale_socket"] is True
        assert health["recovered"]["stale_trials"] == ["kill-me"]
        assert health["recovered"]["stale_groups"] >= 1
        assert os.sched_getaffinity(child.pid) == all_cpus
        assert second.client.trials() == []
        # At its next boundary the trial sees its limits gone and is adopted again.
        (gate / "go2").touch()
        after = epochs(2)
        assert [e["loss"] for e in after] == [1 / 5, 1 / 6]
        assert len(after[1]["pt_cpus"].split(",")) == 1 and "-" not in after[1]["pt_cpus"]
        assert [t["trial"] for t in second.client.trials()] == ["kill-me"]
        assert after[1]["pt_phase"] == "v1"
        (gate / "go3").touch()
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["done"] is True
        wait_until(lambda: second.client.trials() == [], what="ended trial closed")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


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
