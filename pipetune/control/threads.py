"""In-trial thread sync: the trial's thread count follows the cores in force.

A cpuset of 2 CPUs with torch still running 16 intra-op threads wastes time
in contention; after a cpuset grows, torch keeps its old count.  The
controller cannot fix that from outside: ``torch.set_num_threads`` acts on
the calling thread's OpenMP pool, so the *training* thread must call
:func:`sync_threads` at an epoch or step boundary.

- :func:`cores_in_force` — how many cores this process may use now: its CPU
  affinity (which a cpuset narrows) and, where a CPU quota is set on its
  cgroup, ``ceil(quota)``.
- :func:`sync_threads` — set torch's intra-op threads to that (or to a
  given count); inter-op threads too, on the first call only, because torch
  accepts that setting once and only before inter-op work has started.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path

from pipetune.errors import ConfigError

log = logging.getLogger(__name__)

_interop_lock = threading.Lock()
_interop_tried = False


def _own_quota_cpus(proc_cgroup: Path, cgroup_root: Path) -> float | None:
    """CPU quota (in CPUs) of the caller's cgroup, v1 or v2; ``None`` if none."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hier, ctrls, path = (line.split(":", 2) + ["", ""])[:3]
        rel = path.lstrip("/")
        if "cpu" in ctrls.split(","):
            for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                d = cgroup_root / mount / rel
                try:
                    q = int((d / "cpu.cfs_quota_us").read_text())
                    p = int((d / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                return None if q < 0 else q / p
        if hier == "0" and ctrls == "":
            try:
                q, p = (cgroup_root / rel / "cpu.max").read_text().split()
            except (OSError, ValueError):
                continue
            return None if q == "max" else int(q) / int(p)
    return None


def cores_in_force(*, proc_cgroup: Path = Path("/proc/self/cgroup"),
                   cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """How many cores the calling process may use now (at least 1)."""
    n = len(os.sched_getaffinity(0))
    quota = _own_quota_cpus(proc_cgroup, cgroup_root)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return max(1, n)


def sync_threads(cores: int | None = None) -> int:
    """Make torch's thread count follow ``cores`` (default:
    :func:`cores_in_force`).  Call it in the training thread at an epoch or
    step boundary.  Returns the count now set.

    Never raises for torch trouble (training must not fail because of
    pipetune): a torch that cannot change inter-op threads any more is left
    as it is and logged at DEBUG.  Raises ``ConfigError`` for ``cores < 1``.
    """
    global _interop_tried
    if cores is None:
        cores = cores_in_force()
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise ConfigError(f"cores={cores!r}: must be an integer >= 1")
    import torch

    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
        log.info("torch intra-op threads set to %d", cores)
    with _interop_lock:
        if not _interop_tried:
            _interop_tried = True
            try:
                if torch.get_num_interop_threads() != cores:
                    torch.set_num_interop_threads(cores)
            except RuntimeError as e:
                # Too late: inter-op work already ran in this process.
                log.debug("torch inter-op threads left as they are: %s", e)
    return torch.get_num_threads()
