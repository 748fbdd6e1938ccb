"""Helpers for the control tests: helper-process snippets, /proc readers, the
leftover-cgroup scan and a fake cgroup v2 filesystem (:class:`FakeCgroupV2Fs`).
Fixtures using them are in conftest.py."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

from pipetune.control import (
    CgroupFs,
    CgroupV1Controller,
    cgroup_controller,
)
from pipetune.control.base import PARENT_NAME

# -- processes ------------------------------------------------------------------

BUSY = """
import sys, threading, time
n = int(sys.argv[1]) if len(sys.argv) > 1 else 1
def spin():
    while True:
        pass
for _ in range(n - 1):
    threading.Thread(target=spin, daemon=True).start()
print("ready", flush=True)
spin()
"""

SLEEPER = """
import sys, threading, time
n = int(sys.argv[1]) if len(sys.argv) > 1 else 1
for _ in range(n - 1):
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
print("ready", flush=True)
time.sleep(600)
"""


class Spawner:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def __call__(self, code: str, *args: str, wait_ready: bool = True) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                             stdin=subprocess.PIPE, text=True)
        self.procs.append(p)
        if wait_ready:
            line = p.stdout.readline()
            assert line.strip() == "ready", f"helper did not start: {line!r}"
        return p

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()  # by PID: only what this fixture started
            p.wait()
            for f in (p.stdout, p.stdin):
                if f:
                    f.close()




def cpu_s_of(pid: int) -> float:
    """utime + stime of a live process, from /proc (independent of cgroups)."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpus_allowed_list(tid: int, pid: int | None = None) -> str:
    path = f"/proc/{pid}/task/{tid}/status" if pid else f"/proc/{tid}/status"
    for line in Path(path).read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split()[1]
    raise AssertionError("no Cpus_allowed_list")


# -- leftover check --------------------------------------------------------------

HOST_DIRS: dict[str, Path] = {}
try:
    _host = cgroup_controller()
    if isinstance(_host, CgroupV1Controller):
        HOST_DIRS = dict(_host.own_dirs)
except Exception:  # no cgroups here: nothing to check
    pass


def pipetune_groups() -> set[tuple[str, str]]:
    out = set()
    for key, own in HOST_DIRS.items():
        parent = own / PARENT_NAME
        if parent.is_dir():
            out |= {(key, p.name) for p in parent.iterdir() if p.is_dir()}
    return out




def _uptime_ticks() -> int:
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK"))




# -- fake cgroup v2 --------------------------------------------------------------

V2_FILES = {
    "cgroup.procs": "",
    "cgroup.controllers": "cpuset cpu memory\n",
    "cgroup.subtree_control": "\n",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cpuset.cpus": "\n",
    "cpuset.mems": "\n",
    "cpuset.cpus.effective": "0-1\n",
    "cpu.max": "max 100000\n",
    "cpu.weight": "100\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\n"
                "nr_throttled 0\nthrottled_usec 0\n",
    "memory.current": "0\n",
    "memory.peak": "0\n",
    "memory.max": "max\n",
    "memory.high": "max\n",
    "memory.swap.max": "max\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
}


class FakeCgroupV2Fs(CgroupFs):
    """A plain directory tree that behaves like cgroup2 where pipetune can
    tell: mkdir makes the interface files, rmdir refuses a populated group
    (EBUSY) and removes the files, a PID written to ``cgroup.procs`` leaves
    every other group, ``subtree_control`` takes ``+ctrl``/``-ctrl``, and
    ``cpuset.cpus`` outside the parent's CPUs is refused (EINVAL).
    ``fail_on``: file names whose write fails (EIO), to test rollback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fail_on: set[str] = set()
        root.mkdir(parents=True, exist_ok=True)
        self._populate(root)
        (root / "cgroup.controllers").write_text("cpuset cpu memory\n")

    def _populate(self, d: Path) -> None:
        for name, text in V2_FILES.items():
            (d / name).write_text(text)

    def mkdir(self, path: Path) -> bool:
        existed = path.exists()
        ok = super().mkdir(path)
        if ok and not existed:
            self._populate(path)
            eff = (path.parent / "cpuset.cpus.effective").read_text()
            (path / "cpuset.cpus.effective").write_text(eff)
        return ok

    def rmdir(self, path: Path) -> bool:
        if not path.exists():
            return False
        if (path / "cgroup.procs").read_text().split() or any(p.is_dir() for p in path.iterdir()):
            raise self._error("remove", path, OSError(errno.EBUSY, os.strerror(errno.EBUSY)))
        for f in path.iterdir():
            f.unlink()
        return super().rmdir(path)

    def write(self, path: Path, value: str) -> None:
        if path.name in self.fail_on:
            raise self._error("write to", path, OSError(errno.EIO, os.strerror(errno.EIO)))
        if not path.exists():
            raise self._error("open", path, OSError(errno.ENOENT, os.strerror(errno.ENOENT)))
        if path.name == "cgroup.procs":
            pid = value.strip()
            if not Path(f"/proc/{pid}").exists():
                raise self._error("write to", path, OSError(errno.ESRCH, "No such process"))
            for procs in self.root.rglob("cgroup.procs"):
                pids = [p for p in procs.read_text().split() if p != pid]
                procs.write_text("".join(f"{p}\n" for p in pids))
            with open(path, "a") as f:
                f.write(f"{pid}\n")
            return
        if path.name == "cgroup.subtree_control":
            on = set(path.read_text().split())
            for tok in value.split():
                (on.add if tok[0] == "+" else on.discard)(tok[1:])
            path.write_text(" ".join(sorted(on)) + "\n")
            return
        if path.name == "cpuset.cpus" and value.strip():
            from pipetune.control import parse_cpus

            allowed = set(parse_cpus((path.parent.parent / "cpuset.cpus.effective").read_text()))
            if not set(parse_cpus(value)) <= allowed:
                raise self._error(f"write {value.strip()!r} to", path,
                                  OSError(errno.EINVAL, os.strerror(errno.EINVAL)))
        super().write(path, value)




def wait_for(pred, timeout_s: float = 5.0, step_s: float = 0.02) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step_s)
    return pred()
