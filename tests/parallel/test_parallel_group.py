"""The trial-side worker group: boundaries under the trial process's control, restarts."""

from __future__ import annotations

import math

import pytest

from pipetune.parallel import ParallelConfig
from pipetune.parallel._forkserver import forkserver_pid
from pipetune.parallel.group import Boundary, GroupRunner, threads_per_rank

HP = {"batch_size": 64, "max_train_samples": 768, "lr": 0.05}


def _run(plan: dict[int, ParallelConfig], start: ParallelConfig, *,
         none_here: bool = False) -> tuple[list, GroupRunner]:
    runner = GroupRunner("lenet5-mnist", HP, start, epochs=3, threads=1, none_here=none_here)
    seen = []

    def on_epoch(record: dict) -> Boundary:
        seen.append({**record, "forkserver": forkserver_pid()})
        return Boundary(threads=1, restart=plan.get(record["epoch"]))

    try:
        records = runner.run(on_epoch)
    finally:
        runner.close()
    assert [r["epoch"] for r in records] == [r["epoch"] for r in seen] == [0, 1, 2]
    return records, runner


def test_restart_none_ddp_none_continues_the_loss_trajectory() -> None:
    reference, _ = _run({}, ParallelConfig("none"))
    records, runner = _run({0: ParallelConfig("ddp", 2), 1: ParallelConfig("none")},
                           ParallelConfig("none"))
    assert [r["strategy"] for r in records] == ["none", "ddp", "none"]
    assert [len(r["ranks"]) for r in records] == [1, 2, 1]
    # DDP averages the shards' gradients: the same step up to float rounding.
    for got, want in zip(records, reference, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=0.01)
    assert records[-1]["accuracy"] == pytest.approx(reference[-1]["accuracy"], abs=0.02)
    # Each restart's cost is measured (stop -> every new rank ready) and recorded.
    assert "restart_s" not in records[0]
    assert records[1]["restart_s"] > 0 and records[2]["restart_s"] > 0
    assert [(r["from"], r["to"]) for r in runner.restarts] == [("none", "ddp x2"),
                                                               ("ddp x2", "none")]
    # The ranks are new processes after each restart.
    pids = [{x["pid"] for x in r["ranks"]} for r in records]
    assert not (pids[0] & pids[1]) and not (pids[1] & pids[2])


def test_none_trained_here_is_the_group_of_one_without_its_process() -> None:
    """``none_here``: the same loop in the trial process — the same losses as a
    child process, no forkserver until a group of ranks needs one, and a
    restart back into ``none`` reuses the workload built here."""
    import os

    child, _ = _run({}, ParallelConfig("none"))
    here, runner = _run({}, ParallelConfig("none"), none_here=True)
    assert [r["loss"] for r in here] == [r["loss"] for r in child]
    assert {x["pid"] for r in here for x in r["ranks"]} == {os.getpid()}
    assert {x["pid"] for r in child for x in r["ranks"]} != {os.getpid()}

    seen: list[dict] = []
    runner = GroupRunner("lenet5-mnist", HP, ParallelConfig("none"), epochs=3, threads=1,
                         none_here=True)
    plan = {0: ParallelConfig("ddp", 2), 1: ParallelConfig("none")}

    def on_epoch(record: dict) -> Boundary:
        seen.append({**record, "forkserver": forkserver_pid(), "wl": id(runner._here_wl)})
        return Boundary(threads=1, restart=plan.get(record["epoch"]))

    try:
        records = runner.run(on_epoch)
    finally:
        runner.close()
    assert [r["strategy"] for r in records] == ["none", "ddp", "none"]
    assert seen[0]["forkserver"] is None  # none alone started no forkserver
    assert seen[1]["forkserver"] is not None
    assert [{x["pid"] for x in r["ranks"]} == {os.getpid()} for r in records] == [
        True, False, True]
    assert records[2]["restart_s"] > 0
    for got, want in zip(records, child, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=0.01)


def test_partition_optimizer_states_merge_and_slice_back() -> None:
    import torch

    from pipetune.parallel._runtime import merge_optimizer_states, slice_optimizer_state
    from workloads import get_workload

    wl = get_workload("lenet5-mnist")(HP)
    parts = wl.partitions(2)
    opts = [wl.build_optimizer(p.parameters()) for p in parts]
    x, y = next(iter(wl.train_batches(0)))
    for opt in opts:
        opt.zero_grad()
    wl.loss_fn(parts[1](parts[0](x)), y).backward()
    for opt in opts:
        opt.step()
    whole = wl.build_optimizer(wl.model.parameters())
    whole.load_state_dict(merge_optimizer_states([o.state_dict() for o in opts]))
    n0 = len(list(parts[0].parameters()))
    for p, q in zip(wl.model.parameters(), [*parts[0].parameters(), *parts[1].parameters()],
                    strict=True):
        assert p is q
        assert torch.equal(whole.state[p]["momentum_buffer"],
                           (opts[0] if any(q is r for r in parts[0].parameters())
                            else opts[1]).state[q]["momentum_buffer"])
    back = slice_optimizer_state(whole.state_dict(), n0, len(list(parts[1].parameters())))
    assert back["param_groups"][0]["params"] == list(range(len(list(parts[1].parameters()))))
    assert set(back["state"]) == set(opts[1].state_dict()["state"])


def test_threads_per_rank_is_the_share_divided_at_least_one() -> None:
    assert threads_per_rank(4, 2) == 2
    assert threads_per_rank(3, 2) == 1
    assert threads_per_rank(1, 4) == 1
    assert not math.isnan(threads_per_rank(2, 1))


def test_a_gpipe_checkpoint_resumes_as_a_single_process(tmp_path) -> None:
    """The partitions' optimizer states merge into the whole model's: a trial
    checkpointed by gpipe goes on as ``none`` (a Tune resume, or a restart)."""
    first = GroupRunner("lenet5-mnist", HP, ParallelConfig("gpipe", 2, chunks=2), epochs=1,
                        threads=1, checkpoint_dir=tmp_path)
    (record,) = first.run(lambda r: None)
    resumed = GroupRunner("lenet5-mnist", HP, ParallelConfig("none"), epochs=2, threads=1,
                          resume_path=record["checkpoint"])
    assert resumed.next_epoch == 1
    rest = resumed.run(lambda r: None)
    resumed.close()
    reference, _ = _run({}, ParallelConfig("none"))
    assert [r["epoch"] for r in rest] == [1]
    assert rest[0]["loss"] == pytest.approx(reference[1]["loss"], rel=0.02)
