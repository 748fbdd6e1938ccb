"""CPU-affinity fallback, for hosts where cgroups are not writable.

:class:`AffinityController` pins every thread of every process of a trial to
its CPUs with ``sched_setaffinity`` (threads and processes started later
inherit the mask of their creator).  It cannot cap CPU time or memory: those
knobs come back in :attr:`Applied.skipped` with the reason, and a warning is
logged once per trial.  Usage is read from ``/proc`` via psutil (CPU time of
the processes and of their reaped children; resident memory).

:class:`DryRunController` (in :mod:`pipetune.control.dryrun`) reuses the
bookkeeping and changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipetune.control.base import (
    MB,
    Applied,
    ControlInputError,
    Controller,
    TrialHandle,
    Usage,
    check_pids,
    thread_ids,
    with_descendants,
)
from pipetune.errors import ControlError, PrivilegeError
from pipetune.types import SystemConfig

log = logging.getLogger(__name__)


@dataclass
class _Trial:
    handle: TrialHandle
    pids: list[int]
    original: dict[int, set[int]] = field(default_factory=dict)  # tid -> mask at open
    cpus: tuple[int, ...] = ()
    cpu_quota: float | None = None
    memory_mb: int | None = None
    warned: bool = False
    peak_mb: float = 0.0
    cpu_s_done: dict[int, float] = field(default_factory=dict)  # pid -> last cpu_s seen
    parent_of: dict[int, int] = field(default_factory=dict)  # pid -> its parent, when seen


class AffinityController(Controller):
    """Cores by CPU affinity of every thread; no quota, no memory limit."""

    name = "affinity"
    #: Whether this backend changes anything (the dry run does not).
    enforcing = True

    def __init__(self) -> None:
        super().__init__()
        self._trials: dict[str, _Trial] = {}
        # The CPUs this process may use *now*, before it pins anything.  Read
        # later, ``sched_getaffinity(0)`` would be the mask this controller
        # gave: embedded in a trial process, it pins that very process, and a
        # trial shrunk to 1 core could never be given 2 again.
        self._allowed = sorted(os.sched_getaffinity(0))

    def allowed_cpus(self) -> list[int]:
        """The CPUs this process could use when the controller was made."""
        return list(self._allowed)

    def open_trial(self, trial_id: str, pids: Sequence[int]) -> TrialHandle:
        with self._lock:
            if trial_id in self._trials:
                raise ControlInputError(f"trial {trial_id!r} is already open")
            pids = with_descendants(check_pids(pids))
            handle = TrialHandle(trial_id, self.name, trial_id)
            t = _Trial(handle, [])
            self._trials[trial_id] = t
            self._add(t, pids)
            log.info("%s: trial %s opened with pids %s", self.name, trial_id, pids)
            return handle

    def add_pids(self, handle: TrialHandle, pids: Sequence[int]) -> None:
        with self._lock:
            t = self._get(handle)
            self._add(t, with_descendants(check_pids(pids)))
            if t.cpus and self.enforcing:
                self._pin(t, t.cpus)

    def _add(self, t: _Trial, pids: Sequence[int]) -> None:
        for pid in pids:
            if pid in t.pids:
                continue
            t.pids.append(pid)
            for tid in thread_ids(pid):
                try:
                    t.original.setdefault(tid, os.sched_getaffinity(tid))
                except OSError:
                    continue

    def _live_pids(self, t: _Trial) -> list[int]:
        """The trial's processes and their current descendants (workers
        started since the last call)."""
        pids = [p for p in with_descendants(t.pids) if os.path.exists(f"/proc/{p}")]
        for p in pids:
            if p not in t.pids:
                t.pids.append(p)
        return pids

    def _pin(self, t: _Trial, cpus: Sequence[int]) -> None:
        mask = set(cpus)
        done: list[tuple[int, set[int]]] = []
        try:
            for pid in self._live_pids(t):
                for tid in thread_ids(pid):
                    try:
                        old = os.sched_getaffinity(tid)
                        t.original.setdefault(tid, old)
                        os.sched_setaffinity(tid, mask)
                        done.append((tid, old))
                    except ProcessLookupError:
                        continue  # thread ended meanwhile
        except PermissionError as e:
            self._undo(done)
            raise PrivilegeError(f"affinity: may not set the CPUs of trial "
                                 f"{t.handle.trial_id}: {e.strerror}") from e
        except OSError as e:
            self._undo(done)
            raise ControlError(f"affinity: sched_setaffinity failed: {e.strerror or e}") from e

    @staticmethod
    def _undo(done: list[tuple[int, set[int]]]) -> None:
        for tid, old in reversed(done):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, old)

    def apply(self, handle: TrialHandle, config: SystemConfig, *,
              cpus: Sequence[int] | None = None, cpu_quota: float | None = None) -> Applied:
        if not isinstance(config, SystemConfig):
            raise ControlInputError(f"config {config!r}: not a SystemConfig")
        with self._lock:
            t = self._get(handle)
            chosen = self._check_cpus(config, cpus, t.cpus, self.allowed_cpus())
            quota = self._check_quota(cpu_quota, len(chosen))
            skipped: dict[str, str] = {}
            if quota is not None:
                skipped["cpu_quota"] = f"{self.name}: CPU time cannot be capped without cgroups"
            if config.memory_mb is not None:
                skipped["memory_mb"] = f"{self.name}: memory cannot be limited without cgroups"
            if config.gpus:
                skipped["gpus"] = "GPU visibility is fixed when a process starts"
            if self.enforcing:
                self._pin(t, chosen)
            if skipped and not t.warned:
                t.warned = True
                log.warning("%s: trial %s: %s", self.name, handle.trial_id,
                            "; ".join(skipped.values()))
            t.cpus, t.cpu_quota, t.memory_mb = chosen, quota, config.memory_mb
            log.info("%s: trial %s now %s (cpus %s)", self.name, handle.trial_id, config,
                     list(chosen))
            return Applied(handle.trial_id, self.name, config, chosen, quota,
                           config.memory_mb, skipped)

    def limits(self, handle: TrialHandle) -> dict[str, object]:
        with self._lock:
            t = self._get(handle)
            return {"cpus": t.cpus, "cpu_quota": t.cpu_quota, "memory_mb": t.memory_mb}

    def usage(self, handle: TrialHandle) -> Usage:
        import psutil

        with self._lock:
            t = self._get(handle)
            rss = 0.0
            live = set(self._live_pids(t))
            for pid in live:
                try:
                    p = psutil.Process(pid)
                    ct = p.cpu_times()
                    # Own time plus reaped children's; kept after the process ends.
                    t.cpu_s_done[pid] = ct.user + ct.system + ct.children_user + ct.children_system
                    t.parent_of.setdefault(pid, p.ppid())
                    rss += p.memory_info().rss / MB
                except psutil.Error:
                    continue
            t.peak_mb = max(t.peak_mb, rss)
            # A process that is gone and whose parent we track was reaped by
            # that parent: its time (and its own reaped children's) is in the
            # parent's children times now; counting its last sample as well
            # would count it twice.
            cpu_s = sum(
                v for pid, v in t.cpu_s_done.items()
                if pid in live or t.parent_of.get(pid) not in t.cpu_s_done
            )
            return Usage(cpu_s=cpu_s, memory_current_mb=rss, memory_peak_mb=t.peak_mb)

    def members(self, handle: TrialHandle) -> set[int]:
        with self._lock:
            return set(self._live_pids(self._get(handle)))

    def close_trial(self, handle: TrialHandle) -> None:
        with self._lock:
            t = self._trials.pop(handle.trial_id, None)
            if t is None:
                return
            if self.enforcing:
                # Give survivors back the mask they had (or every CPU we may use).
                everything = set(self.allowed_cpus())
                for pid in self._live_pids(t):
                    for tid in thread_ids(pid):
                        try:
                            os.sched_setaffinity(tid, t.original.get(tid, everything))
                        except OSError:
                            continue
            log.info("%s: trial %s closed", self.name, handle.trial_id)

    def open_trials(self) -> list[TrialHandle]:
        with self._lock:
            return [t.handle for t in self._trials.values()]

    def cleanup_stale(self) -> int:
        # Affinity leaves nothing behind on the host to clean.
        return 0

    def _get(self, handle: TrialHandle) -> _Trial:
        t = self._trials.get(handle.trial_id)
        if t is None or t.handle != handle:
            raise ControlInputError(f"trial {handle.trial_id!r} is not open in {self.name}")
        return t
