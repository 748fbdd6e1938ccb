"""cgroup v1 limits measured for real on this host.

CPU is shared with other work on this box, so rates are the *child's* CPU
seconds (from /proc, independent of the cgroup's own accounting) per wall
second, with tolerances wide enough for contention; the upper bounds are the
assertions that fail when a limit is not in force (an unlimited 2-thread
child can reach 2 CPU-s/s, an unlimited busy loop 1).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from control_helpers import BUSY, SLEEPER, cpu_s_of, cpus_allowed_list

from pipetune.control import ControlInputError, parse_cpus
from pipetune.types import SystemConfig

ALLOC = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
chunks = []
for _ in range(int(sys.argv[1]) // 10):
    b = bytearray(10 * 1024 * 1024)
    for i in range(0, len(b), 4096):
        b[i] = 1
    chunks.append(b)
print("allocated", flush=True)
time.sleep(600)
"""


def rate(pid: int, seconds: float) -> float:
    """CPU seconds per wall second of ``pid`` over ``seconds``."""
    c0, t0 = cpu_s_of(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_s_of(pid) - c0) / (time.monotonic() - t0)


def test_one_core_limits_two_busy_threads(v1, spawn):
    p = spawn(BUSY, "2")
    h = v1.open_trial("one-core", [p.pid])
    try:
        cpu = v1.allowed_cpus()[-1]
        v1.apply(h, SystemConfig(1), cpus=[cpu])
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            assert cpus_allowed_list(int(tid), p.pid) == str(cpu)
        u0, per0 = v1.usage(h), v1.cpu_s_per_cpu(h)
        r = rate(p.pid, 2.0)
        u1, per1 = v1.usage(h), v1.cpu_s_per_cpu(h)
        print(f"1-core limit, 2 busy threads: {r:.2f} CPU-s/s")
        assert 0.2 <= r <= 1.15, r
        # The cgroup's own accounting agrees with /proc.
        assert (u1.cpu_s - u0.cpu_s) / 2.0 == pytest.approx(r, rel=0.3)
        # And the time was spent on the one allowed CPU only.
        spent = [b - a for a, b in zip(per0, per1, strict=True)]
        assert spent[cpu] >= 0.98 * sum(spent), spent
    finally:
        v1.close_trial(h)


def test_quarter_quota_brings_a_busy_loop_to_a_quarter(v1, spawn):
    p = spawn(BUSY, "1")
    h = v1.open_trial("quarter", [p.pid])
    try:
        v1.apply(h, SystemConfig(1), cpu_quota=0.25)
        time.sleep(0.2)
        before = v1.usage(h)
        r = rate(p.pid, 2.0)
        after = v1.usage(h)
        print(f"quota 0.25: {r:.3f} CPU-s/s, throttled {after.throttled_periods} periods")
        assert 0.08 <= r <= 0.33, r
        assert after.throttled_periods > before.throttled_periods
    finally:
        v1.close_trial(h)


def test_raising_the_limit_mid_run_takes_effect(v1, spawn):
    p = spawn(BUSY, "2")
    h = v1.open_trial("raise", [p.pid])
    try:
        cpus = v1.allowed_cpus()
        v1.apply(h, SystemConfig(1), cpus=[cpus[0]], cpu_quota=0.2)
        time.sleep(0.2)
        low = rate(p.pid, 1.5)
        v1.apply(h, SystemConfig(len(cpus)))  # no quota, every CPU
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            assert parse_cpus(cpus_allowed_list(int(tid), p.pid)) == cpus
        time.sleep(0.2)
        high = rate(p.pid, 1.5)
        print(f"quota 0.2 -> unlimited: {low:.2f} -> {high:.2f} CPU-s/s")
        assert low <= 0.3, low
        assert high >= max(0.35, 1.5 * low), (low, high)
    finally:
        v1.close_trial(h)


def test_child_past_its_memory_limit_is_oom_killed_and_reported(v1, spawn):
    my_memcg = Path("/proc/self/cgroup").read_text()
    p = spawn(ALLOC, "400")
    h = v1.open_trial("oom", [p.pid])
    try:
        v1.apply(h, SystemConfig(1, 100))
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.wait(timeout=60) == -9  # SIGKILL by the OOM killer
        u = v1.usage(h)
        assert u.oom_kills >= 1
        assert 90 <= u.memory_peak_mb <= 101
    finally:
        v1.close_trial(h)
    # The test process is untouched: alive (we are), same cgroups.
    assert Path("/proc/self/cgroup").read_text() == my_memcg


def test_processes_started_later_are_inside(v1, spawn):
    code = SLEEPER.replace('print("ready", flush=True)',
                           'print("ready", flush=True)\n'
                           'import subprocess\n'
                           'sys.stdin.readline()\n'
                           'c = subprocess.Popen([sys.executable, "-c", '
                           '"import time; time.sleep(600)"])\n'
                           'print(c.pid, flush=True)')
    p = spawn(code)
    h = v1.open_trial("later", [p.pid])
    try:
        v1.apply(h, SystemConfig(1), cpus=[v1.allowed_cpus()[0]])
        p.stdin.write("go\n")
        p.stdin.flush()
        child = int(p.stdout.readline())
        try:
            assert child in v1.members(h)
            assert cpus_allowed_list(child) == str(v1.allowed_cpus()[0])
        finally:
            os.kill(child, 9)  # by PID: the child we made start
    finally:
        v1.close_trial(h)


CRASHING_CONTROLLER = """
import subprocess, sys, time
from pipetune.control import cgroup_controller
from pipetune.types import SystemConfig
ctl = cgroup_controller()
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
h = ctl.open_trial("crashy", [worker.pid])
ctl.apply(h, SystemConfig(1), cpu_quota=0.5)
print(worker.pid, h.group, flush=True)
time.sleep(600)
"""


def test_groups_of_a_killed_controller_are_cleaned_on_next_start(v1, spawn, monkeypatch):
    """The controlling process dies with a trial open (kill -9): the next
    pipetune start removes its groups and frees the surviving worker."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    ctl_proc = spawn(CRASHING_CONTROLLER, wait_ready=False)
    worker_s, group = ctl_proc.stdout.readline().split()
    worker = int(worker_s)
    try:
        dirs = [v1.parent_dir(k) / group for k in v1.own_dirs]
        assert all(d.is_dir() for d in dirs)
        ctl_proc.kill()  # by PID: the controller we started
        ctl_proc.wait()
        assert v1.cleanup_stale() >= 1
        assert not any(d.exists() for d in dirs)
        # The worker survived and is no longer limited.
        assert Path(f"/proc/{worker}").exists()
        cg = Path(f"/proc/{worker}/cgroup").read_text()
        assert group not in cg
        assert parse_cpus(cpus_allowed_list(worker)) == v1.allowed_cpus()
    finally:
        os.kill(worker, 9)  # by PID: the worker our controller started


def test_limit_below_memory_held_before_joining_is_refused(v1, spawn):
    """Linux 6.x no longer moves memory charges with a process: the check
    against current usage must still see what the process holds."""
    p = spawn('b = b"x" * (150 << 20)\nprint("ready", flush=True)\nimport time\ntime.sleep(600)')
    h = v1.open_trial("held", [p.pid])
    try:
        with pytest.raises(ControlInputError, match="below the trial's current usage"):
            v1.apply(h, SystemConfig(1, 100))
        assert v1.limits(h)["memory_mb"] is None
        assert p.poll() is None
        v1.apply(h, SystemConfig(1, 400))  # above it: fine
        assert v1.limits(h)["memory_mb"] == 400
    finally:
        v1.close_trial(h)
