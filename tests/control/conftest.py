"""Fixtures for the control tests.

- ``spawn``: start helper processes (Python snippets); every one still alive
  is killed by PID at teardown.
- ``no_cgroup_left``: asserts a test leaves no pipetune cgroup of its own
  (owned by this process, or by a process that started during the test and
  is gone) in any hierarchy.
- ``v1``: a real cgroup v1 controller on this host (skips without one),
  with ``no_cgroup_left`` and a safety net that closes what a failed test
  left open.
- ``fake_v2``: a :class:`FakeCgroupV2Fs` over a plain directory tree in
  ``tmp_path``, emulating what the kernel does on mkdir/rmdir/cgroup.procs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib

from control_helpers import (  # noqa: E402
    HOST_DIRS,
    FakeCgroupV2Fs,
    Spawner,
    _uptime_ticks,
    pipetune_groups,
)

from pipetune.control import (
    CgroupV1Controller,
    CgroupV2Controller,
    cgroup_controller,
    cgroups_writable,
)
from pipetune.control.base import PARENT_NAME, parse_group_name, process_start_ticks


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    s = Spawner()
    yield s
    s.kill_all()


@pytest.fixture
def no_cgroup_left() -> Iterator[None]:
    before = pipetune_groups()
    parents_before = {k for k, own in HOST_DIRS.items() if (own / PARENT_NAME).is_dir()}
    test_start = _uptime_ticks() - 1
    yield
    left = []
    for key, name in pipetune_groups() - before:
        parsed = parse_group_name(name)
        if parsed is None:
            continue
        _, pid, start = parsed
        ours = pid == os.getpid()
        died_child = process_start_ticks(pid) is None and start >= test_start
        if ours or died_child:
            left.append(f"{key}:{name}")
    for key, own in HOST_DIRS.items():
        parent = own / PARENT_NAME
        if key not in parents_before and parent.is_dir() and not any(
                p.is_dir() for p in parent.iterdir()):
            left.append(f"{key}:{PARENT_NAME} (empty parent)")
    assert not left, f"test left cgroups behind: {left}"


@pytest.fixture
def v1(no_cgroup_left: None) -> Iterator[CgroupV1Controller]:
    ok = cgroups_writable()
    if ok is not True:
        pytest.skip(f"no writable cgroups here: {ok}")
    ctl = cgroup_controller()
    if not isinstance(ctl, CgroupV1Controller):
        pytest.skip(f"host cgroups are not v1 ({ctl.name})")
    yield ctl
    for h in ctl.open_trials():
        ctl.close_trial(h)


@pytest.fixture
def fake_v2(tmp_path: Path) -> Iterator[tuple[CgroupV2Controller, FakeCgroupV2Fs]]:
    root = tmp_path / "cgroup"
    fs = FakeCgroupV2Fs(root)
    own = root / "user.slice" / "me"
    own.mkdir(parents=True)  # the caller's own cgroup, made by "the kernel"
    fs._populate(root / "user.slice")
    fs._populate(own)
    ctl = CgroupV2Controller(root, "/user.slice/me", fs=fs)
    yield ctl, fs
    for h in ctl.open_trials():
        ctl.close_trial(h)
