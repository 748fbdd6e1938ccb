"""The controller interface: how pipetune changes a running trial's system limits.

- :class:`Controller` — the ABC every backend implements (cgroup v1, cgroup v2,
  CPU affinity, dry run).
- :class:`TrialHandle` — what :meth:`Controller.open_trial` returns; the only
  way to refer to a trial's group afterwards.
- :class:`Applied` — what one :meth:`Controller.apply` put in force (and what
  it could not, with the reason).
- :class:`Usage` — what a trial has used so far (CPU seconds, memory, throttling,
  OOM kills).

A trial's processes — a pid and its descendants, start ticks — are
:mod:`pipetune.procs`'s; :func:`process_start_ticks` and
:func:`with_descendants` are imported here under the names the backends,
the node allocator and the daemon use.

Contract shared by every backend:

* Thread safe: the tuner thread, the daemon's request threads and the CLI may
  call one controller at the same time; each backend serialises its writes.
* ``apply`` is all or nothing: on any failure the limits that were in force
  before stay in force (backends roll back what they already wrote) and a
  :class:`~pipetune.errors.ControlError` (or ``PrivilegeError``) says why in
  one line.
* ``close_trial`` is idempotent and never kills anything: processes still alive
  go back to the group they came from with no pipetune limit.
* Units: CPU quota in CPUs' worth of time (``0.25`` = a quarter of one core,
  ``1.5`` = one and a half cores, like cgroup v2 ``cpu.max`` and
  ``docker --cpus``); memory in MB (2**20 bytes); times in seconds.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipetune.errors import ControlError, NotSupportedError, PrivilegeError
from pipetune.procs import process_start_ticks as process_start_ticks
from pipetune.procs import with_descendants as with_descendants
from pipetune.types import SystemConfig

log = logging.getLogger(__name__)

MB = 1024 * 1024

#: Name of the parent group pipetune creates inside the caller's own cgroup.
PARENT_NAME = "pipetune"

_SAFE_RE = re.compile(r"[^A-Za-z0-9_.-]")
# <safe trial id>@<owner pid>.<owner start time in clock ticks>
_GROUP_RE = re.compile(r"^(?P<trial>.+)@(?P<pid>\d+)\.(?P<start>\d+)$")


class ControlInputError(ControlError, ValueError):
    """A request the caller got wrong (too many cores, a memory limit below
    current usage, a PID that is gone): nothing was changed.

    Usage-like, so the CLI exits with 2 for it.
    """

    exit_code = 2


@dataclass(frozen=True)
class TrialHandle:
    """One open trial of one controller.

    ``group`` is the trial's group name (the same in every hierarchy);
    ``paths`` are its directories, one per cgroup hierarchy (empty for the
    affinity and dry-run controllers).
    """

    trial_id: str
    controller: str
    group: str
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Applied:
    """What one :meth:`Controller.apply` put in force.

    ``cpus`` are the CPUs the trial may run on, ``cpu_quota`` its CPU time cap
    in CPUs (``None``: no cap), ``memory_mb`` its memory limit (``None``: no
    limit).  ``skipped`` maps a knob to why this backend could not enforce it
    (the affinity fallback cannot cap memory, for example).
    """

    trial_id: str
    controller: str
    config: SystemConfig
    cpus: tuple[int, ...]
    cpu_quota: float | None
    memory_mb: int | None
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "controller": self.controller,
            "config": str(self.config),
            "cpus": list(self.cpus),
            "cpu_quota": self.cpu_quota,
            "memory_mb": self.memory_mb,
            "skipped": dict(self.skipped),
        }


@dataclass(frozen=True)
class Usage:
    """What a trial's group has used since it was opened.

    ``memory_peak_mb`` is the kernel's high-water mark where it keeps one;
    ``limit_hits`` counts how often the memory limit was reached (v1
    ``memory.failcnt``, v2 ``memory.events`` max + high): rising without an
    OOM kill means memory pressure.  ``under_oom`` is true while the group is
    stuck at its limit with the OOM killer disabled.
    """

    cpu_s: float = 0.0
    memory_current_mb: float = 0.0
    memory_peak_mb: float = 0.0
    throttled_s: float = 0.0
    throttled_periods: int = 0
    oom_kills: int = 0
    limit_hits: int = 0
    under_oom: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu_s": round(self.cpu_s, 6),
            "memory_current_mb": round(self.memory_current_mb, 3),
            "memory_peak_mb": round(self.memory_peak_mb, 3),
            "throttled_s": round(self.throttled_s, 6),
            "throttled_periods": self.throttled_periods,
            "oom_kills": self.oom_kills,
            "limit_hits": self.limit_hits,
            "under_oom": self.under_oom,
        }


class Controller(abc.ABC):
    """Applies system configs to running trials.  See the module docstring for
    the contract (thread safety, rollback, units).

    Subclasses implement the abstract methods; :meth:`allowed_cpus` has a
    default built on ``os.sched_getaffinity``; :meth:`members`,
    :meth:`limits` and :meth:`open_trials` are optional.
    """

    name: str = "abstract"
    #: What this controller cannot enforce that the one asked for could, and
    #: why ("" when nothing): set where a fallback was chosen, so a trial can
    #: say what it lost (``pt_degraded``, the trial record's ``degraded``).
    degraded: str = ""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    @abc.abstractmethod
    def open_trial(self, trial_id: str, pids: Sequence[int]) -> TrialHandle:
        """Create the trial's group and move every process in ``pids`` (with all
        their threads and their existing descendants) into it.  Processes they
        start later inherit the group.

        Raises ``ControlInputError`` for a PID that is gone or a trial that is
        already open, ``PrivilegeError`` when the caller may not do it.
        """

    @abc.abstractmethod
    def add_pids(self, handle: TrialHandle, pids: Sequence[int]) -> None:
        """Move more processes (and their threads and descendants) into an open
        trial (DDP ranks started later, a restarted worker)."""

    @abc.abstractmethod
    def apply(
        self,
        handle: TrialHandle,
        config: SystemConfig,
        *,
        cpus: Sequence[int] | None = None,
        cpu_quota: float | None = None,
        ) -> Applied:
        """Put ``config`` in force for the trial.

        ``cpus``: the exact CPUs (from a :class:`NodeAllocator`); must hold
        ``config.cores`` distinct CPUs.  Without it the backend keeps the
        trial's current CPUs when they are the right number, else takes the
        first ``config.cores`` CPUs it may use.  ``cpu_quota``: CPU time cap in
        CPUs (``None``: no cap).  ``config.memory_mb``: memory limit
        (``None``: none).  ``config.gpus`` is not a live knob (visibility is
        fixed at process start) and is only recorded.

        Raises ``ControlInputError`` (nothing written) or ``ControlError`` /
        ``PrivilegeError`` (anything written is rolled back).
        """

    @abc.abstractmethod
    def usage(self, handle: TrialHandle) -> Usage:
        """Read what the trial has used so far."""

    @abc.abstractmethod
    def close_trial(self, handle: TrialHandle) -> None:
        """Move survivors back where they came from and remove the group.
        Idempotent."""

    @abc.abstractmethod
    def cleanup_stale(self) -> int:
        """Remove groups left behind by pipetune processes that are gone
        (moving any process still in them back first); return how many."""

    def members(self, handle: TrialHandle) -> set[int]:
        """PIDs currently in the trial (default: none known)."""
        return set()

    def limits(self, handle: TrialHandle) -> dict[str, Any]:
        """The limits in force now, read back from where the backend keeps
        them: ``{"cpus": tuple, "cpu_quota": float | None, "memory_mb": int |
        None}``.  The daemon uses it to report and to restore on shutdown."""
        raise NotSupportedError(f"{self.name}: cannot read limits back")

    def open_trials(self) -> list[TrialHandle]:
        """Trials opened through this controller and not closed yet."""
        return []

    def allowed_cpus(self) -> list[int]:
        """CPUs a trial of this controller may be given."""
        return sorted(os.sched_getaffinity(0))

    def describe(self) -> str:
        """One line for logs and ``pipetune doctor``."""
        return self.name

    # -- helpers shared by the backends -------------------------------------

    def _check_cpus(self, config: SystemConfig, cpus: Sequence[int] | None,
                    current: Sequence[int], allowed: Sequence[int]) -> tuple[int, ...]:
        """Which CPUs ``config`` gets; ``ControlInputError`` when it cannot."""
        allowed_set = set(allowed)
        if config.cores > len(allowed_set):
            raise ControlInputError(
                f"config {config} needs {config.cores} cores; only {len(allowed_set)} "
                f"CPUs are available ({format_cpus(allowed)})"
            )
        if cpus is not None:
            try:
                chosen = tuple(sorted({int(c) for c in cpus}))
            except (TypeError, ValueError) as e:
                raise ControlInputError(f"cpus {cpus!r}: not a list of CPU numbers") from e
            if len(chosen) != config.cores:
                raise ControlInputError(
                    f"config {config}: cpus {format_cpus(chosen)} are {len(chosen)} CPUs, "
                    f"not {config.cores}"
                )
            bad = [c for c in chosen if c not in allowed_set]
            if bad:
                raise ControlInputError(
                    f"cpus {format_cpus(bad)} are not available "
                    f"(available: {format_cpus(allowed)})"
                )
            return chosen
        cur = [c for c in current if c in allowed_set]
        if len(cur) == config.cores:
            return tuple(sorted(cur))
        if len(cur) > config.cores:
            return tuple(sorted(cur)[: config.cores])
        # Keep what it has (no needless migration) and add the lowest others.
        extra = [c for c in sorted(allowed_set) if c not in cur]
        return tuple(sorted(cur + extra[: config.cores - len(cur)]))

    @staticmethod
    def _check_quota(cpu_quota: float | None, ncpus: int) -> float | None:
        if cpu_quota is None:
            return None
        try:
            q = float(cpu_quota)
        except (TypeError, ValueError) as e:
            raise ControlInputError(f"cpu_quota={cpu_quota!r}: not a number") from e
        if not q > 0:
            raise ControlInputError(f"cpu_quota={q}: must be > 0 (CPUs' worth of time)")
        if q > ncpus:
            raise ControlInputError(
                f"cpu_quota={q}: more than the {ncpus} CPUs the trial has"
            )
        return q


# -- names -------------------------------------------------------------------


def safe_name(trial_id: str, max_len: int = 80) -> str:
    """A cgroup-safe, unique-enough directory name for ``trial_id``.

    Anything but letters, digits, ``_ . -`` becomes ``_``; when that changed
    the id (or it was too long) a short hash of the original is appended so
    two ids that map to the same text stay apart.
    """
    if not isinstance(trial_id, str) or not trial_id.strip():
        raise ControlInputError(f"trial id {trial_id!r}: must be a non-empty string")
    safe = _SAFE_RE.sub("_", trial_id)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if safe != trial_id or len(safe) > max_len:
        digest = hashlib.sha1(trial_id.encode()).hexdigest()[:8]
        safe = f"{safe[: max_len - 9]}-{digest}"
    return safe


def group_name(trial_id: str, owner_pid: int | None = None) -> str:
    """``<safe trial>@<owner pid>.<owner start ticks>``: the owner is recorded
    in the name so :meth:`Controller.cleanup_stale` can tell whose group is
    stale without any other state."""
    pid = os.getpid() if owner_pid is None else owner_pid
    start = process_start_ticks(pid) or 0
    return f"{safe_name(trial_id)}@{pid}.{start}"


def parse_group_name(name: str) -> tuple[str, int, int] | None:
    """(safe trial id, owner pid, owner start ticks), or ``None`` for a name
    pipetune did not make."""
    m = _GROUP_RE.match(name)
    if not m:
        return None
    return m.group("trial"), int(m.group("pid")), int(m.group("start"))


def owner_alive(name: str) -> bool:
    """Whether the pipetune process that made group ``name`` still runs.
    Names pipetune did not make count as alive (never touched)."""
    parsed = parse_group_name(name)
    if parsed is None:
        return True
    _, pid, start = parsed
    now = process_start_ticks(pid)
    return now is not None and (start == 0 or now == start)


# -- processes ---------------------------------------------------------------


def check_pids(pids: Iterable[int]) -> list[int]:
    """Validate ``pids``: each an int naming a live process the caller may
    control (root: any; otherwise the same real UID)."""
    out: list[int] = []
    euid = os.geteuid()
    for p in pids:
        if isinstance(p, bool) or not isinstance(p, int) or p <= 0:
            raise ControlInputError(f"pid {p!r}: not a process id")
        try:
            st = os.stat(f"/proc/{p}")
        except FileNotFoundError:
            raise ControlInputError(f"pid {p}: no such process") from None
        if euid != 0 and st.st_uid != euid:
            raise PrivilegeError(f"pid {p}: belongs to uid {st.st_uid}, not to the caller")
        if p not in out:
            out.append(p)
    if not out:
        raise ControlInputError("no pids given")
    return out


def thread_ids(pid: int) -> list[int]:
    """Every thread of ``pid`` (empty when it is gone)."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError):
        return []


# -- cpu lists ---------------------------------------------------------------


def parse_cpus(text: str) -> list[int]:
    """Read a kernel CPU list (``0-3,8,10-11``)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                cpus.extend(range(int(lo), int(hi) + 1))
            else:
                cpus.append(int(part))
        except ValueError as e:
            raise ControlInputError(f"cpu list {text!r}: {part!r} is not a CPU or range") from e
    return sorted(set(cpus))


def format_cpus(cpus: Iterable[int]) -> str:
    """Write a kernel CPU list, ranges folded (``[0,1,2,5]`` -> ``0-2,5``)."""
    s = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        parts.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(parts)
