"""System control: how pipetune changes a running trial's cores, CPU time,
memory and GPU power in place (DESIGN §10).

- :func:`detect_controller` — the factory: cgroup v2 / v1 when writable, else
  the CPU-affinity fallback (and it says why), or the dry run.
- :class:`Controller` and its backends :class:`CgroupV1Controller`,
  :class:`CgroupV2Controller`, :class:`AffinityController`,
  :class:`DryRunController`; :class:`TrialHandle`, :class:`Applied`,
  :class:`Usage`.
- :func:`detect_cgroups`, :func:`cgroups_writable` — host probing (doctor).
- :class:`NodeAllocator` — disjoint cpusets for concurrent trials;
  :class:`SharedNodeAllocator` — the same across the trial processes of a
  node without a daemon; :class:`AllocatingController` — a controller whose
  CPUs come from one of them.
- :func:`sync_threads`, :func:`cores_in_force` — in-trial thread count.
- GPU: :func:`visible_devices_env`, :class:`GpuAllocator`,
  :func:`power_limit_knob` / :class:`NvmlPowerLimit`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from pipetune.control.affinity import AffinityController
from pipetune.control.allocator import Allocation, CpuTopo, NodeAllocator, read_topology
from pipetune.control.base import (
    Applied,
    ControlInputError,
    Controller,
    TrialHandle,
    Usage,
    format_cpus,
    group_name,
    parse_cpus,
)
from pipetune.control.cgroup_v1 import CgroupV1Controller
from pipetune.control.cgroup_v2 import CgroupV2Controller
from pipetune.control.cgroupfs import CgroupFs, CgroupInfo, detect_cgroups, own_cgroups
from pipetune.control.dryrun import DryRunController
from pipetune.control.gpu import (
    GpuAllocator,
    NoPowerLimit,
    NvmlPowerLimit,
    PowerLimitKnob,
    parse_visible_devices,
    power_limit_knob,
    visible_devices_env,
)
from pipetune.control.node import AllocatingController, SharedNodeAllocator
from pipetune.control.threads import cores_in_force, sync_threads
from pipetune.errors import ConfigError, ControlError, PipetuneError, PrivilegeError

__all__ = [
    "AffinityController", "AllocatingController", "Allocation", "Applied", "CgroupFs", "CgroupInfo",
    "CgroupV1Controller", "CgroupV2Controller", "ControlInputError", "Controller", "CpuTopo",
    "DryRunController", "GpuAllocator",
    "NoPowerLimit", "NodeAllocator", "NvmlPowerLimit", "PowerLimitKnob", "SharedNodeAllocator",
    "TrialHandle", "Usage",
    "cgroup_controller", "cgroups_writable", "cores_in_force", "detect_cgroups",
    "detect_controller", "format_cpus", "own_cgroups",
    "parse_cpus", "parse_visible_devices", "power_limit_knob", "read_topology", "sync_threads",
    "visible_devices_env",
]

log = logging.getLogger(__name__)

KINDS = ("auto", "cgroup", "affinity", "dry-run")
_SYS = "/sys/fs/cgroup"


def _rebase(mount: Path, cgroup_root: Path) -> Path:
    if Path(cgroup_root) != Path(_SYS) and str(mount).startswith(_SYS):
        return Path(cgroup_root) / Path(mount).relative_to(_SYS)
    return mount


def cgroup_controller(*, cgroup_root: Path = Path(_SYS),
                      mountinfo: str | Path = "/proc/self/mountinfo",
                      proc_cgroup: str | Path = "/proc/self/cgroup",
                      fs: CgroupFs | None = None) -> CgroupV1Controller | CgroupV2Controller:
    """The cgroup backend this host's layout calls for (v1 controllers when
    mounted, else the unified hierarchy when it holds controllers), without
    checking that it is writable.  Raises ``ControlError`` when neither."""
    info = detect_cgroups(mountinfo)
    own = own_cgroups(proc_cgroup)
    if info.version in ("v1", "hybrid") and any(
        c in info.v1_mounts and c in own for c in ("cpuset", "cpu")
    ):
        return CgroupV1Controller.from_host(info, proc_cgroup=proc_cgroup,
                                            cgroup_root=cgroup_root, fs=fs)
    if info.unified is not None and "unified" in own:
        ctl = CgroupV2Controller(_rebase(info.unified, cgroup_root), own["unified"],
                                 mount_root=info.unified_root, fs=fs)
        if ctl.available_controllers():
            return ctl
        raise ControlError(f"cgroup v2 at {ctl.own_dir} offers no controllers to pipetune")
    raise ControlError(f"no usable cgroup hierarchy (cgroup version: {info.version})")


def cgroups_writable(**kwargs: object) -> bool | str:
    """``True`` when pipetune can really create and remove a trial group under
    the caller's own cgroup (it tries, in every hierarchy, then removes it);
    else the reason, as one line.  Takes :func:`cgroup_controller`'s
    arguments."""
    try:
        ctl = cgroup_controller(**kwargs)  # type: ignore[arg-type]
    except PipetuneError as e:
        return str(e)
    except OSError as e:
        return f"cannot read the cgroup layout: {e}"
    return _probe(ctl)


def _probe(ctl: CgroupV1Controller | CgroupV2Controller) -> bool | str:
    name = group_name("writable-probe")
    made: list[Path] = []
    try:
        for key in ctl.own_dirs:
            group = ctl._make_group(key, name)
            made.append(group)
            ctl._init_group(key, group)
        return True
    except PipetuneError as e:
        return f"{ctl.name}: {e}"
    finally:
        for group in reversed(made):
            try:
                ctl._empty_and_remove(group, group.parent.parent)
            except PipetuneError as e:  # pragma: no cover - we just made it empty
                log.error("could not remove probe group %s: %s", group, e)
        with contextlib.suppress(PipetuneError):
            ctl._remove_parents()


def detect_controller(kind: str = "auto", *, cgroup_root: Path = Path(_SYS),
                      mountinfo: str | Path = "/proc/self/mountinfo",
                      proc_cgroup: str | Path = "/proc/self/cgroup",
                      fs: CgroupFs | None = None) -> Controller:
    """The controller for ``kind``:

    - ``"cgroup"``: the cgroup backend; ``PrivilegeError``/``ControlError``
      when cgroups are missing or not writable;
    - ``"affinity"``: the CPU-affinity fallback; ``"dry-run"``: logs only;
    - ``"auto"``: ``"cgroup"`` when it works, else ``"affinity"``, logging why.
    """
    if kind not in KINDS:
        raise ConfigError(f"controller {kind!r}: expected one of {', '.join(KINDS)}")
    if kind == "dry-run":
        return DryRunController()
    if kind == "affinity":
        return AffinityController()
    try:
        ctl = cgroup_controller(cgroup_root=cgroup_root, mountinfo=mountinfo,
                                proc_cgroup=proc_cgroup, fs=fs)
        ok = _probe(ctl)
        if ok is not True:
            raise PrivilegeError(f"cgroups not writable: {ok}")
    except (ControlError, OSError) as e:
        if kind == "cgroup":
            if isinstance(e, PipetuneError):  # PrivilegeError is an OSError too
                raise
            raise ControlError(f"cannot read the cgroup layout: {e}") from e
        log.warning("cgroups unusable (%s): falling back to CPU affinity "
                    "(no CPU quota, no memory limit)", e)
        fallback = AffinityController()
        fallback.degraded = (f"cgroups unusable ({e}): CPU affinity only, "
                             "no CPU quota, no memory limit")
        return fallback
    log.info("controller: %s", ctl.describe())
    return ctl
