"""Conformance suite of the Controller interface, run against every backend:
cgroup v1 for real on this host, cgroup v2 over a fake cgroupfs tree, the
affinity fallback (real sched_setaffinity) and the dry run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from control_helpers import SLEEPER, FakeCgroupV2Fs, cpus_allowed_list, wait_for

from pipetune.control import (
    AffinityController,
    CgroupFs,
    CgroupV1Controller,
    CgroupV2Controller,
    ControlInputError,
    Controller,
    DryRunController,
    cgroup_controller,
    cgroups_writable,
    detect_cgroups,
    own_cgroups,
    parse_cpus,
)
from pipetune.control.base import PARENT_NAME, process_start_ticks
from pipetune.errors import ControlError
from pipetune.types import SystemConfig

ALLOC_ON_CUE = """
import sys
print("ready", flush=True)
sys.stdin.readline()
blob = bytearray(80 * 1024 * 1024)
for i in range(0, len(blob), 4096):
    blob[i] = 1
print("allocated", flush=True)
import time; time.sleep(600)
"""

SPAWNS_CHILD = """
import subprocess, sys, time
c = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("ready", flush=True)
try:
    time.sleep(600)
finally:
    c.kill()
"""


class FailingFs(CgroupFs):
    """Real cgroupfs, except writes to files named in ``fail_on`` fail."""

    def __init__(self) -> None:
        self.fail_on: set[str] = set()

    def write(self, path: Path, value: str) -> None:
        if path.name in self.fail_on:
            import errno

            raise self._error("write to", path, OSError(errno.EIO, os.strerror(errno.EIO)))
        super().write(path, value)


class Harness:
    """One backend under test, and how to poke it."""

    def __init__(self, ctl: Controller, kind: str, fs: object = None) -> None:
        self.ctl, self.kind, self.fs = ctl, kind, fs

    @property
    def enforces_memory(self) -> bool:
        return self.kind.startswith("cgroup")

    @property
    def has_groups(self) -> bool:
        return self.kind.startswith("cgroup")

    def group_dirs(self, handle) -> list[Path]:
        return [Path(p) for p in handle.paths]


BACKENDS = ["cgroup-v1", "cgroup-v2-fake", "cgroup-v2-real", "affinity", "dry-run"]


@pytest.fixture(params=BACKENDS)
def h(request, tmp_path, no_cgroup_left):
    kind = request.param
    if kind == "cgroup-v1":
        ok = cgroups_writable()
        if ok is not True:
            pytest.skip(f"no writable cgroups here: {ok}")
        host = cgroup_controller()
        if not isinstance(host, CgroupV1Controller):
            pytest.skip("host cgroups are not v1")
        fs = FailingFs()
        harness = Harness(CgroupV1Controller(dict(host.controller_dirs), fs=fs), kind, fs)
    elif kind == "cgroup-v2-real":
        info, own = detect_cgroups(), own_cgroups()
        if info.unified is None or "unified" not in own:
            pytest.skip("no cgroup v2 hierarchy on this host")
        fs = FailingFs()
        ctl = CgroupV2Controller(info.unified, own["unified"], mount_root=info.unified_root,
                                 fs=fs)
        if not ctl.available_controllers():
            pytest.skip(f"cgroup v2 at {ctl.own_dir} offers no cpu/cpuset/memory controller")
        harness = Harness(ctl, kind, fs)
    elif kind == "cgroup-v2-fake":
        root = tmp_path / "cgroup"
        fs = FakeCgroupV2Fs(root)
        own = root / "me"
        own.mkdir()
        fs._populate(own)
        harness = Harness(CgroupV2Controller(root, "/me", fs=fs), kind, fs)
    elif kind == "affinity":
        harness = Harness(AffinityController(), kind)
    else:
        harness = Harness(DryRunController(), kind)
    yield harness
    for handle in list(getattr(harness.ctl, "open_trials", lambda: [])()):
        harness.ctl.close_trial(handle)


def test_open_moves_processes_and_descendants(h, spawn):
    parent = spawn(SPAWNS_CHILD)
    kids = [int(p) for p in os.popen(f"ps -o pid= --ppid {parent.pid}").read().split()]
    assert kids, "helper child not found"
    handle = h.ctl.open_trial("trial-1", [parent.pid])
    try:
        assert {parent.pid, *kids} <= h.ctl.members(handle)
        if h.kind == "cgroup-v1":
            # Every thread of every process is in the group, in each hierarchy.
            for pid in (parent.pid, *kids):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    cg = Path(f"/proc/{pid}/task/{tid}/cgroup").read_text()
                    for ctl in ("cpuset", "cpu", "memory"):
                        line = next(ln for ln in cg.splitlines() if f":{ctl}:" in ln
                                    or f",{ctl}:" in ln or f":{ctl}," in ln)
                        assert f"/{PARENT_NAME}/{handle.group}" in line, (ctl, line)
    finally:
        h.ctl.close_trial(handle)


def test_add_pids_later(h, spawn):
    a, b = spawn(SLEEPER), spawn(SLEEPER)
    handle = h.ctl.open_trial("trial-add", [a.pid])
    try:
        assert b.pid not in h.ctl.members(handle)
        h.ctl.add_pids(handle, [b.pid])
        assert {a.pid, b.pid} <= h.ctl.members(handle)
    finally:
        h.ctl.close_trial(handle)


def test_apply_reads_back_and_can_be_changed(h, spawn):
    p = spawn(SLEEPER, "2")
    handle = h.ctl.open_trial("trial-apply", [p.pid])
    try:
        cpus = h.ctl.allowed_cpus()
        a = h.ctl.apply(handle, SystemConfig(1, 512), cpus=[cpus[-1]], cpu_quota=0.5)
        assert a.cpus == (cpus[-1],) and a.cpu_quota == 0.5 and a.memory_mb == 512
        lim = h.ctl.limits(handle)
        assert lim["cpus"] == (cpus[-1],)
        assert lim["cpu_quota"] == pytest.approx(0.5)
        assert lim["memory_mb"] == 512
        if h.enforces_memory:
            assert a.skipped == {}
        else:
            assert {"memory_mb", "cpu_quota"} <= set(a.skipped)
        if h.kind in ("cgroup-v1", "affinity"):
            for tid in os.listdir(f"/proc/{p.pid}/task"):
                assert cpus_allowed_list(int(tid), p.pid) == str(cpus[-1])
        b = h.ctl.apply(handle, SystemConfig(len(cpus), None))
        assert b.cpus == tuple(cpus) and b.cpu_quota is None and b.memory_mb is None
        lim = h.ctl.limits(handle)
        assert lim == {"cpus": tuple(cpus), "cpu_quota": None, "memory_mb": None}
    finally:
        h.ctl.close_trial(handle)


def test_failed_apply_keeps_previous_limits(h, spawn):
    if not h.has_groups:
        pytest.skip("affinity and dry-run write no limit files")
    p = spawn(SLEEPER)
    handle = h.ctl.open_trial("trial-rollback", [p.pid])
    try:
        cpus = h.ctl.allowed_cpus()
        h.ctl.apply(handle, SystemConfig(1, 256), cpus=[cpus[0]], cpu_quota=0.5)
        before = h.ctl.limits(handle)
        h.fs.fail_on = {"memory.max", "memory.limit_in_bytes"}
        with pytest.raises(ControlError, match="cannot write"):
            h.ctl.apply(handle, SystemConfig(len(cpus), 300), cpu_quota=1.5)
        h.fs.fail_on = set()
        assert h.ctl.limits(handle) == before  # cpuset and quota were rolled back
    finally:
        h.fs.fail_on = set()
        h.ctl.close_trial(handle)


def test_bad_input_changes_nothing(h, spawn):
    p = spawn(SLEEPER)
    handle = h.ctl.open_trial("trial-bad", [p.pid])
    try:
        cpus = h.ctl.allowed_cpus()
        h.ctl.apply(handle, SystemConfig(1), cpus=[cpus[0]])
        before = h.ctl.limits(handle)
        with pytest.raises(ControlInputError, match="needs"):
            h.ctl.apply(handle, SystemConfig(len(cpus) + 1))
        with pytest.raises(ControlInputError, match="not available"):
            h.ctl.apply(handle, SystemConfig(1), cpus=[max(cpus) + 7])
        with pytest.raises(ControlInputError, match="not 2"):
            h.ctl.apply(handle, SystemConfig(2), cpus=[cpus[0]])
        with pytest.raises(ControlInputError, match="more than"):
            h.ctl.apply(handle, SystemConfig(1), cpu_quota=1.5)
        with pytest.raises(ControlInputError, match="> 0"):
            h.ctl.apply(handle, SystemConfig(1), cpu_quota=0)
        assert h.ctl.limits(handle) == before
        with pytest.raises(ControlInputError, match="already open"):
            h.ctl.open_trial("trial-bad", [p.pid])
    finally:
        h.ctl.close_trial(handle)


def test_gone_pid_is_refused(h):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(ControlInputError, match="no such process"):
        h.ctl.open_trial("trial-gone", [gone.pid])
    assert getattr(h.ctl, "open_trials", list)() == []


def test_memory_limit_below_usage_is_refused(h, spawn):
    if not h.enforces_memory:
        pytest.skip(f"{h.kind} does not limit memory")
    p = spawn(ALLOC_ON_CUE)
    handle = h.ctl.open_trial("trial-mem", [p.pid])
    try:
        if h.kind == "cgroup-v1":
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "allocated"
        else:  # the fake kernel's accounting
            (Path(handle.paths[0]) / "memory.current").write_text(str(80 << 20))
        assert h.ctl.usage(handle).memory_current_mb >= 79
        with pytest.raises(ControlInputError, match="below the trial's current usage"):
            h.ctl.apply(handle, SystemConfig(1, 20))
        assert h.ctl.limits(handle)["memory_mb"] is None
        assert p.poll() is None  # still running
    finally:
        h.ctl.close_trial(handle)


def test_close_is_idempotent_and_frees_survivors(h, spawn):
    p = spawn(SLEEPER, "3")
    handle = h.ctl.open_trial("trial-close", [p.pid])
    h.ctl.apply(handle, SystemConfig(1), cpus=[h.ctl.allowed_cpus()[0]])
    h.ctl.close_trial(handle)
    h.ctl.close_trial(handle)
    assert p.poll() is None, "close_trial must not kill"
    for d in h.group_dirs(handle):
        assert not d.exists(), d
    if h.kind in ("cgroup-v1", "affinity"):
        # No longer limited: every thread may run on every CPU again.
        allowed = h.ctl.allowed_cpus()
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            assert parse_cpus(cpus_allowed_list(int(tid), p.pid)) == allowed
    if h.kind == "cgroup-v2-fake":
        assert str(p.pid) in (h.ctl.own_dir / "cgroup.procs").read_text().split()
    with pytest.raises(ControlInputError, match="not open"):
        h.ctl.apply(handle, SystemConfig(1))


def test_cleanup_stale_removes_groups_of_dead_owners(h, spawn):
    if not h.has_groups:
        assert h.ctl.cleanup_stale() == 0
        return
    survivor = spawn(SLEEPER)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = f"crashed-trial@{dead.pid}.{process_start_ticks(os.getpid())}"
    made = []
    try:
        for key in h.ctl.own_dirs:
            g = h.ctl._make_group(key, name)
            made.append(g)
            h.ctl._init_group(key, g)
            h.fs.write(g / "cgroup.procs", f"{survivor.pid}\n")
        # A live owner's group (ours) must stay.
        live = h.ctl.open_trial("live-trial", [spawn(SLEEPER).pid])
        # >= 1: on a shared host another dead pipetune owner's group may be
        # stale too; what matters is that ours went and the live one stayed.
        assert h.ctl.cleanup_stale() >= 1
        for g in made:
            assert not g.exists()
        assert all(Path(p).exists() for p in live.paths)
        assert survivor.poll() is None
        h.ctl.close_trial(live)
    finally:
        for g in made:
            if g.exists():
                h.ctl._empty_and_remove(g, g.parent.parent)
    assert not any(g.exists() for g in made)


def test_usage_counts(h, spawn):
    p = spawn(SLEEPER)
    handle = h.ctl.open_trial("trial-usage", [p.pid])
    try:
        u = h.ctl.usage(handle)
        assert u.cpu_s >= 0 and u.oom_kills == 0 and u.memory_peak_mb >= u.memory_current_mb
        if h.kind == "cgroup-v2-fake":
            d = Path(handle.paths[0])
            (d / "cpu.stat").write_text("usage_usec 2500000\nnr_throttled 7\n"
                                        "throttled_usec 300000\n")
            (d / "memory.current").write_text(str(10 << 20))
            (d / "memory.peak").write_text(str(64 << 20))
            (d / "memory.events").write_text("low 0\nhigh 3\nmax 2\noom 1\noom_kill 1\n")
            u = h.ctl.usage(handle)
            assert (u.cpu_s, u.throttled_periods, u.throttled_s) == (2.5, 7, 0.3)
            assert (u.memory_current_mb, u.memory_peak_mb) == (10, 64)
            assert (u.oom_kills, u.limit_hits) == (1, 5)
    finally:
        h.ctl.close_trial(handle)


def test_open_trials_are_thread_safe(h, spawn):
    import threading

    procs = [spawn(SLEEPER) for _ in range(4)]
    handles, errors = [], []

    def work(i):
        try:
            hd = h.ctl.open_trial(f"par-{i}", [procs[i].pid])
            h.ctl.apply(hd, SystemConfig(1))
            handles.append(hd)
        except Exception as e:  # noqa: BLE001 - collected for the assert
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    try:
        assert not errors
        assert len({hd.group for hd in handles}) == 4
        assert wait_for(lambda: all(procs[i].pid in h.ctl.members(hd)
                                    for i, hd in enumerate(sorted(handles,
                                                                  key=lambda x: x.trial_id))))
    finally:
        for hd in handles:
            h.ctl.close_trial(hd)


EMBEDDED_AFFINITY = """
import os, sys
from pipetune.control import AffinityController
from pipetune.types import SystemConfig
c = AffinityController()
h = c.open_trial("self", [os.getpid()])
for cores in (1, 2, 1, 2):
    a = c.apply(h, SystemConfig(cores=cores))
    print(cores, len(a.cpus), len(os.sched_getaffinity(0)), flush=True)
c.close_trial(h)
print("closed", len(os.sched_getaffinity(0)), flush=True)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_embedded_affinity_controller_grows_its_own_process_back() -> None:
    """Embedded in a trial process, the affinity controller pins that very
    process: a trial shrunk to 1 core must still be given 2 again (the CPUs
    it may use are those of the process before it pinned anything)."""
    out = subprocess.run([sys.executable, "-c", EMBEDDED_AFFINITY], capture_output=True,
                         text=True, timeout=60, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    lines = out.stdout.split("\n")
    assert lines[:4] == ["1 1 1", "2 2 2", "1 1 1", "2 2 2"], out.stdout + out.stderr
    assert lines[4] == f"closed {len(os.sched_getaffinity(0))}"
