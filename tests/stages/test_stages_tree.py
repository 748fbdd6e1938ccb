"""Schedules and the stage tree: pure data, no Ray."""

from __future__ import annotations

import pytest

from pipetune.errors import ConfigError
from pipetune.stages import (
    Constant,
    GrowingBatch,
    StageTree,
    StepDecay,
    TrialPlan,
    parse,
    step_decay,
    value,
)


def test_step_decay_values_change_at_listed_epochs() -> None:
    s = StepDecay(0.1, 0.5, at=(2, 4))
    assert s.values(6) == (0.1, 0.1, 0.05, 0.05, 0.025, 0.025)
    assert s.change_epochs() == (2, 4)


def test_growing_batch_is_an_integer_that_grows() -> None:
    s = GrowingBatch(32, 2, at=[1, 3])
    assert s.values(4) == (32, 64, 64, 128)
    assert all(isinstance(v, int) for v in s.values(4))


def test_param_space_dict_round_trips_and_plain_values_are_constant() -> None:
    spec = {"schedule": "step", "initial": 0.1, "rate": 0.2, "at": [3]}
    assert parse(spec) == StepDecay(0.1, 0.2, (3,))
    assert parse(parse(spec).to_config()) == parse(spec)
    assert value(spec, 3) == pytest.approx(0.02)
    assert value(0.3, 7) == 0.3 and parse(0.3) == Constant(0.3)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"schedule": "cosine", "initial": 1}, "cosine"),
        ({"schedule": "step", "initial": 0.1, "rate": 0.5}, "missing at"),
        ({"schedule": "step", "initial": 0.1, "rate": 0.5, "at": [4, 2]}, "ascending"),
        ({"schedule": "step", "initial": -1, "rate": 0.5, "at": [2]}, "must be > 0"),
        ({"schedule": "batch", "initial": 32.5, "factor": 2, "at": [2]}, "integer"),
        (step_decay(initial={"grid_search": [0.1]}, rate=0.5, at=[2]), "search domain"),
    ],
)
def test_bad_schedules_raise_one_config_error(spec: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse(spec)


def _plan(tid: str, lr: StepDecay, epochs: int = 6, **static: object) -> TrialPlan:
    return TrialPlan.from_config(tid, {"lr": lr.to_config(), **static}, epochs, namespace="w")


def test_trial_splits_into_homogeneous_stages() -> None:
    plan = _plan("a", StepDecay(0.1, 0.5, (2, 4)), batch_size=32)
    spans = [(s.start, s.stop, dict(s.values)["lr"]) for s in plan.stages()]
    assert spans == [(0, 2, 0.1), (2, 4, 0.05), (4, 6, 0.025)]


def test_common_prefixes_merge_and_a_longer_stage_is_split() -> None:
    tree = StageTree()
    # a keeps lr=0.1 for 4 epochs; b only for 2: a's first node is split at 2.
    tree.add(_plan("a", StepDecay(0.1, 0.5, (4,))))
    assert [(n.start, n.stop) for n in tree.nodes()] == [(0, 4), (4, 6)]
    tree.add(_plan("b", StepDecay(0.1, 0.5, (2,))))
    tree.add(_plan("c", StepDecay(0.1, 0.2, (2,))))
    tree.add(_plan("d", StepDecay(0.05, 0.5, (2,))))
    rows = {
        (r["start"], r["stop"], round(r["values"]["lr"], 9)): set(r["trials"])
        for r in tree.describe()
    }
    assert rows[(0, 2, 0.1)] == {"a", "b", "c"}
    assert rows[(2, 4, 0.1)] == {"a"}
    assert rows[(2, 6, 0.05)] == {"b"}
    assert rows[(2, 6, 0.02)] == {"c"}
    assert rows[(0, 2, 0.05)] == {"d"}
    assert tree.trial_epochs() == 24
    assert tree.unique_epochs() == 2 + 2 + 2 + 4 + 4 + 6
    assert tree.boundaries("a") == [1] and tree.boundaries("d") == []


def test_prefix_of_another_trial_ends_inside_its_node() -> None:
    tree = StageTree()
    tree.add(_plan("long", StepDecay(0.1, 0.5, (3,)), epochs=6))
    tree.add(_plan("short", StepDecay(0.1, 0.5, (3,)), epochs=4))
    assert [(n.start, n.stop) for n in tree.nodes()] == [(0, 3), (3, 4), (4, 6)]
    assert tree.unique_epochs() == 6
    assert tree.boundaries("long") == [3]  # "short" ends there


def test_other_fixed_values_or_namespace_never_share() -> None:
    tree = StageTree()
    tree.add(_plan("a", StepDecay(0.1, 0.5, (2,)), momentum=0.9))
    tree.add(_plan("b", StepDecay(0.1, 0.5, (2,)), momentum=0.8))
    other = TrialPlan.from_config("c", {"lr": StepDecay(0.1, 0.5, (2,)), "momentum": 0.9}, 6,
                                  namespace="other-seed")
    tree.add(other)
    assert len(tree.root.children) == 3
    assert tree.unique_epochs() == tree.trial_epochs()


def test_grid_tree_saves_what_the_prefixes_share() -> None:
    tree = StageTree()
    for lr0 in (0.1, 0.05):
        for rate in (0.1, 0.2):
            for a in (2, 3, 4):
                for b in (6, 8, 10):
                    tree.add(_plan(f"{lr0}-{rate}-{a}-{b}", StepDecay(lr0, rate, (a, b)), 12))
    # Per initial rate: [0, 4) at the initial value (split at 2 and 3 where
    # a=2, a=3 decay); per (rate, a): [a, 6) shared by the three b, then
    # 6 (b=6) + 2 + 4 (b=8) + 2 + 2 (b=10) epochs: 2 * (4 + 2 * (9 + 3 * 16)).
    assert tree.trial_epochs() == 36 * 12
    assert tree.unique_epochs() == 236
    for plan in tree.plans.values():
        path = tree.path(plan.trial_id)
        assert path[0].start == 0 and path[-1].stop == 12
        assert all(p.stop == c.start for p, c in zip(path, path[1:], strict=False))


def test_same_trial_twice_is_one_plan_and_a_changed_plan_is_refused() -> None:
    tree = StageTree()
    tree.add(_plan("a", StepDecay(0.1, 0.5, (2,))))
    tree.add(_plan("a", StepDecay(0.1, 0.5, (2,))))
    assert tree.trial_epochs() == 6
    with pytest.raises(ConfigError, match="already"):
        tree.add(_plan("a", StepDecay(0.1, 0.5, (3,))))


def test_order_deals_subtrees_to_lanes_and_lists_each_depth_first() -> None:
    tree = StageTree()
    for lr0 in (0.1, 0.05):
        for rate in (0.1, 0.2):
            for a in (2, 3):
                tree.add(_plan(f"{lr0}-{rate}-{a}", StepDecay(lr0, rate, (a,)), 6))
    order = tree.order(2)
    assert sorted(order) == sorted(tree.plans)
    # Neighbours in the list run at the same time: they start in different subtrees.
    for x, y in zip(order[::2], order[1::2], strict=True):
        assert x.split("-")[0] != y.split("-")[0]
    # One lane: depth first, so a subtree's trials are contiguous and each
    # trial after a subtree's first resumes from an earlier trial's stage.
    one = tree.order(1)
    assert [t.split("-")[0] for t in one] == ["0.1"] * 4 + ["0.05"] * 4 or \
        [t.split("-")[0] for t in one] == ["0.05"] * 4 + ["0.1"] * 4
    for i, trial in enumerate(one):
        if i % 4:
            assert any(set(tree.path(trial)) & set(tree.path(t)) for t in one[:i])
    with pytest.raises(ConfigError, match="lanes"):
        tree.order(0)
