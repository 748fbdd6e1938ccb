"""The node's CPUs shared by trials without a daemon: the allocator table
across real processes, and a controller whose CPUs come from it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipetune.control import (
    AffinityController,
    AllocatingController,
    DryRunController,
    SharedNodeAllocator,
)
from pipetune.errors import ControlError
from pipetune.types import SystemConfig

REPO = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent("""
    import sys, time
    from pipetune.control import SharedNodeAllocator
    cpus = SharedNodeAllocator(sys.argv[1], cpus=[0, 1, 2, 3]).share(sys.argv[2], 2)
    print(",".join(map(str, cpus)), flush=True)
    sys.stdin.readline()  # hold the CPUs until told to go
""")


def _holder(table: Path, trial: str) -> tuple[subprocess.Popen, set[int]]:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(table), trial], cwd=REPO,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    assert line, "holder printed nothing"
    return p, {int(c) for c in line.split(",")}


def test_trials_in_other_processes_get_disjoint_cpus_until_they_die(tmp_path: Path) -> None:
    table = tmp_path / "node.cpus.json"
    a, cpus_a = _holder(table, "a")
    try:
        b, cpus_b = _holder(table, "b")
        try:
            assert cpus_a.isdisjoint(cpus_b) and cpus_a | cpus_b == {0, 1, 2, 3}
            mine = SharedNodeAllocator(table, cpus=[0, 1, 2, 3])
            assert set(mine.held()) == {"a", "b"}
        finally:
            b.kill()
            b.wait()
        # b died without releasing: its CPUs are free again, a keeps its own.
        got = set(mine.share("c", 2))
        assert got == cpus_b
        assert set(mine.held()) == {"a", "c"}
        mine.release("c")
        assert set(mine.held()) == {"a"}
    finally:
        a.kill()
        a.wait()


def test_an_unreadable_table_starts_afresh(tmp_path: Path) -> None:
    table = tmp_path / "node.cpus.json"
    table.write_text("{not json")
    alloc = SharedNodeAllocator(table, cpus=[0, 1])
    assert alloc.share("x", 1) == [0]
    assert json.loads(table.read_text())["held"]["x"]["cpus"] == [0]


def test_a_table_in_an_unwritable_place_is_a_control_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ControlError, match="node allocator table"):
        SharedNodeAllocator(blocker / "sub" / "t.json", cpus=[0]).share("x", 1)


def _refuse(*args: object, **kwargs: object) -> None:
    raise ControlError("refused (test)")


def test_allocating_controller_takes_cpus_from_the_allocator_and_releases_them(
    tmp_path: Path,
) -> None:
    table = tmp_path / "node.cpus.json"
    ctl = AllocatingController(DryRunController(), SharedNodeAllocator(table, cpus=[0, 1]))
    assert ctl.name == "dry-run"
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        ha = ctl.open_trial("a", [sleepers[0].pid])
        hb = ctl.open_trial("b", [sleepers[1].pid])
        got_a = ctl.apply(ha, SystemConfig(1)).cpus
        got_b = ctl.apply(hb, SystemConfig(1)).cpus
        assert set(got_a).isdisjoint(got_b)
        # more cores than the node has: refused, and b keeps what it holds
        with pytest.raises(ControlError, match="3 cores"):
            ctl.apply(hb, SystemConfig(3))
        assert SharedNodeAllocator(table, cpus=[0, 1]).held()["b"] == tuple(got_b)
        # an apply the inner controller refuses frees what the allocator gave
        ctl.inner.apply = _refuse  # type: ignore[method-assign]
        with pytest.raises(ControlError, match="refused"):
            ctl.apply(hb, SystemConfig(1))
        ctl.close_trial(ha)
        assert set(SharedNodeAllocator(table, cpus=[0, 1]).held()) == set()
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


def test_allocating_affinity_controller_confines_each_trial_to_its_own_cpu(
    tmp_path: Path,
) -> None:
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    ctl = AllocatingController(AffinityController(),
                               SharedNodeAllocator(tmp_path / "t.json", cpus=cpus))
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        handles = [ctl.open_trial(f"t{i}", [p.pid]) for i, p in enumerate(sleepers)]
        for h in handles:
            ctl.apply(h, SystemConfig(1))
        got = [os.sched_getaffinity(p.pid) for p in sleepers]
        assert got[0].isdisjoint(got[1]) and all(len(g) == 1 for g in got)
        for h in handles:
            ctl.close_trial(h)
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


# -- packing: the node's share of each trial -------------------------------------------


def test_water_filling_gives_cores_where_they_speed_a_trial_up_most() -> None:
    from pipetune.control.allocator import water_fill

    # Alone, a trial gets what it would use; two trials on 2 CPUs one each.
    assert water_fill({"a": 2}, 2) == {"a": 2}
    assert water_fill({"a": 2, "b": 2}, 2) == {"a": 1, "b": 1}
    # Unknown speed-ups: an even split, never beyond what a trial would use.
    assert water_fill({"a": 16, "b": 16}, 16) == {"a": 8, "b": 8}
    assert water_fill({"a": 2, "b": 16}, 16) == {"a": 2, "b": 14}
    # Measured: a scales almost linearly to 8, b gains little past 2 cores.
    curves = {"a": {1: 1.0, 2: 1.9, 4: 3.6, 8: 6.8}, "b": {1: 1.0, 2: 1.6, 4: 1.8, 8: 1.9}}
    got = water_fill({"a": 8, "b": 8}, 10, curves)
    assert got["a"] == 8 and got["b"] == 2, got
    # A core that speeds nobody up stays idle.
    flat = {"a": {1: 1.0, 2: 1.0}}
    assert water_fill({"a": 2}, 4, flat) == {"a": 1}
    # More trials than CPUs: one each (shared).
    assert water_fill({"a": 2, "b": 2, "c": 2}, 2) == {"a": 1, "b": 1, "c": 1}


def test_a_trial_that_starts_shrinks_the_others_and_one_that_ends_lets_them_grow(
    tmp_path: Path,
) -> None:
    table = tmp_path / "node.cpus.json"
    mine = SharedNodeAllocator(table, cpus=[0, 1, 2, 3])
    assert len(mine.share("a", 4)) == 4  # alone: all it would use
    assert mine.capacity("b", 4) == 2
    got_b = mine.share("b", 4)
    assert len(got_b) == 2
    held = mine.held()
    assert set(held["a"]).isdisjoint(held["b"]) and len(held["a"]) == 2
    assert mine.assigned("a") == list(held["a"])
    mine.set_speedup("b", {1: 1.0, 2: 1.05})  # b gains nothing from a second core
    assert len(mine.share("b", 4)) == 1 and len(mine.assigned("a")) == 3
    mine.release("b")
    assert sorted(mine.assigned("a")) == [0, 1, 2, 3]


def test_the_controller_puts_the_share_in_force_and_rebalances_at_a_boundary(
    tmp_path: Path,
) -> None:
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    table = tmp_path / "t.json"
    ctl = AllocatingController(AffinityController(), SharedNodeAllocator(table, cpus=cpus))
    other = AllocatingController(AffinityController(), SharedNodeAllocator(table, cpus=cpus))
    a, b = (subprocess.Popen(["sleep", "30"]) for _ in range(2))
    try:
        ha = ctl.open_trial("a", [a.pid])
        assert ctl.apply(ha, SystemConfig(2)).config == SystemConfig(2)
        assert ctl.rebalance(ha) is None  # nothing moved
        hb = other.open_trial("b", [b.pid])
        applied_b = other.apply(hb, SystemConfig(2))
        assert applied_b.config == SystemConfig(1)  # its share, not what it asked
        assert len(os.sched_getaffinity(a.pid)) == 2  # a learns at its boundary
        moved = ctl.rebalance(ha)
        assert moved is not None and moved.config == SystemConfig(1)
        assert os.sched_getaffinity(a.pid).isdisjoint(os.sched_getaffinity(b.pid))
        other.close_trial(hb)
        grown = ctl.rebalance(ha)
        assert grown is not None and grown.config == SystemConfig(2)
        assert len(os.sched_getaffinity(a.pid)) == 2
        ctl.close_trial(ha)
    finally:
        for p in (a, b):
            p.kill()
            p.wait()
