"""procfs figures: per-process deltas (new, exited and reused PIDs) and a real tree."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipetune.profiler import ProcTreeReader, tree_pids
from pipetune.profiler.procfs import ProcReading


def _r(t: float, procs: dict, rss: float = 10.0) -> ProcReading:
    return ProcReading(t, procs, {"proc.rss_mb": rss, "proc.threads": 3.0, "proc.processes": 1.0})


def test_delta_counts_new_processes_from_zero_and_skips_exited_ones():
    a, b, b_reused = (10, 1.0), (11, 1.0), (11, 5.0)
    prev = _r(0, {a: {"proc.cpu_user_s": 2.0}, b: {"proc.cpu_user_s": 7.0}})
    cur = _r(1, {a: {"proc.cpu_user_s": 2.5}, b_reused: {"proc.cpu_user_s": 0.25}}, rss=20)
    d = ProcTreeReader.delta(prev, cur)
    # a: +0.5; b exited (its last partial interval is lost, never negative);
    # the reused PID 11 is a new process: counted from zero.
    assert d["proc.cpu_user_s"] == pytest.approx(0.75)
    assert d["proc.rss_mb"] == 20 and d["proc.threads"] == 3
    assert d["proc.read_bytes"] == 0


def test_first_reading_gives_zero_counts():
    cur = _r(1, {(10, 1.0): {"proc.cpu_user_s": 100.0}})
    assert ProcTreeReader.delta(None, cur)["proc.cpu_user_s"] == 0


def test_real_tree_with_a_child_and_io(tmp_path):
    code = ("import os, subprocess, sys, time\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
            "print(c.pid, flush=True)\n"
            f"f = open({str(tmp_path / 'out.bin')!r}, 'wb')\n"
            "sys.stdin.readline()\n"
            "f.write(os.urandom(1 << 20)); f.flush()\n"
            "t = time.time()\n"
            "while time.time() - t < 0.3: pass\n"
            "print('done', flush=True)\n"
            "sys.stdin.readline(); c.kill(); c.wait()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        child = int(p.stdout.readline())
        assert tree_pids([p.pid]) == sorted([p.pid, child])
        reader = ProcTreeReader([p.pid])
        before = reader.read()
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "done"
        d = ProcTreeReader.delta(before, reader.read())
        assert d["proc.processes"] == 2 and d["proc.threads"] >= 2
        assert d["proc.write_chars"] >= 1 << 20
        assert d["proc.cpu_user_s"] + d["proc.cpu_system_s"] > 0.05
        assert d["proc.rss_mb"] > 5
        assert d["proc.minor_faults"] > 0  # the 1 MiB buffer was touched
    finally:
        if p.poll() is None:
            p.stdin.write("end\n")
            p.stdin.flush()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_cpus_gauge_is_the_trees_affinity():
    """proc.cpus: the CPUs the trial may run on (a packed trial's share), a gauge."""
    import os

    cpus = sorted(os.sched_getaffinity(0))
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                         preexec_fn=lambda: os.sched_setaffinity(0, {cpus[0]}))
    try:
        d = ProcTreeReader.delta(None, ProcTreeReader([p.pid]).read())
        assert d["proc.cpus"] == 1
        assert ProcTreeReader([os.getpid()]).read().gauges["proc.cpus"] == len(cpus)
    finally:
        p.kill()  # our own child, by its handle
        p.wait()
