"""The stage store's protocol without Ray: claims, waiting, resuming, leases."""

from __future__ import annotations

import time

from pipetune.stages import StageStore, plan_for, step_decay


def _plans() -> tuple:
    a = plan_for({"lr": step_decay(0.1, 0.5, [2])}, 4, namespace="w")
    b = plan_for({"lr": step_decay(0.1, 0.2, [2])}, 4, namespace="w")
    return a, b


def _train(store: StageStore, trial: str, plan, epochs: range) -> None:  # noqa: ANN001
    keys = plan.epoch_keys()
    for e in epochs:
        ckpt = f"/ckpt/{keys[e]}" if store.wants_checkpoint(trial, plan.trial_id, e, keys[e]) \
            else None
        store.record(trial, keys[e], {"loss": float(e)}, seconds=0.1, cpu_s=0.1, checkpoint=ckpt)


def test_second_trial_waits_then_resumes_at_the_branch_with_the_prefix_replayed() -> None:
    store = StageStore()
    a, b = _plans()
    store.register([a, b])
    assert store.acquire("ta", a).resume_epoch == -1  # nothing trained: from scratch
    assert store.acquire("tb", b).wait_for == "ta"  # a claimed the shared prefix
    _train(store, "ta", a, range(0, 2))
    got = store.acquire("tb", b)
    assert got.wait_for is None and got.resume_epoch == 1
    assert got.checkpoint == f"/ckpt/{a.epoch_keys()[1]}"  # written where the tree branches
    assert [m["loss"] for m in got.replay] == [0.0, 1.0]
    _train(store, "ta", a, range(2, 4))
    _train(store, "tb", b, range(2, 4))
    stats = store.stats()
    assert stats["epochs_trained"] == 6 == stats["tree_unique_epochs"]
    assert stats["checkpoints"] == 1  # only the branch point


def test_release_and_lease_unblock_a_waiting_trial() -> None:
    store = StageStore(lease_s=0.05)
    a, b = _plans()
    store.register([a, b])
    store.acquire("ta", a)
    assert store.acquire("tb", b).wait_for == "ta"
    assert store.release("ta") == 4
    assert store.acquire("tb", b).wait_for is None  # tb now claims the prefix itself
    assert store.acquire("ta2", a).wait_for == "tb"
    time.sleep(0.1)  # tb not heard of for longer than the lease
    assert store.acquire("ta2", a).wait_for is None


def test_share_false_trains_every_trial_alone() -> None:
    store = StageStore(share=False)
    a, b = _plans()
    store.acquire("ta", a)
    assert store.acquire("tb", b).wait_for is None
    _train(store, "ta", a, range(4))
    assert store.acquire("ta-again", a).resume_epoch == -1
    assert store.stats()["checkpoints"] == 0


def test_a_trial_paused_on_a_replayed_epoch_resumes_after_it(tmp_path) -> None:  # noqa: ANN001
    """Replays go through the caller's ``replay`` after ``load`` ran, so the
    job's trainable gives each replayed epoch a Tune checkpoint of the loaded
    state: a trial HyperBand pauses on a replay resumes at the next epoch,
    and the store replays only the rest of the prefix (Tune hears no epoch
    twice; it did when replays had no checkpoint and the trial started over)."""
    from pipetune.stages.session import StageSession

    a, b = _plans()
    store = StageStore()
    store.register([a, b])
    first = StageSession(store, "ta", a, tmp_path, report_fn=lambda m, **kw: None,
                         replay_fn=lambda m: None)
    for e in range(first.resume(lambda state: None), 2):
        first.report({"loss": float(e), "epoch": e}, state=lambda: {"w": 1})
    events: list[tuple] = []

    def session() -> StageSession:
        return StageSession(store, "tb", b, tmp_path, report_fn=lambda m, **kw: None,
                            replay_fn=lambda m: events.append(("default", m["epoch"])))

    start = session().resume(lambda state: events.append(("load", state)), 0,
                             replay=lambda m: events.append(("replay", m["epoch"])))
    assert start == 2 and events == [("load", {"w": 1}), ("replay", 0), ("replay", 1)]
    events.clear()  # paused on epoch 0's replay: Tune restores that replay's checkpoint
    start = session().resume(lambda state: events.append(("load", state)), 1,
                             replay=lambda m: events.append(("replay", m["epoch"])))
    assert start == 2 and events == [("load", {"w": 1}), ("replay", 1)]
