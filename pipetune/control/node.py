"""One node's CPUs shared by its concurrent trials, with or without a daemon.

- :class:`SharedNodeAllocator` — the :class:`~pipetune.control.NodeAllocator`
  of a node where no daemon runs: its table of who holds which CPUs lives in
  a small JSON file under a lock, so the trials of one node (separate Ray
  worker processes) hand out disjoint CPUs to each other.  An entry whose
  owner process is gone is dropped on the next access (a SIGKILLed trial
  cannot release its CPUs).
- :class:`AllocatingController` — any :class:`~pipetune.control.Controller`
  whose ``apply`` puts in force the trial's share of the node, on CPUs from
  a node allocator, and moves it when other trials start or end.  The daemon wraps its
  controller in it with an in-memory allocator; a trial without a daemon
  wraps its local controller with a :class:`SharedNodeAllocator`: one code
  path decides which CPUs a config gets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pipetune.control.allocator import NodeAllocator, read_topology
from pipetune.control.base import Applied, Controller, TrialHandle, Usage
from pipetune.errors import ControlError
from pipetune.procs import process_start_ticks
from pipetune.types import SystemConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class CpuAllocator(Protocol):
    """What :class:`AllocatingController` needs of an allocator
    (:class:`~pipetune.control.NodeAllocator`, :class:`SharedNodeAllocator`)."""

    def share(self, trial_id: str, cores: int) -> list[int]: ...
    def assigned(self, trial_id: str) -> list[int] | None: ...
    def capacity(self, trial_id: str, cores: int) -> int: ...
    def set_speedup(self, trial_id: str, curve: Mapping[int, float]) -> None: ...
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
        # Read once: every boundary of every trial consults the table.
        self._topology = read_topology(self.cpus)

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
            before = json.dumps(table, sort_keys=True)
            yield table
            # Written only when it changed: most calls (a trial's boundary
            # asking for its share) find it as it was.
            if json.dumps(table, sort_keys=True) != before:
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
                want = int(entry.get("want") or len(cpus))
                speedup = {int(c): float(v) for c, v in (entry.get("speedup") or {}).items()}
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
            now = process_start_ticks(pid)
            if now is None or (start is not None and now != start):
                log.info("node allocator: trial %s's owner %d is gone; cpus freed", trial, pid)
                continue
            live[str(trial)] = {"pid": pid, "start_ticks": start, "cpus": cpus, "want": want,
                                "speedup": speedup}
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

    def _node(self, held: Mapping[str, Any]) -> NodeAllocator:
        alloc = NodeAllocator(self.cpus, topology=self._topology)
        alloc.adopt({t: e["cpus"] for t, e in held.items()},
                    wants={t: e["want"] for t, e in held.items()},
                    speedups={t: e["speedup"] for t, e in held.items() if e["speedup"]})
        return alloc

    @staticmethod
    def _store(held: dict[str, Any], alloc: NodeAllocator) -> None:
        now = alloc.held()
        for t, entry in held.items():
            entry["cpus"] = list(now.get(t, entry["cpus"]))

    def share(self, trial_id: str, cores: int) -> list[int]:
        """Up to ``cores`` CPUs for ``trial_id``: its share of the node
        (:meth:`NodeAllocator.share`); the other trials' entries are
        redistributed and picked up at their next boundary (:meth:`assigned`)."""
        with self._locked() as held:
            alloc = self._node(held)
            cpus = alloc.share(trial_id, cores)
            pid = os.getpid()
            previous = held.get(trial_id) or {}
            held[trial_id] = {"pid": pid, "start_ticks": process_start_ticks(pid), "cpus": cpus,
                              "want": cores, "speedup": previous.get("speedup") or {}}
            self._store(held, alloc)
            return cpus

    def assigned(self, trial_id: str) -> list[int] | None:
        """The CPUs the table gives ``trial_id`` now (others' starts and ends
        move them), ``None`` when it holds none.  Dead trials' entries are
        dropped and their CPUs shared out."""
        with self._locked() as held:
            if trial_id not in held:
                return None
            alloc = self._node(held)
            alloc.rebalance()  # dead entries were dropped: their CPUs are shared out
            self._store(held, alloc)
            return list(held[trial_id]["cpus"])

    def capacity(self, trial_id: str, cores: int) -> int:
        with self._locked() as held:
            return self._node(held).capacity(trial_id, cores)

    def set_speedup(self, trial_id: str, curve: Mapping[int, float]) -> None:
        with self._locked() as held:
            if trial_id in held:
                held[trial_id]["speedup"] = {str(c): float(v) for c, v in curve.items()}

    def release(self, trial_id: str) -> None:
        with self._locked() as held:
            if held.pop(trial_id, None) is None or not held:
                return
            alloc = self._node(held)
            alloc.rebalance()  # the others grow into what it held
            self._store(held, alloc)

    def held(self) -> dict[str, tuple[int, ...]]:
        with self._locked() as held:
            return {t: tuple(e["cpus"]) for t, e in held.items()}


class AllocatingController(Controller):
    """``inner`` with its CPUs chosen by ``allocator`` (module docstring).

    :meth:`apply` puts in force the trial's *share* of the node: ``config``
    with at most the cores the allocator gives it now (the :class:`Applied`
    says which config is really in force).  Other trials starting or ending
    move that share; :meth:`rebalance`, called at the trial's boundaries,
    applies the new one.  A caller that passes ``cpus`` keeps that choice.
    """

    def __init__(self, inner: Controller, allocator: CpuAllocator) -> None:
        super().__init__()
        self.inner = inner
        self.allocator = allocator
        self.name = inner.name
        # getattr: an inner that only follows the contract (duck-typed) lost nothing
        self.degraded = getattr(inner, "degraded", "")
        self._asked: dict[str, SystemConfig] = {}
        self._cpus: dict[str, tuple[int, ...]] = {}

    def open_trial(self, trial_id: str, pids: Sequence[int]) -> TrialHandle:
        return self.inner.open_trial(trial_id, pids)

    def add_pids(self, handle: TrialHandle, pids: Sequence[int]) -> None:
        self.inner.add_pids(handle, pids)

    def apply(self, handle: TrialHandle, config: SystemConfig, *,
              cpus: Sequence[int] | None = None, cpu_quota: float | None = None) -> Applied:
        if cpus is None:
            cpus = self.allocator.share(handle.trial_id, config.cores)
        return self._apply(handle, config, list(cpus), cpu_quota)

    def _apply(self, handle: TrialHandle, config: SystemConfig, cpus: list[int],
               cpu_quota: float | None) -> Applied:
        effective = dataclasses.replace(config, cores=len(cpus))
        if cpu_quota is not None:
            cpu_quota = min(cpu_quota, float(len(cpus)))
        try:
            applied = self.inner.apply(handle, effective, cpus=cpus, cpu_quota=cpu_quota)
        except Exception:
            # The old limits stay in force (apply is all or nothing), but the
            # allocator now says otherwise: free the CPUs, the caller degrades.
            with contextlib.suppress(Exception):
                self.allocator.release(handle.trial_id)
            raise
        self._asked[handle.trial_id] = config
        self._cpus[handle.trial_id] = tuple(sorted(cpus))
        if effective != config:
            log.info("trial %s: %s asked, %s in force: its share of the node now",
                     handle.trial_id, config, effective)
        return applied

    def rebalance(self, handle: TrialHandle) -> Applied | None:
        """Apply the trial's share again if others' starts or ends moved it;
        what is in force then, or ``None`` when nothing changed."""
        asked = self._asked.get(handle.trial_id)
        if asked is None:
            return None
        cpus = self.allocator.assigned(handle.trial_id)
        if not cpus or tuple(sorted(cpus)) == self._cpus.get(handle.trial_id):
            return None
        return self._apply(handle, asked, list(cpus), None)

    def capacity(self, handle: TrialHandle, cores: int) -> int:
        """Cores the trial would get if it asked ``cores`` now."""
        return self.allocator.capacity(handle.trial_id, cores)

    def set_speedup(self, handle: TrialHandle, curve: Mapping[int, float]) -> None:
        """The trial's measured speed per core count, for the node's water-filling."""
        self.allocator.set_speedup(handle.trial_id, curve)

    def usage(self, handle: TrialHandle) -> Usage:
        return self.inner.usage(handle)

    def close_trial(self, handle: TrialHandle) -> None:
        self._asked.pop(handle.trial_id, None)
        self._cpus.pop(handle.trial_id, None)
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
