"""cgroup v2 (unified) backend.

:class:`CgroupV2Controller` writes ``cpuset.cpus``, ``cpu.max`` and
``memory.max`` / ``memory.high`` of one directory per trial and reads
``cpu.stat``, ``memory.current``, ``memory.peak`` and ``memory.events``.

v2 rules it follows:

* controllers reach a child only when listed in its parent's
  ``cgroup.subtree_control``, and a non-root group holding processes may not
  enable any ("no internal processes").  pipetune enables ``cpu cpuset
  memory`` in the caller's own cgroup and in its ``pipetune`` parent; when
  the kernel refuses because the caller's cgroup holds processes, the error
  says how to get a delegated cgroup.
* ``memory.high`` is the soft step below ``memory.max``: past it the kernel
  throttles and reclaims the group instead of killing it, so a too-small
  limit shows as pressure (``memory.events`` ``high``) before it shows as an
  OOM kill.  pipetune sets it to :data:`HIGH_FRACTION` of the limit.
"""

from __future__ import annotations

import errno
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
from pipetune.control.cgroupfs import CgroupFs, hierarchy_dir, own_cgroups
from pipetune.errors import ControlError, PipetuneError
from pipetune.types import SystemConfig

log = logging.getLogger(__name__)

#: memory.high as a share of memory.max.
HIGH_FRACTION = 0.9
_PERIOD_US = 100_000
_MIN_QUOTA_US = 1_000
_CONTROLLERS = ("cpu", "cpuset", "memory")


class CgroupV2Controller(CgroupController):
    """Trial limits through the unified hierarchy.

    ``cgroup_root``: where cgroup2 is mounted; ``own_path``: the caller's
    cgroup inside it (from ``/proc/self/cgroup`` line ``0::PATH`` when not
    given).
    """

    name = "cgroup-v2"

    def __init__(self, cgroup_root: Path = Path("/sys/fs/cgroup"), own_path: str | None = None,
                 *, mount_root: str = "/", fs: CgroupFs | None = None) -> None:
        self.cgroup_root = Path(cgroup_root)
        if own_path is None:
            own_path = own_cgroups().get("unified")
            if own_path is None:
                raise ControlError("cgroup-v2: /proc/self/cgroup has no unified (0::) line")
        self.own_path = own_path
        super().__init__({"unified": hierarchy_dir(self.cgroup_root, mount_root, own_path)},
                         fs=fs)
        self.own_dir = self.own_dirs["unified"]
        self._peak_seen: dict[str, float] = {}

    def describe(self) -> str:
        return f"{self.name} ({self.own_dir})"

    # -- hooks -----------------------------------------------------------------

    def available_controllers(self) -> list[str]:
        """The controllers pipetune uses that this hierarchy offers here."""
        have = self.fs.read_or(self.own_dir / "cgroup.controllers").split()
        return [c for c in _CONTROLLERS if c in have]

    def _enable(self, group: Path, wanted: Sequence[str]) -> None:
        on = set(self.fs.read_or(group / "cgroup.subtree_control").split())
        missing = [c for c in wanted if c not in on]
        if not missing:
            return
        try:
            self.fs.write(group / "cgroup.subtree_control",
                          " ".join(f"+{c}" for c in missing) + "\n")
        except PipetuneError as e:
            if getattr(e, "os_errno", None) == errno.EBUSY:
                raise ControlError(
                    f"cgroup-v2: cannot enable {' '.join(missing)} below {group}: it holds "
                    "processes (v2 'no internal processes' rule); start pipetune in a "
                    "delegated cgroup (systemd-run --user --scope -p Delegate=yes) or use "
                    "--controller affinity"
                ) from e
            raise

    def _init_parent(self, key: str, parent: Path) -> None:
        wanted = self.available_controllers()
        if not wanted:
            raise ControlError(f"cgroup-v2: no cpu/cpuset/memory controller in {self.own_dir}")
        self._enable(self.own_dir, wanted)
        self._enable(parent, wanted)
        if "cpu" in wanted:
            # As in v1: the parent competes as one entity; weigh it like one
            # busy task per CPU (cpu.weight 100 = one task).
            try:
                self.fs.write(parent / "cpu.weight",
                              f"{min(10000, 100 * len(self.allowed_cpus()))}\n")
            except PipetuneError as e:
                log.debug("cgroup-v2: cpu.weight of %s not set: %s", parent, e)

    # -- apply -----------------------------------------------------------------

    def allowed_cpus(self) -> list[int]:
        for d in (self.parent_dir("unified"), self.own_dir):
            text = self.fs.read_or(d / "cpuset.cpus.effective").strip()
            if text:
                return parse_cpus(text)
        return super().allowed_cpus()

    def _plan(self, handle: TrialHandle, config: SystemConfig, cpus: Sequence[int] | None,
              cpu_quota: float | None) -> tuple[list[tuple[Path, str]], Applied]:
        g = self.group_dir(handle, "unified")
        fs = self.fs
        writes: list[tuple[Path, str]] = []
        skipped: dict[str, str] = {}
        current = parse_cpus(fs.read_or(g / "cpuset.cpus"))
        chosen = self._check_cpus(config, cpus, current, self.allowed_cpus())
        if fs.exists(g / "cpuset.cpus"):
            writes.append((g / "cpuset.cpus", format_cpus(chosen) + "\n"))
        else:
            skipped["cores"] = "cpuset controller not enabled"

        quota = self._check_quota(cpu_quota, len(chosen))
        if fs.exists(g / "cpu.max"):
            parts = fs.read(g / "cpu.max").split()
            period = int(parts[1]) if len(parts) == 2 and parts[1].isdigit() else _PERIOD_US
            value = "max" if quota is None else str(max(_MIN_QUOTA_US, round(quota * period)))
            writes.append((g / "cpu.max", f"{value} {period}\n"))
            if fs.exists(g / "cpu.weight"):
                writes.append((g / "cpu.weight", f"{min(10000, 100 * len(chosen))}\n"))
        elif quota is not None:
            skipped["cpu_quota"] = "cpu controller not enabled"

        if fs.exists(g / "memory.max"):
            writes.extend(self._memory_writes(g, config.memory_mb))
        elif config.memory_mb is not None:
            skipped["memory_mb"] = "memory controller not enabled"
        if config.gpus:
            skipped["gpus"] = "GPU visibility is fixed when a process starts"
        return writes, Applied(handle.trial_id, self.name, config, chosen, quota,
                               config.memory_mb, skipped)

    def _memory_writes(self, g: Path, memory_mb: int | None) -> list[tuple[Path, str]]:
        swap = g / "memory.swap.max"
        if memory_mb is None:
            out = [(g / "memory.max", "max\n"), (g / "memory.high", "max\n")]
            if self.fs.exists(swap):
                out.append((swap, "max\n"))
            return out
        new = memory_mb * MB
        used = int(self.fs.read(g / "memory.current").strip() or 0)
        if new < used:
            raise ControlInputError(
                f"memory limit {memory_mb} MB is below the trial's current usage "
                f"{used / MB:.0f} MB"
            )
        high = int(new * HIGH_FRACTION)
        # Keep high <= max at every moment: when lowering, high goes first.
        old_max = self.fs.read(g / "memory.max").strip()
        lowering = old_max == "max" or new < int(old_max)
        pair = [(g / "memory.high", f"{high}\n"), (g / "memory.max", f"{new}\n")]
        out = pair if lowering else pair[::-1]
        if self.fs.exists(swap):
            # A limit means RAM: do not let the trial swap past it.
            out.append((swap, "0\n"))
        return out

    # -- reading -----------------------------------------------------------------

    def limits(self, handle: TrialHandle) -> dict[str, object]:
        """The limits in force now, read back from the files."""
        with self._lock:
            self._require_open(handle)
            g = self.group_dir(handle, "unified")
            out: dict[str, object] = {"cpus": (), "cpu_quota": None, "memory_mb": None}
            if self.fs.exists(g / "cpuset.cpus"):
                out["cpus"] = tuple(parse_cpus(self.fs.read(g / "cpuset.cpus")))
            if self.fs.exists(g / "cpu.max"):
                q, period = self.fs.read(g / "cpu.max").split()
                out["cpu_quota"] = None if q == "max" else int(q) / int(period)
            if self.fs.exists(g / "memory.max"):
                m = self.fs.read(g / "memory.max").strip()
                out["memory_mb"] = None if m == "max" else int(m) // MB
            return out

    def usage(self, handle: TrialHandle) -> Usage:
        with self._lock:
            self._require_open(handle)
            g = self.group_dir(handle, "unified")
            fs = self.fs
            stat = _kv(fs.read_or(g / "cpu.stat"))
            cur = int(fs.read_or(g / "memory.current", "0").strip() or 0) / MB
            peak_text = fs.read_or(g / "memory.peak").strip()
            # memory.peak exists since Linux 5.19; before, keep the max we saw.
            seen = max(self._peak_seen.get(handle.group, 0.0), cur)
            self._peak_seen[handle.group] = seen
            peak = int(peak_text) / MB if peak_text.isdigit() else seen
            events = _kv(fs.read_or(g / "memory.events"))
            return Usage(
                cpu_s=stat.get("usage_usec", 0) / 1e6,
                memory_current_mb=cur,
                memory_peak_mb=max(peak, cur),
                throttled_s=stat.get("throttled_usec", 0) / 1e6,
                throttled_periods=stat.get("nr_throttled", 0),
                oom_kills=events.get("oom_kill", 0),
                limit_hits=events.get("max", 0) + events.get("high", 0),
                under_oom=False,
            )

    def close_trial(self, handle: TrialHandle) -> None:
        super().close_trial(handle)
        self._peak_seen.pop(handle.group, None)


def _kv(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out
