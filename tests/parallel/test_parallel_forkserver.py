"""Ranks forked from the trial's warm forkserver: cheap restarts, in the trial's
cgroup, nothing left after the run, and no rank outliving the trial process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipetune.parallel import ParallelConfig
from pipetune.parallel._forkserver import forkserver_pid
from pipetune.parallel.group import Boundary, GroupRunner
from pipetune.tune.session import ranks_in_trial_cgroup
from workloads.base import cpu_count

HP = {"batch_size": 64, "max_train_samples": 768, "lr": 0.05}
ROOT = Path(__file__).resolve().parents[2]

needs_two_cores = pytest.mark.skipif(cpu_count() < 2, reason="needs 2 cores for 2 ranks")


def _forkservers_of(pid: int) -> list[psutil.Process]:
    out = []
    for child in psutil.Process(pid).children():
        try:
            if "multiprocessing.forkserver" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return out


@needs_two_cores
def test_restarts_fork_ranks_inside_the_trial_cgroup_and_leave_nothing_behind() -> None:
    """The trial (this process) in a cgroup of its own: every rank of
    none -> ddp -> none is a child of the forkserver, the forkserver a child of
    the trial process, all in the trial's cgroup; each restart's cost is
    recorded; after the run no forkserver is left, in the cgroup or at all."""
    from pipetune.control import cgroup_controller, cgroups_writable

    ok = cgroups_writable()
    if ok is not True:
        pytest.skip(f"no writable cgroups here: {ok}")
    ctl = cgroup_controller()
    me = os.getpid()
    before = {p.pid for p in psutil.Process(me).children(recursive=True)}
    handle = ctl.open_trial("warm-forkserver", [me])
    seen: list[dict[str, Any]] = []
    plan = {0: ParallelConfig("ddp", 2), 1: ParallelConfig("none")}

    def on_epoch(record: dict[str, Any]) -> Boundary:
        server = forkserver_pid()
        pids = [int(r["pid"]) for r in record["ranks"]]
        seen.append({
            "pids": pids,
            "parents": [psutil.Process(p).ppid() for p in pids],
            "server": server,
            "server_parent": psutil.Process(server).ppid() if server else None,
            "in_cgroup": ranks_in_trial_cgroup([*pids, server] if server else pids),
            "members": set(ctl.members(handle)),
        })
        return Boundary(threads=1, restart=plan.get(record["epoch"]))

    runner = GroupRunner("lenet5-mnist", HP, ParallelConfig("none"), epochs=3, threads=1)
    try:
        try:
            records = runner.run(on_epoch)
        finally:
            runner.close()
        left = set(ctl.members(handle)) - {me} - before
    finally:
        ctl.close_trial(handle)

    assert [r["strategy"] for r in records] == ["none", "ddp", "none"]
    servers = {s["server"] for s in seen}
    assert len(servers) == 1 and None not in servers  # one forkserver for the whole run
    for s in seen:
        assert s["parents"] == [s["server"]] * len(s["pids"])  # forked by it
        assert s["server_parent"] == me  # started by the trial process
        assert s["in_cgroup"] is True  # ranks and forkserver under the trial's limits
        assert set(s["pids"]) | {s["server"]} <= s["members"]
    assert "restart_s" not in records[0]
    assert records[1]["restart_s"] > 0 and records[2]["restart_s"] > 0
    print("restart_s with the forkserver:", [records[1]["restart_s"], records[2]["restart_s"]])
    # Stopped when the run ended: nothing of the run's in the trial's cgroup (a
    # resource tracker multiprocessing starts once per process may be).
    assert forkserver_pid() is None and not _forkservers_of(me)
    strays = []
    for pid in left:
        try:
            if "resource_tracker" not in " ".join(psutil.Process(pid).cmdline()):
                strays.append(pid)
        except psutil.NoSuchProcess:
            continue
    assert not strays


def test_spawned_and_forked_ranks_train_the_same_epoch() -> None:
    """The start method changes how a rank starts, not what it trains."""
    losses = {}
    for method in ("spawn", "forkserver"):
        runner = GroupRunner("lenet5-mnist", {**HP, "max_train_samples": 256},
                             ParallelConfig("none"), epochs=1, threads=1, start_method=method)
        try:
            (record,) = runner.run(lambda r: None)
        finally:
            runner.close()
        losses[method] = record["loss"]
    assert losses["forkserver"] == pytest.approx(losses["spawn"], rel=1e-6)
    assert forkserver_pid() is None


@needs_two_cores
def test_ranks_and_forkserver_end_when_the_trial_process_is_killed(tmp_path: Path) -> None:
    """A trial process killed while its ranks wait at a boundary takes its
    forkserver and the ranks with it (parent-death signal, chained)."""
    script = textwrap.dedent(f"""
        import json, os, signal, sys
        from pipetune.parallel import ParallelConfig
        from pipetune.parallel._forkserver import forkserver_pid
        from pipetune.parallel.group import GroupRunner

        def on_epoch(record):
            pids = [r["pid"] for r in record["ranks"]]
            print(json.dumps({{"ranks": pids, "server": forkserver_pid()}}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        GroupRunner("lenet5-mnist", {HP!r}, ParallelConfig("ddp", 2), epochs=2,
                    threads=1, checkpoint_dir={str(tmp_path)!r}).run(on_epoch)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=240, cwd=ROOT)
    assert proc.returncode == -9, proc.stderr[-2000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    pids = [*facts["ranks"], facts["server"]]
    deadline = time.monotonic() + 15
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if _running(p)]
        time.sleep(0.1)
    for pid in alive:  # the test's own strays, by pid
        os.kill(pid, 9)
    assert not alive, f"outlived the trial process: {alive}"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
