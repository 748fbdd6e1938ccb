"""Finding the cgroup hierarchies and talking to cgroupfs.

- :func:`detect_cgroups` — which cgroup version this host runs (v1, v2,
  hybrid, none) and where each controller is mounted, from
  ``/proc/self/mountinfo``.
- :func:`own_cgroups` — the caller's own cgroup per hierarchy, from
  ``/proc/self/cgroup``: pipetune's parent group is made inside it.
- :class:`CgroupFs` — the few file operations the cgroup backends need,
  translated once into pipetune errors.  Tests give the v2 backend a fake one
  over a plain directory tree.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipetune.errors import ControlError, PrivilegeError

log = logging.getLogger(__name__)

#: The controllers pipetune uses.
WANTED = ("cpu", "cpuacct", "cpuset", "memory")


@dataclass(frozen=True)
class CgroupInfo:
    """The cgroup layout of this host.

    ``version``: ``"v1"`` (only v1 controller mounts), ``"v2"`` (only a
    unified mount), ``"hybrid"`` (both: v1 controllers plus a cgroup2 mount,
    which may or may not hold controllers) or ``"none"``.  ``v1_mounts`` maps
    each v1 controller to its mount point; ``v1_roots`` to the mount's root
    inside the hierarchy (not ``/`` inside some containers).  ``unified`` is
    the cgroup2 mount point (``None`` without one), ``unified_root`` its root.
    """

    version: str
    v1_mounts: dict[str, Path] = field(default_factory=dict)
    v1_roots: dict[str, str] = field(default_factory=dict)
    unified: Path | None = None
    unified_root: str = "/"
    read_only: tuple[str, ...] = ()

    def effective_version(self) -> str:
        """The version pipetune controls with: a "hybrid" host whose cgroup2
        mount offers none of cpu, cpuset, memory (systemd's usual layout) is
        a v1 host for every knob pipetune turns."""
        if self.version != "hybrid" or self.unified is None:
            return self.version
        try:
            offered = (self.unified / "cgroup.controllers").read_text().split()
        except OSError:
            return "v1"
        return "hybrid" if {"cpu", "cpuset", "memory"} & set(offered) else "v1"

    @property
    def mounts(self) -> dict[str, Path]:
        """Mount point per controller (v1 ones, plus ``"unified"``)."""
        out = dict(self.v1_mounts)
        if self.unified is not None:
            out["unified"] = self.unified
        return out


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return (s.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\134", "\\"))


def detect_cgroups(mountinfo: str | Path = "/proc/self/mountinfo") -> CgroupInfo:
    """Read the cgroup mounts from ``mountinfo`` (a path, or its text when it
    holds a newline).

    Raises nothing for a host without cgroups: ``version`` is ``"none"``.
    """
    text = str(mountinfo)
    if "\n" not in text:
        try:
            text = Path(mountinfo).read_text()
        except OSError as e:
            log.warning("cannot read %s (%s): assuming no cgroups", mountinfo, e)
            return CgroupInfo("none")
    v1_mounts: dict[str, Path] = {}
    v1_roots: dict[str, str] = {}
    unified: Path | None = None
    unified_root = "/"
    read_only: list[str] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 6 or len(rf) < 3:
            continue
        fstype, super_opts = rf[0], rf[2].split(",")
        root, mount_point, mount_opts = _unescape(lf[3]), Path(_unescape(lf[4])), lf[5]
        ro = "ro" in mount_opts.split(",")
        if fstype == "cgroup2":
            if unified is None:
                unified, unified_root = mount_point, root
                if ro:
                    read_only.append("unified")
        elif fstype == "cgroup":
            for opt in super_opts:
                if (opt in WANTED or opt.startswith("name=") or opt in (
                    "pids", "blkio", "devices", "freezer", "perf_event", "net_cls",
                    "net_prio", "hugetlb", "rdma", "misc",
                )) and opt not in v1_mounts:
                    v1_mounts[opt] = mount_point
                    v1_roots[opt] = root
                    if ro:
                        read_only.append(opt)
    has_v1 = any(c in v1_mounts for c in WANTED)
    if has_v1 and unified is not None:
        version = "hybrid"
    elif has_v1:
        version = "v1"
    elif unified is not None:
        version = "v2"
    else:
        version = "none"
    return CgroupInfo(version, v1_mounts, v1_roots, unified, unified_root, tuple(read_only))


def own_cgroups(proc_cgroup: str | Path = "/proc/self/cgroup") -> dict[str, str]:
    """The caller's cgroup path per v1 controller, and ``"unified"`` for the
    v2 hierarchy (``0::/path``)."""
    text = str(proc_cgroup)
    if "\n" not in text and ":" not in text:
        text = Path(proc_cgroup).read_text()
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            out["unified"] = path
            continue
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def hierarchy_dir(mount_point: Path, mount_root: str, cgroup_path: str) -> Path:
    """Where ``cgroup_path`` (from /proc/self/cgroup) is on disk under a
    mount whose root is ``mount_root``."""
    rel = cgroup_path
    if mount_root not in ("", "/") and (rel == mount_root or rel.startswith(mount_root + "/")):
        rel = rel[len(mount_root):]
    return mount_point / rel.lstrip("/")


class CgroupFs:
    """File operations on cgroupfs, each OS error translated into one
    pipetune error that names the file.

    Writes use one ``write()`` per value, as the kernel wants (a value split
    over two writes is two values).
    """

    def read(self, path: Path) -> str:
        try:
            return path.read_text()
        except OSError as e:
            raise self._error("read", path, e) from e

    def read_or(self, path: Path, default: str = "") -> str:
        try:
            return path.read_text()
        except OSError:
            return default

    def write(self, path: Path, value: str) -> None:
        try:
            # O_TRUNC as the shell's '>' does: cgroupfs ignores it, plain files need it.
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        except OSError as e:
            raise self._error("open", path, e) from e
        try:
            os.write(fd, value.encode())
        except OSError as e:
            raise self._error(f"write {value.strip()!r} to", path, e) from e
        finally:
            os.close(fd)

    def mkdir(self, path: Path) -> bool:
        """Create ``path``; ``False`` when it already existed."""
        try:
            path.mkdir()
            return True
        except FileExistsError:
            return False
        except OSError as e:
            raise self._error("create", path, e) from e

    def rmdir(self, path: Path) -> bool:
        """Remove group ``path``; ``False`` when it was already gone."""
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            raise self._error("remove", path, e) from e

    def exists(self, path: Path) -> bool:
        return path.exists()

    def listdirs(self, path: Path) -> list[str]:
        try:
            return sorted(p.name for p in path.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        except OSError as e:
            raise self._error("list", path, e) from e

    def pids(self, group: Path) -> list[int]:
        """Processes in ``group`` (its ``cgroup.procs``)."""
        text = self.read_or(group / "cgroup.procs")
        return [int(x) for x in text.split() if x.strip().isdigit()]

    @staticmethod
    def _error(what: str, path: Path, e: OSError) -> ControlError:
        """The pipetune error for ``e``; ``os_errno`` keeps the OS's code for
        callers that explain particular ones (EBUSY in v2)."""
        err: ControlError
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            err = PrivilegeError(f"cannot {what} {path}: {e.strerror}")
        else:
            err = ControlError(f"cannot {what} {path}: {e.strerror or e}")
        err.os_errno = e.errno  # type: ignore[attr-defined]
        return err
