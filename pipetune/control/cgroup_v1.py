"""cgroup v1 backend: one directory per controller hierarchy.

:class:`CgroupV1Controller` uses ``cpuset`` (cores), ``cpu`` (CFS quota),
``cpuacct`` (CPU time) and ``memory`` (limit, usage, OOM kills), each mounted
on its own hierarchy or co-mounted (``cpu,cpuacct``).  v1 rules it follows:

* a new cpuset group has empty ``cpuset.cpus``/``cpuset.mems`` and refuses
  tasks until both are written: pipetune writes them (copied from the parent)
  before moving any process in, and does the same for its ``pipetune`` parent;
* ``memory.limit_in_bytes`` may never exceed ``memory.memsw.limit_in_bytes``:
  when lowering it goes first, when raising ``memsw`` goes first;
* existing memory charges move with a process only when
  ``memory.move_charge_at_immigrate`` is set, so it is set (best effort)
  before the move.  Linux 6.x dropped that (EINVAL): memory a process held
  before joining stays charged to its old group and a limit only counts what
  it allocates afterwards; a limit below the processes' resident memory is
  still refused (checked against /proc).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pipetune.control._cgroup import CgroupController
from pipetune.control.base import (
    MB,
    Applied,
    ControlInputError,
    TrialHandle,
    Usage,
    format_cpus,
    parse_cpus,
)
from pipetune.control.cgroupfs import (
    WANTED,
    CgroupFs,
    CgroupInfo,
    detect_cgroups,
    hierarchy_dir,
    own_cgroups,
)
from pipetune.errors import ControlError, PipetuneError
from pipetune.types import SystemConfig

log = logging.getLogger(__name__)

_PERIOD_US = 100_000
_MIN_QUOTA_US = 1_000  # the kernel refuses less than 1 ms per period
_SHARES = 1024  # cpu.shares of one task


class CgroupV1Controller(CgroupController):
    """Trial limits through cgroup v1.

    ``controller_dirs`` maps each controller (``cpu``, ``cpuacct``,
    ``cpuset``, ``memory``) to the caller's own cgroup directory in that
    controller's hierarchy; co-mounted controllers share one.  Build it with
    :meth:`from_host` unless a test gives its own tree.
    """

    name = "cgroup-v1"

    def __init__(self, controller_dirs: dict[str, Path], *, fs: CgroupFs | None = None) -> None:
        self.controller_dirs = {c: Path(p) for c, p in controller_dirs.items()}
        if "cpuset" not in self.controller_dirs and "cpu" not in self.controller_dirs:
            raise ControlError("cgroup-v1: neither the cpuset nor the cpu controller is mounted")
        # One key per hierarchy (co-mounted controllers share a directory).
        own: dict[str, Path] = {}
        for c, d in self.controller_dirs.items():
            if d not in own.values():
                own[c] = d
        self._key_of = {c: next(k for k, d in own.items() if d == cd)
                        for c, cd in self.controller_dirs.items()}
        super().__init__(own, fs=fs)
        self._seen_mb: dict[str, float] = {}

    @classmethod
    def from_host(cls, info: CgroupInfo | None = None, *,
                  proc_cgroup: str | Path = "/proc/self/cgroup",
                  cgroup_root: Path | None = None,
                  fs: CgroupFs | None = None) -> CgroupV1Controller:
        """Build from this host's mounts and the caller's own cgroups.
        ``cgroup_root`` re-bases mount points found under ``/sys/fs/cgroup``."""
        info = info or detect_cgroups()
        own = own_cgroups(proc_cgroup)
        dirs: dict[str, Path] = {}
        for c in WANTED:
            if c in info.v1_mounts and c in own:
                mount = info.v1_mounts[c]
                if cgroup_root is not None and str(mount).startswith("/sys/fs/cgroup"):
                    mount = Path(cgroup_root) / Path(mount).relative_to("/sys/fs/cgroup")
                dirs[c] = hierarchy_dir(mount, info.v1_roots.get(c, "/"), own[c])
        return cls(dirs, fs=fs)

    def describe(self) -> str:
        return f"{self.name} ({', '.join(f'{c}={d}' for c, d in self.controller_dirs.items())})"

    def _dir(self, handle: TrialHandle, controller: str) -> Path | None:
        if controller not in self._key_of:
            return None
        return self.group_dir(handle, self._key_of[controller])

    # -- hooks -----------------------------------------------------------------

    def _copy_cpuset(self, src: Path, dst: Path) -> None:
        for f in ("cpuset.cpus", "cpuset.mems"):
            if not self.fs.read_or(dst / f).strip():
                value = (self.fs.read_or(src / f"cpuset.effective_{f[7:]}").strip()
                         or self.fs.read(src / f).strip())
                self.fs.write(dst / f, value + "\n")

    def _init_parent(self, key: str, parent: Path) -> None:
        if self._key_of.get("cpuset") == key:
            self._copy_cpuset(parent.parent, parent)
        if self._key_of.get("cpu") == key:
            # Under CFS group scheduling a group competes with its siblings as
            # ONE task of weight cpu.shares: at the default 1024 all trials
            # together would get the share of a single thread on a busy node.
            # Weigh the parent like one busy task per CPU it may use.
            self._set_shares(parent, len(self.allowed_cpus()))

    def _init_group(self, key: str, group: Path) -> None:
        if self._key_of.get("cpuset") == key:
            # cpuset.cpus and cpuset.mems before any task, or the move fails.
            self._copy_cpuset(group.parent, group)
        if self._key_of.get("memory") == key:
            try:
                self.fs.write(group / "memory.move_charge_at_immigrate", "3\n")
            except PipetuneError as e:
                log.debug("cgroup-v1: move_charge_at_immigrate not set: %s", e)

    def _set_shares(self, group: Path, cpus: int) -> None:
        try:
            self.fs.write(group / "cpu.shares", f"{_SHARES * max(1, cpus)}\n")
        except PipetuneError as e:
            log.debug("cgroup-v1: cpu.shares of %s not set: %s", group, e)

    # -- apply -----------------------------------------------------------------

    def allowed_cpus(self) -> list[int]:
        if "cpuset" in self._key_of:
            own = self.controller_dirs["cpuset"]
            text = (self.fs.read_or(own / "cpuset.effective_cpus").strip()
                    or self.fs.read_or(own / "cpuset.cpus").strip())
            if text:
                return parse_cpus(text)
        return super().allowed_cpus()

    def _plan(self, handle: TrialHandle, config: SystemConfig, cpus: Sequence[int] | None,
              cpu_quota: float | None) -> tuple[list[tuple[Path, str]], Applied]:
        writes: list[tuple[Path, str]] = []
        skipped: dict[str, str] = {}
        cs = self._dir(handle, "cpuset")
        current = parse_cpus(self.fs.read_or(cs / "cpuset.cpus")) if cs else []
        chosen = self._check_cpus(config, cpus, current, self.allowed_cpus())
        if cs is not None:
            writes.append((cs / "cpuset.cpus", format_cpus(chosen) + "\n"))
        else:
            skipped["cores"] = "no cpuset controller mounted"

        quota = self._check_quota(cpu_quota, len(chosen))
        cpu = self._dir(handle, "cpu")
        if cpu is not None:
            period = int(self.fs.read_or(cpu / "cpu.cfs_period_us", str(_PERIOD_US)).strip()
                         or _PERIOD_US)
            quota_us = -1 if quota is None else max(_MIN_QUOTA_US, round(quota * period))
            writes.append((cpu / "cpu.cfs_quota_us", f"{quota_us}\n"))
            # A trial of N cores competes like N busy tasks (see _init_parent).
            writes.append((cpu / "cpu.shares", f"{_SHARES * len(chosen)}\n"))
        elif quota is not None:
            skipped["cpu_quota"] = "no cpu controller mounted"

        mem = self._dir(handle, "memory")
        if mem is not None:
            writes.extend(self._memory_writes(mem, config.memory_mb, self._rss_bytes(mem)))
        elif config.memory_mb is not None:
            skipped["memory_mb"] = "no memory controller mounted"
        if config.gpus:
            skipped["gpus"] = "GPU visibility is fixed when a process starts"
        return writes, Applied(handle.trial_id, self.name, config, chosen, quota,
                               config.memory_mb, skipped)

    def _rss_bytes(self, mem: Path) -> int:
        """Resident memory of the group's processes from /proc.  Where the kernel
        cannot move charges (``move_charge_at_immigrate`` is gone since Linux
        6.x), memory a process held before it joined stays charged to its old
        group, so ``memory.usage_in_bytes`` alone would undercount it."""
        import psutil

        total = 0
        for pid in self.fs.pids(mem):
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
        return total

    def _memory_writes(self, mem: Path, memory_mb: int | None,
                       rss_bytes: int = 0) -> list[tuple[Path, str]]:
        limit = mem / "memory.limit_in_bytes"
        memsw = mem / "memory.memsw.limit_in_bytes"
        has_memsw = self.fs.exists(memsw)
        if memory_mb is None:
            new = -1
        else:
            new = memory_mb * MB
            used = max(rss_bytes, int(self.fs.read(mem / "memory.usage_in_bytes").strip() or 0))
            if new < used:
                raise ControlInputError(
                    f"memory limit {memory_mb} MB is below the trial's current usage "
                    f"{used / MB:.0f} MB"
                )
        old = int(self.fs.read(limit).strip() or -1)
        lowering = new != -1 and (old < 0 or new < old)
        value = f"{new}\n"
        if not has_memsw:
            return [(limit, value)]
        # limit_in_bytes <= memsw.limit_in_bytes at every moment.
        if lowering:
            return [(limit, value), (memsw, value)]
        return [(memsw, value), (limit, value)]

    # -- reading -----------------------------------------------------------------

    def limits(self, handle: TrialHandle) -> dict[str, object]:
        """The limits in force now, read back from the files."""
        with self._lock:
            self._require_open(handle)
            out: dict[str, object] = {"cpus": (), "cpu_quota": None, "memory_mb": None}
            cs = self._dir(handle, "cpuset")
            if cs is not None:
                out["cpus"] = tuple(parse_cpus(self.fs.read(cs / "cpuset.cpus")))
            cpu = self._dir(handle, "cpu")
            if cpu is not None:
                q = int(self.fs.read(cpu / "cpu.cfs_quota_us").strip())
                period = int(self.fs.read(cpu / "cpu.cfs_period_us").strip())
                out["cpu_quota"] = None if q < 0 else q / period
            mem = self._dir(handle, "memory")
            if mem is not None:
                b = int(self.fs.read(mem / "memory.limit_in_bytes").strip())
                out["memory_mb"] = None if b >= 1 << 62 else b // MB
            return out

    def usage(self, handle: TrialHandle) -> Usage:
        with self._lock:
            self._require_open(handle)
            fs = self.fs
            cpu_s = throttled_s = 0.0
            periods = oom = hits = 0
            cur = peak = 0.0
            under = False
            acct = self._dir(handle, "cpuacct")
            if acct is not None:
                cpu_s = int(fs.read(acct / "cpuacct.usage").strip() or 0) / 1e9
            cpu = self._dir(handle, "cpu")
            if cpu is not None:
                stat = _kv(fs.read_or(cpu / "cpu.stat"))
                periods = stat.get("nr_throttled", 0)
                throttled_s = stat.get("throttled_time", 0) / 1e9
            mem = self._dir(handle, "memory")
            if mem is not None:
                # What the processes hold counts even where it stayed charged
                # to their old group (see _rss_bytes).
                cur = max(int(fs.read(mem / "memory.usage_in_bytes").strip() or 0),
                          self._rss_bytes(mem)) / MB
                self._seen_mb[handle.group] = max(self._seen_mb.get(handle.group, 0.0), cur)
                peak = max(int(fs.read(mem / "memory.max_usage_in_bytes").strip() or 0) / MB,
                           self._seen_mb[handle.group])
                ctl = _kv(fs.read_or(mem / "memory.oom_control"))
                oom = ctl.get("oom_kill", 0)
                under = bool(ctl.get("under_oom", 0))
                hits = int(fs.read_or(mem / "memory.failcnt", "0").strip() or 0)
            return Usage(cpu_s, cur, max(peak, cur), throttled_s, periods, oom, hits, under)

    def close_trial(self, handle: TrialHandle) -> None:
        super().close_trial(handle)
        self._seen_mb.pop(handle.group, None)

    def cpu_s_per_cpu(self, handle: TrialHandle) -> list[float]:
        """CPU seconds the trial spent on each CPU (``cpuacct.usage_percpu``):
        shows where the scheduler actually ran it."""
        acct = self._dir(handle, "cpuacct")
        if acct is None:
            return []
        return [int(x) / 1e9 for x in self.fs.read(acct / "cpuacct.usage_percpu").split()]


def _kv(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out
