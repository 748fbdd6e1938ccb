"""What a step asks the outside world, as small pure helpers over a
:class:`~pipetune.tuner.records.Cx`: the trial's memory peak and OOM kills,
the node's capacity, and the probe plan that follows from them.

Used by the transitions (:mod:`pipetune.tuner.machine`) and by the profile
window's deadline (:mod:`pipetune.tuner.profiling`).
"""

from __future__ import annotations

from dataclasses import replace

from pipetune.probing import GridProbe, ProbeStrategy, make_strategy, safe_candidates
from pipetune.probing.objectives import Objective
from pipetune.probing.plan import probe_order, slot_budget, strategy_for
from pipetune.tuner.records import Capacity, Cx, Machine, Usage
from pipetune.types import SystemConfig


def peak_mb(cx: Cx) -> float:
    """The trial's memory peak (0 before the trial is opened)."""
    return float(cx.ask(Usage())[0]) if cx.opened else 0.0


def oom_kills(cx: Cx) -> int:
    """OOM kills in the trial's cgroup so far (0 before it is opened)."""
    return int(cx.ask(Usage())[1]) if cx.opened else 0


def chooses_strategy(m: Machine) -> bool:
    """Whether the strategy is this tuner's to choose (``--parallel auto``: the
    space holds several); a trial run with one fixed strategy keeps it."""
    return len(m.params.space.parallel) > 1


def for_this_trial(m: Machine, cfg: SystemConfig) -> tuple[SystemConfig, str]:
    """A cluster's (or hint's) ``cfg`` as this trial would run it, and a note
    saying what was left out ("" when nothing).

    The ground truth's winners may name a parallel strategy (trials of
    ``--parallel auto`` probed it).  A trial whose strategy is fixed takes
    the winner's cores, memory and GPUs and keeps its own strategy: what
    matched is the workload's profile, and the cores/memory that served it
    serve this trial too, while the strategy is the user's choice here, not a
    reason to probe everything again.
    """
    own = m.ledger.config.parallel
    if chooses_strategy(m) or cfg.parallel == own:
        return cfg, ""
    return (replace(cfg, parallel=own),
            f"; its strategy {cfg.parallel} left out: this trial's strategy is fixed")


def unusable(m: Machine, cx: Cx, cfg: SystemConfig) -> str | None:
    """Why a matched cluster's ``cfg`` cannot be applied to this trial, or None
    (its strategy counts only where the tuner chooses strategies:
    :func:`for_this_trial` puts a fixed trial's own in it)."""
    space = m.params.space
    if replace(cfg, parallel=space.config_strategy) not in space.configs() or (
            chooses_strategy(m) and cfg.parallel not in space.parallel):
        return "is outside this trial's space"
    if not safe_candidates([cfg], peak_mb(cx), m.params.memory_margin)[0]:
        return "is below this trial's memory peak"
    return None


def probe_plan(m: Machine, cx: Cx,
               hint: SystemConfig | None) -> tuple[ProbeStrategy | None, list[SystemConfig], str]:
    """(strategy, candidates in order, note) for probing now; no strategy
    when fewer than two configs are safe to probe."""
    p = m.params
    if chooses_strategy(m):
        return strategy_plan(m, hint)
    peak = peak_mb(cx)
    safe, unsafe = safe_candidates(p.space.configs(), peak, p.memory_margin)
    note = f"; {len(unsafe)} configs below memory peak {peak:.0f} MB skipped" if unsafe else ""
    capacity = cx.ask(Capacity(max(p.space.cores))) if cx.opened else None
    if capacity is not None and capacity < max(p.space.cores):
        # Other trials share the node: a config beyond this trial's share
        # could not be put in force, so it cannot be measured either.
        safe = [c for c in safe if c.cores <= capacity]
        note += (f"; the node is shared: at most {capacity} core(s) for this trial now, "
                 "more when the other trials end")
    order = probe_order(safe, hint)
    if len(order) < 2:
        return None, order, note
    name, why = strategy_for(p.strategy, m.ledger.windows_per_epoch)
    kwargs = ({"min_windows": p.halving_min_windows, "eta": p.halving_eta}
              if name == "halving" else {})
    return make_strategy(name, p.space, order, start=p.default, **kwargs), order, note + why


def epochs_left(m: Machine) -> int | None:
    """Epochs the training has left (None: the trial's length is unknown)."""
    total = m.params.total_epochs
    return None if total is None else max(total - m.ledger.trained_epochs(), 0)


def budget(m: Machine, strategy: ProbeStrategy) -> int | None:
    """Slots the plan may still use, leaving the winner its epoch."""
    return slot_budget(epochs_left(m), strategy.unit, m.ledger.windows_per_epoch)


def strategy_plan(
    m: Machine, hint: SystemConfig | None,
) -> tuple[ProbeStrategy | None, list[SystemConfig], str]:
    """The probe plan when the space holds several parallel strategies: each
    strategy once, one epoch each, at the config in force (the trial's
    current core share and memory), the strategy in force first (it needs no
    restart) unless a similar workload's winner is known.  Cores are not
    probed beside strategies: a grid of both would cost a restart per core
    count.  Grid, whole epochs: a strategy change restarts the worker group,
    which happens only at an epoch boundary."""
    now = m.ledger.config
    names = [s for s in m.params.space.parallel if not sequential_only(m, s)]
    note = "" if len(names) == len(m.params.space.parallel) else (
        "; mp not probed: its ranks compute one after another, so at the same cores it "
        "is never faster than none (it splits memory only)")
    order = [replace(now, parallel=s) for s in names]
    order.sort(key=lambda c: c.parallel != now.parallel)
    if hint is not None and hint.parallel in names:
        order = probe_order(order, replace(now, parallel=hint.parallel))
    if len(order) < 2:
        return None, order, note
    return GridProbe(order, keep=now), order, "; probing parallel strategies" + note


def sequential_only(m: Machine, strategy: str) -> bool:
    """Whether probing ``strategy`` cannot pay under this trial's objective.

    ``mp`` (model parallelism without micro-batches) runs its ranks one
    after another — a rank waits for the previous one's activations, and
    for the next one's gradients — so the trial's cores (or GPUs) work one
    rank at a time: with ``none`` in the space, every objective but memory
    (runtime, energy, their product, cores × time) is at best ``none``'s
    (measured here: 1.5–1.9× the single process's epoch time on
    deepcnn-mnist).  Its one gain is splitting the model, which the memory
    objective measures; a model too large for one device is trained with a
    fixed ``--parallel mp`` or under that objective.
    """
    return (strategy == "mp" and "none" in m.params.space.parallel
            and m.ledger.objective is not Objective.MEMORY)
