"""What the cgroup v1 and v2 backends share: group lifecycle and rollback.

A trial's group is one directory per hierarchy (v1: one per mounted
controller hierarchy; v2: one), all named ``<trial>@<owner pid>.<start>``
under a ``pipetune`` parent inside the caller's own cgroup.  This module
creates, fills, empties and removes those directories and writes a list of
limit files all-or-nothing; the backends say which files and values.
"""

from __future__ import annotations

import abc
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from pipetune.control.base import (
    PARENT_NAME,
    Applied,
    ControlInputError,
    Controller,
    TrialHandle,
    check_pids,
    group_name,
    owner_alive,
    with_descendants,
)
from pipetune.control.cgroupfs import CgroupFs
from pipetune.errors import ControlError, PipetuneError
from pipetune.types import SystemConfig

log = logging.getLogger(__name__)

# v1 prints "unlimited" as a huge page-rounded number; writing it back works
# on some kernels only, "-1" on all.
_V1_UNLIMITED = 1 << 62


class CgroupController(Controller):
    """Shared lifecycle of the cgroup backends.

    ``own_dirs`` maps a hierarchy key to the caller's own cgroup directory in
    that hierarchy; the ``pipetune`` parent is created in each.
    """

    def __init__(self, own_dirs: dict[str, Path], *, fs: CgroupFs | None = None) -> None:
        super().__init__()
        if not own_dirs:
            raise ControlError(f"{self.name}: no cgroup hierarchy to work in")
        self.fs = fs or CgroupFs()
        self.own_dirs = dict(own_dirs)
        self._open: dict[str, TrialHandle] = {}

    # -- backend hooks ----------------------------------------------------------

    def _init_parent(self, key: str, parent: Path) -> None:  # noqa: B027 - optional hook
        """Prepare a freshly made (or found) ``pipetune`` parent."""

    def _init_group(self, key: str, group: Path) -> None:  # noqa: B027 - optional hook
        """Prepare a new trial group before any process enters it."""

    @abc.abstractmethod
    def _plan(self, handle: TrialHandle, config: SystemConfig, cpus: Sequence[int] | None,
              cpu_quota: float | None) -> tuple[list[tuple[Path, str]], Applied]:
        """Validate and return (files to write in order, what that applies).
        Raises ``ControlInputError`` before anything is written."""

    # -- paths --------------------------------------------------------------------

    def parent_dir(self, key: str) -> Path:
        return self.own_dirs[key] / PARENT_NAME

    def group_dir(self, handle: TrialHandle, key: str) -> Path:
        return self.parent_dir(key) / handle.group

    def _ensure_parent(self, key: str) -> Path:
        parent = self.parent_dir(key)
        if not self.fs.exists(self.own_dirs[key]):
            raise ControlError(f"{self.name}: own cgroup {self.own_dirs[key]} does not exist")
        made = self.fs.mkdir(parent)
        try:
            self._init_parent(key, parent)
        except BaseException:
            if made:  # leave nothing behind that we could not set up
                self._remove_parents()
            raise
        return parent

    def _make_group(self, key: str, name: str) -> Path:
        # Another pipetune process may remove an empty parent between our
        # mkdir of the parent and of the group: make the parent again.
        for attempt in range(3):
            try:
                parent = self._ensure_parent(key)
                group = parent / name
                if not self.fs.mkdir(group):
                    raise ControlInputError(f"{self.name}: group {group} already exists")
                return group
            except ControlInputError:
                raise
            except ControlError:
                if attempt == 2 or self.fs.exists(self.parent_dir(key)):
                    raise
        raise AssertionError("unreachable")

    # -- Controller -------------------------------------------------------------

    def open_trial(self, trial_id: str, pids: Sequence[int]) -> TrialHandle:
        with self._lock:
            if trial_id in self._open:
                raise ControlInputError(f"trial {trial_id!r} is already open")
            pids = check_pids(pids)
            name = group_name(trial_id)
            made: list[Path] = []
            try:
                for key in self.own_dirs:
                    group = self._make_group(key, name)
                    made.append(group)
                    self._init_group(key, group)
                handle = TrialHandle(trial_id, self.name, name, tuple(str(p) for p in made))
                self._move(handle, with_descendants(pids))
            except BaseException:
                for group in reversed(made):
                    self._empty_and_remove(group, self._owner_of(group))
                self._remove_parents()
                raise
            self._open[trial_id] = handle
            log.info("%s: trial %s opened as %s with pids %s", self.name, trial_id, name, pids)
            return handle

    def add_pids(self, handle: TrialHandle, pids: Sequence[int]) -> None:
        with self._lock:
            self._require_open(handle)
            self._move(handle, with_descendants(check_pids(pids)))

    def _move(self, handle: TrialHandle, pids: Sequence[int]) -> None:
        # cgroup.procs moves a whole process (every thread); children started
        # later are born inside the group.
        for key in self.own_dirs:
            procs = self.group_dir(handle, key) / "cgroup.procs"
            for pid in pids:
                try:
                    self.fs.write(procs, f"{pid}\n")
                except ControlError as e:
                    if not os.path.exists(f"/proc/{pid}"):
                        if pid == pids[0]:
                            raise ControlInputError(f"pid {pid}: no such process") from e
                        continue  # a worker that ended meanwhile
                    raise

    def apply(self, handle: TrialHandle, config: SystemConfig, *,
              cpus: Sequence[int] | None = None, cpu_quota: float | None = None) -> Applied:
        if not isinstance(config, SystemConfig):
            raise ControlInputError(f"config {config!r}: not a SystemConfig")
        with self._lock:
            self._require_open(handle)
            writes, applied = self._plan(handle, config, cpus, cpu_quota)
            self._write_all(writes)
            log.info("%s: trial %s now %s (cpus %s, quota %s, memory %s MB)", self.name,
                     handle.trial_id, config, list(applied.cpus), applied.cpu_quota,
                     applied.memory_mb)
            return applied

    def _write_all(self, writes: list[tuple[Path, str]]) -> None:
        """Write every file in order; on a failure write back the old values of
        those already written (newest first) and re-raise."""
        done: list[tuple[Path, str]] = []
        try:
            for path, value in writes:
                old = self.fs.read(path).strip()
                if old.isdigit() and int(old) >= _V1_UNLIMITED:
                    old = "-1"
                self.fs.write(path, value)
                done.append((path, old))
        except PipetuneError:
            for path, old in reversed(done):
                try:
                    self.fs.write(path, old)
                except PipetuneError as e:  # pragma: no cover - kernel refused its own value
                    log.error("%s: rollback of %s to %r failed: %s", self.name, path, old, e)
            raise

    def close_trial(self, handle: TrialHandle) -> None:
        with self._lock:
            for key in self.own_dirs:
                self._empty_and_remove(self.group_dir(handle, key), self.own_dirs[key])
            self._open.pop(handle.trial_id, None)
            self._remove_parents()
            log.info("%s: trial %s closed", self.name, handle.trial_id)

    def cleanup_stale(self) -> int:
        with self._lock:
            mine = {h.group for h in self._open.values()}
            stale: set[str] = set()
            for key in self.own_dirs:
                for name in self.fs.listdirs(self.parent_dir(key)):
                    if name in mine or owner_alive(name):
                        continue
                    try:
                        self._empty_and_remove(self.parent_dir(key) / name, self.own_dirs[key])
                        stale.add(name)
                    except ControlError as e:
                        log.warning("%s: stale group %s not removed: %s", self.name, name, e)
            self._remove_parents()
            if stale:
                log.info("%s: removed %d stale group(s): %s", self.name, len(stale),
                         ", ".join(sorted(stale)))
            return len(stale)

    def members(self, handle: TrialHandle) -> set[int]:
        key = next(iter(self.own_dirs))
        return set(self.fs.pids(self.group_dir(handle, key)))

    def open_trials(self) -> list[TrialHandle]:
        with self._lock:
            return list(self._open.values())

    # -- helpers ----------------------------------------------------------------

    def _require_open(self, handle: TrialHandle) -> None:
        if self._open.get(handle.trial_id) != handle:
            raise ControlInputError(f"trial {handle.trial_id!r} is not open in {self.name}")

    def _owner_of(self, group: Path) -> Path:
        return group.parent.parent

    def _empty_and_remove(self, group: Path, to: Path) -> None:
        """Move every process of ``group`` to ``to`` and remove it."""
        if not self.fs.exists(group):
            return
        for attempt in range(50):
            for pid in self.fs.pids(group):
                try:
                    self.fs.write(to / "cgroup.procs", f"{pid}\n")
                except ControlError as e:
                    # A process that exits meanwhile cannot be moved: fine.
                    log.debug("%s: moving %d out of %s: %s", self.name, pid, group, e)
            try:
                self.fs.rmdir(group)
                return
            except ControlError:
                # Exiting tasks linger in the group for a moment.
                if attempt == 49:
                    raise
                time.sleep(0.02)

    def _remove_parents(self) -> None:
        """Remove empty ``pipetune`` parents; one in use by another pipetune
        process stays (the kernel refuses to remove a group with children)."""
        for key in self.own_dirs:
            parent = self.parent_dir(key)
            if self.fs.exists(parent) and not self.fs.listdirs(parent):
                try:
                    self.fs.rmdir(parent)
                except ControlError as e:
                    log.debug("%s: parent %s kept: %s", self.name, parent, e)
