"""An unprivileged caller of the node daemon, for real: a client running as
``nobody`` on the real daemon's socket, against trials of root.

A caller may register, move and limit only processes it owns, descendants
included, checked again at every apply; another user's trial is neither
described nor controllable; the socket's group decides who may connect at
all; and nobody profiles a process it does not own (perf refuses, the
command says so in one line)."""

from __future__ import annotations

import json
import os
import subprocess

from support.daemons import PYTHON, ROOT, Daemons, child_env
from support.nobody import setpriv_prefix

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




def test_ownership_checked_from_the_socket_peer(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    """A non-root caller may not register a root-owned PID nor touch a root
    trial, and may register its own process."""
    d = daemons.cli()
    d.client.register(job="j", trial="roots", pids=[sleeper.pid])
    out = subprocess.run(
        [*setpriv_prefix(), PYTHON, "-c", NOBODY_CLIENT, str(daemons.socket), str(sleeper.pid)],
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

CONTROL_CLIENT = r"""
import json, os, subprocess, sys, time
from pipetune.daemon import DaemonClient
from pipetune.types import SystemConfig
c = DaemonClient(sys.argv[1])
root_pid = int(sys.argv[2])
out = {}

def attempt(name, fn):
    try:
        fn()
        out[name] = "accepted"
    except Exception as e:
        out[name] = [type(e).__name__, getattr(e, "status", None), str(e)]

# every endpoint on root's trial
attempt("describe", lambda: c.trial("roots"))
attempt("apply", lambda: c.apply("roots", SystemConfig(1)))
attempt("usage", lambda: c.usage("roots"))
attempt("rebalance", lambda: c.rebalance("roots"))
attempt("capacity", lambda: c.capacity("roots", 1))
attempt("speedup", lambda: c.speedup("roots", {1: 1.0, 2: 1.5}))
attempt("add_own_pid", lambda: c.add_pids("roots", [os.getpid()]))
attempt("close", lambda: c.close("roots"))
# its own trial may not take in a root process
c.register(job="j", trial="mine", pids=[os.getpid()])
attempt("add_root_pid", lambda: c.add_pids("mine", [root_pid]))
attempt("apply_own", lambda: c.apply("mine", SystemConfig(1)))
# a child that turns set-uid root after the registration: the next apply
# would limit it too, so it is refused
child = subprocess.Popen(["passwd"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
time.sleep(0.5)
attempt("apply_with_setuid_child", lambda: c.apply("mine", SystemConfig(1)))
child.kill()
child.wait()
attempt("apply_after_child_gone", lambda: c.apply("mine", SystemConfig(1)))
c.close("mine")
print(json.dumps(out))
"""


def test_another_users_trial_is_neither_described_nor_controllable(
    daemons: Daemons, sleeper: subprocess.Popen
) -> None:
    d = daemons.cli()
    d.client.register(job="secret-job", trial="roots", pids=[sleeper.pid])
    affinity = os.sched_getaffinity(sleeper.pid)
    before = d.client.trial("roots")
    out = subprocess.run(
        [*setpriv_prefix(), PYTHON, "-c", CONTROL_CLIENT, str(daemons.socket), str(sleeper.pid)],
        capture_output=True, text=True, timeout=120, env=child_env(HOME="/tmp"), cwd="/tmp",
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    for name in ("describe", "apply", "usage", "rebalance", "capacity", "speedup",
                 "add_own_pid", "close"):
        kind, status, message = got[name]
        assert (kind, status) == ("PrivilegeError", 403), (name, got[name])
        # nothing of the trial but its owner's uid is said
        assert "secret-job" not in message and str(sleeper.pid) not in message, message
    kind, status, message = got["add_root_pid"]
    assert (kind, status) == ("PrivilegeError", 403) and f"pid {sleeper.pid}" in message
    assert got["apply_own"] == "accepted"
    kind, status, message = got["apply_with_setuid_child"]
    assert (kind, status) == ("PrivilegeError", 403), got["apply_with_setuid_child"]
    assert got["apply_after_child_gone"] == "accepted"
    # Root's trial is as it was: registered, never limited, its process untouched.
    after = d.client.trial("roots")
    assert after == before
    assert os.sched_getaffinity(sleeper.pid) == affinity
    assert [t["trial"] for t in d.client.trials()] == ["roots"]


def test_nobody_cannot_profile_a_process_it_does_not_own(
    sleeper: subprocess.Popen, socket_dir
) -> None:
    home = socket_dir / "home"
    out = subprocess.run(
        [*setpriv_prefix(), PYTHON, "-m", "pipetune", "profile", "--pid", str(sleeper.pid),
         "--epoch-seconds", "1", "--json"],
        capture_output=True, text=True, timeout=120,
        env=child_env(HOME="/tmp", PIPETUNE_HOME=str(home)), cwd=ROOT,
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert f"perf may not attach to pid {sleeper.pid}" in out.stderr, out.stderr
    assert not home.exists()


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
    setpriv_prefix()
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
