"""Trials split into stages, merged into a stage tree.

- :class:`TrialPlan` — one trial as the tree sees it: its fixed
  hyperparameters, its schedules and its number of epochs.  Its *points*
  are the full hyperparameter values of each epoch; its *stages* are the
  maximal spans of equal points (:class:`Stage`); its *epoch keys* name each
  prefix ``epochs 0..e`` by a hash, so two trials share epoch ``e`` exactly
  when their keys at ``e`` are equal (same namespace, same values in every
  epoch up to ``e``).
- :class:`StageTree` — trials inserted by longest common prefix.  A node is a
  span ``[start, stop)`` of epochs with constant values, trained once; its
  children start at ``stop`` from its checkpoint.  Inserting a trial that
  keeps a value for fewer epochs than an existing node *splits* that node at
  the trial's change point, so every node is shared by exactly the trials
  listed on it.

Pure data: no Ray, no torch.  The executor (:mod:`pipetune.stages.run`) asks
the tree where checkpoints are needed (:meth:`StageTree.boundaries`), the
benchmark and the report ask it how much training sharing saves
(:meth:`StageTree.unique_epochs` vs :meth:`StageTree.trial_epochs`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipetune.errors import ConfigError
from pipetune.stages.schedules import Schedule, is_schedule, parse

__all__ = ["Stage", "StageNode", "StageTree", "TrialPlan"]

Point = tuple[tuple[str, Any], ...]


def _canonical(obj: Any) -> str:
    # repr() of floats round-trips exactly, so 0.1*0.5 and 0.05 stay apart
    # (they are different learning rates to the optimizer).
    return json.dumps(obj, sort_keys=True, default=repr, separators=(",", ":"))


@dataclass(frozen=True)
class Stage:
    """Epochs ``[start, stop)`` of one trial during which every value is constant."""

    start: int
    stop: int
    values: Point

    @property
    def epochs(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class TrialPlan:
    """One trial's hyperparameters over its epochs; see the module docstring.

    ``namespace`` holds whatever else decides the numbers (workload, data,
    seed): trials of different namespaces never share a stage.
    """

    trial_id: str
    epochs: int
    static: Point = ()
    schedules: tuple[tuple[str, Schedule], ...] = ()
    namespace: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"trial {self.trial_id}: epochs={self.epochs!r}: must be >= 1")

    @classmethod
    def from_config(
        cls,
        trial_id: str,
        config: Mapping[str, Any],
        epochs: int,
        *,
        namespace: str = "",
        ignore: Iterable[str] = (),
    ) -> TrialPlan:
        """A plan from a trial's resolved config: every schedule-valued key
        (see :func:`~pipetune.stages.schedules.is_schedule`) is scheduled,
        every other key is fixed; keys in ``ignore`` (system parameters that
        do not change the numbers) are left out."""
        skip = set(ignore)
        static: list[tuple[str, Any]] = []
        schedules: list[tuple[str, Schedule]] = []
        for key in sorted(config):
            if key in skip:
                continue
            if is_schedule(config[key]):
                schedules.append((key, parse(config[key])))
            else:
                static.append((key, config[key]))
        return cls(trial_id, epochs, tuple(static), tuple(schedules), namespace)

    def point(self, epoch: int) -> Point:
        """Every hyperparameter's value during ``epoch``, sorted by name."""
        values = dict(self.static)
        values.update({k: s.at_epoch(epoch) for k, s in self.schedules})
        return tuple(sorted(values.items()))

    def stages(self) -> list[Stage]:
        """The trial's homogeneous spans, in order, covering ``[0, epochs)``."""
        out: list[Stage] = []
        start, current = 0, self.point(0)
        for e in range(1, self.epochs):
            p = self.point(e)
            if p != current:
                out.append(Stage(start, e, current))
                start, current = e, p
        out.append(Stage(start, self.epochs, current))
        return out

    def epoch_keys(self) -> list[str]:
        """``keys[e]`` names the prefix of epochs ``0..e`` (namespace included)."""
        keys: list[str] = []
        h = hashlib.sha256(_canonical(self.namespace).encode())
        for e in range(self.epochs):
            h.update(_canonical(self.point(e)).encode())
            keys.append(h.copy().hexdigest()[:24])
        return keys


@dataclass(eq=False)
class StageNode:
    """Epochs ``[start, stop)`` with constant ``values``, trained once.

    ``first_key`` is the epoch key of ``start`` (it names the whole prefix);
    ``trials`` run through this node; ``ending`` stop at its end.  The root
    is a sentinel with no epochs.
    """

    start: int
    stop: int
    values: Point
    first_key: str = ""
    parent: StageNode | None = None
    children: list[StageNode] = field(default_factory=list)
    trials: set[str] = field(default_factory=set)
    ending: set[str] = field(default_factory=set)

    @property
    def epochs(self) -> int:
        return self.stop - self.start

    def walk(self) -> Iterator[StageNode]:
        """This node and every node below it, parents before children."""
        yield self
        for child in self.children:
            yield from child.walk()


class StageTree:
    """Stage tree of a set of trials; see the module docstring.

    Not thread-safe: one owner (the stage store actor, a test) inserts.
    """

    def __init__(self) -> None:
        self.root = StageNode(0, 0, ())
        self.plans: dict[str, TrialPlan] = {}
        self._keys: dict[str, list[str]] = {}

    def __len__(self) -> int:
        """Number of stage nodes (the root not counted)."""
        return sum(1 for _ in self.root.walk()) - 1

    def nodes(self) -> list[StageNode]:
        """Every stage node, parents before children."""
        return list(self.root.walk())[1:]

    def add(self, plan: TrialPlan) -> None:
        """Insert ``plan`` by longest common prefix, splitting a node where
        the trial's stage ends earlier than the node.

        Raises:
            ConfigError: a trial id inserted twice with another plan.
        """
        if plan.trial_id in self.plans:
            if self.plans[plan.trial_id] != plan:
                raise ConfigError(f"trial {plan.trial_id}: already in the stage tree, differently")
            return
        keys = plan.epoch_keys()
        self.plans[plan.trial_id] = plan
        self._keys[plan.trial_id] = keys
        node = self.root
        for stage in plan.stages():
            start = stage.start
            while start < stage.stop:
                # A child's first-epoch key names the whole prefix up to it, so
                # equal keys mean equal history (namespace included).
                child = next((c for c in node.children if c.first_key == keys[start]), None)
                if child is None:
                    child = StageNode(start, stage.stop, stage.values, keys[start], node)
                    node.children.append(child)
                elif stage.stop < child.stop:
                    self._split(child, stage.stop)
                child.trials.add(plan.trial_id)
                node, start = child, child.stop
        node.ending.add(plan.trial_id)

    def _split(self, node: StageNode, at: int) -> None:
        """Cut ``node`` at epoch ``at``: the tail becomes its only child."""
        sharer = next(iter(node.trials))
        tail = StageNode(at, node.stop, node.values, self._keys[sharer][at], node)
        tail.children, tail.trials, tail.ending = node.children, set(node.trials), node.ending
        for c in tail.children:
            c.parent = tail
        node.stop, node.children, node.ending = at, [tail], set()

    def path(self, trial_id: str) -> list[StageNode]:
        """The nodes a trial trains through, root's child first."""
        out: list[StageNode] = []
        node = self.root
        while True:
            nxt = next((c for c in node.children if trial_id in c.trials), None)
            if nxt is None:
                return out
            out.append(nxt)
            node = nxt

    def boundaries(self, trial_id: str) -> list[int]:
        """Epochs after which the trial's checkpoint is a branch point other
        trials resume from: the last epoch of every node on its path that has
        more than one child, or where another trial ends (and could resume)."""
        return [
            n.stop - 1
            for n in self.path(trial_id)
            if len(n.children) > 1 or (n.children and n.ending)
        ]

    def order(self, lanes: int) -> list[str]:
        """Trial ids in an order that keeps ``lanes`` concurrent trials busy.

        Trials run in list order, ``lanes`` at a time.  Two that share an
        untrained prefix would run it once while the other waits, so the
        tree is cut into at least ``lanes`` subtrees (widest first), the
        subtrees are dealt to lanes by work (largest first, to the least
        loaded), each lane lists its trials depth-first (a trial's parent
        stages are trained before the trials that resume from them) and the
        lanes are interleaved.  Deterministic for a given tree.
        """
        if lanes < 1:
            raise ConfigError(f"lanes={lanes}: must be >= 1")

        def work(n: StageNode) -> int:
            return sum(x.epochs for x in n.walk())

        frontier = [self.root]
        # Trials that end at a node cut off the frontier go with its first child.
        carry: dict[int, list[str]] = {}
        while len(frontier) < lanes:
            wide = [n for n in frontier if n.children]
            if not wide:
                break
            widest = max(wide, key=work)
            frontier.remove(widest)
            frontier.extend(widest.children)
            carry.setdefault(id(widest.children[0]), []).extend(
                carry.pop(id(widest), []) + sorted(widest.ending)
            )
        loads = [0] * lanes
        lane_trials: list[list[str]] = [[] for _ in range(lanes)]
        for sub in sorted(frontier, key=lambda n: (-work(n), n.first_key)):
            i = loads.index(min(loads))
            loads[i] += work(sub)
            lane_trials[i].extend(carry.get(id(sub), []))
            for node in sub.walk():
                lane_trials[i].extend(sorted(node.ending))
        out: list[str] = []
        for k in range(max(len(t) for t in lane_trials)):
            out.extend(t[k] for t in lane_trials if k < len(t))
        return out

    def trial_epochs(self) -> int:
        """Epochs trial-based execution trains (every trial from scratch)."""
        return sum(p.epochs for p in self.plans.values())

    def unique_epochs(self) -> int:
        """Epochs stage-based execution trains (every node once)."""
        return sum(n.epochs for n in self.nodes())

    def describe(self) -> list[dict[str, Any]]:
        """Plain rows for reports and JSON: one per node, with its parent's
        index, the plans through it (``trials``) and those ending at its end."""
        index = {id(n): i for i, n in enumerate(self.nodes())}
        return [
            {
                "node": index[id(n)],
                "parent": index.get(id(n.parent)) if n.parent is not self.root else None,
                "start": n.start,
                "stop": n.stop,
                "values": dict(n.values),
                "trials": sorted(n.trials),
                "ending": sorted(n.ending),
            }
            for n in self.nodes()
        ]
