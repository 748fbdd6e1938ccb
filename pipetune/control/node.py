"""One node's CPUs shared by its concurrent trials, with or without a daemon.

- :class:`SharedNodeAllocator` — the :class:`~pipetune.control.NodeAllocator`
  of a node where no daemon runs: its table of who holds which CPUs lives in
  a small JSON file under a lock, so the trials of one node (separate Ray
  worker processes) hand out disjoint CPUs to each other.  An entry whose
  owner process is gone is dropped on the next access (a SIGKILLed trial
  cannot release its CPUs).
- :class:`AllocatingController` — any :class:`~pipetune.control.Controller`
  whose ``apply`` takes its CPUs from a node allocator.  The daemon wraps its
  controller in it with an in-memory allocator; a trial without a daemon
  wraps its local controller with a :class:`SharedNodeAllocator`: one code
  path decides which CPUs a config gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pipetune.control.allocator import NodeAllocator
from pipetune.control.base import (
    Applied,
    Controller,
    TrialHandle,
    Usage,
    process_start_ticks,
)
from pipetune.errors import ControlError
from pipetune.types import SystemConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class CpuAllocator(Protocol):
    """What :class:`AllocatingController` needs of an allocator."""

    def allocate(self, trial_id: str, cores: int) -> list[int]: ...
    def release(self, trial_id: str) -> None: ...


class SharedNodeAllocator:
    """Disjoint CPUs for the trials of one node, coordinated through ``path``.

    Every call takes an exclusive ``flock`` on ``path + ".lock"``, reads the
    table, drops entries of processes that are gone, lets a
    :class:`NodeAllocator` decide and writes the table back atomically.
    The owner of an entry is the calling process (the trial's own process).

    Args:
        path: the table file (created on first use; its folder too).
        cpus: the CPUs it may hand out (default: this process's affinity at
            construction, i.e. what the trial's Ray worker may use).
    """

    def __init__(self, path: str | Path, cpus: Sequence[int] | None = None) -> None:
        self.path = Path(path)
        self.cpus = sorted(cpus) if cpus is not None else sorted(os.sched_getaffinity(0))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(str(self.path) + ".lock", "a+")  # noqa: SIM115 - held across the yield
        except OSError as e:
            raise ControlError(f"node allocator table {self.path}: {e}") from e
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            table = self._read()
            yield table
            self._write(table)
        finally:
            lock.close()  # releases the flock

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("node allocator table %s unreadable (%s): starting afresh", self.path, e)
            return {}
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            return {}
        held = data.get("held")
        if not isinstance(held, dict):
            return {}
        live = {}
        for trial, entry in held.items():
            try:
                pid, start = int(entry["pid"]), entry.get("start_ticks")
                cpus = [int(c) for c in entry["cpus"]]
            except (KeyError, TypeError, ValueError):
                continue
            now = process_start_ticks(pid)
            if now is None or (start is not None and now != start):
                log.info("node allocator: trial %s's owner %d is gone; cpus freed", trial, pid)
                continue
            live[str(trial)] = {"pid": pid, "start_ticks": start, "cpus": cpus}
        return live

    def _write(self, held: Mapping[str, Any]) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "held": dict(held)}))
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ControlError(f"node allocator table {self.path}: {e}") from e

    def allocate(self, trial_id: str, cores: int) -> list[int]:
        """CPUs for ``trial_id`` (see :meth:`NodeAllocator.allocate_detailed`)."""
        with self._locked() as held:
            alloc = NodeAllocator(self.cpus)
            alloc.adopt({t: e["cpus"] for t, e in held.items() if t != trial_id})
            previous = held.get(trial_id)
            if previous:
                alloc.adopt({trial_id: previous["cpus"]})
            cpus = alloc.allocate(trial_id, cores)
            pid = os.getpid()
            held[trial_id] = {"pid": pid, "start_ticks": process_start_ticks(pid), "cpus": cpus}
            return cpus

    def release(self, trial_id: str) -> None:
        with self._locked() as held:
            held.pop(trial_id, None)

    def held(self) -> dict[str, tuple[int, ...]]:
        with self._locked() as held:
            return {t: tuple(e["cpus"]) for t, e in held.items()}


class AllocatingController(Controller):
    """``inner`` with its CPUs chosen by ``allocator`` (module docstring).

    A caller that passes ``cpus`` to :meth:`apply` keeps that choice; the
    allocator hears of every release.
    """

    def __init__(self, inner: Controller, allocator: CpuAllocator) -> None:
        super().__init__()
        self.inner = inner
        self.allocator = allocator
        self.name = inner.name

    def open_trial(self, trial_id: str, pids: Sequence[int]) -> TrialHandle:
        return self.inner.open_trial(trial_id, pids)

    def add_pids(self, handle: TrialHandle, pids: Sequence[int]) -> None:
        self.inner.add_pids(handle, pids)

    def apply(self, handle: TrialHandle, config: SystemConfig, *,
              cpus: Sequence[int] | None = None, cpu_quota: float | None = None) -> Applied:
        if cpus is None:
            cpus = self.allocator.allocate(handle.trial_id, config.cores)
        try:
            return self.inner.apply(handle, config, cpus=cpus, cpu_quota=cpu_quota)
        except Exception:
            # The old limits stay in force (apply is all or nothing), but the
            # allocator now says otherwise: free the CPUs, the caller degrades.
            with contextlib.suppress(Exception):
                self.allocator.release(handle.trial_id)
            raise

    def usage(self, handle: TrialHandle) -> Usage:
        return self.inner.usage(handle)

    def close_trial(self, handle: TrialHandle) -> None:
        try:
            self.inner.close_trial(handle)
        finally:
            try:
                self.allocator.release(handle.trial_id)
            except Exception as e:  # noqa: BLE001 - a stale entry is dropped with its owner
                log.warning("trial %s: node allocator release failed: %s", handle.trial_id, e)

    def cleanup_stale(self) -> int:
        return self.inner.cleanup_stale()

    def members(self, handle: TrialHandle) -> set[int]:
        return self.inner.members(handle)

    def limits(self, handle: TrialHandle) -> dict[str, Any]:
        return self.inner.limits(handle)

    def open_trials(self) -> list[TrialHandle]:
        return self.inner.open_trials()

    def allowed_cpus(self) -> list[int]:
        return self.inner.allowed_cpus()

    def describe(self) -> str:
        return self.inner.describe()
