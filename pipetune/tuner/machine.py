"""Algorithm 1 as a pure state machine: ``step(machine, event) -> (machine, effects)``.

No I/O, threads or clocks in here: the runner (:mod:`pipetune.tuner.runner`)
turns the training loop's boundaries into :class:`Event` s, feeds them to
:func:`step` and carries out the :class:`Effect` s it returns — applying a
config, taking a profile, writing the store, publishing a decision.  What
the machine must *know* from the outside world within one step (what a
config change put in force, the profile, the ground truth's match, the
trial's memory peak) it asks for with an :class:`Ask` effect: the runner
answers it and steps the same event again with the answer appended to
``event.answers``.  A step is a pure function of its inputs, so replaying a
recorded event (answers included) gives the same effects (tests/tuner/
test_machine.py drives it that way, without threads or fake clocks).

The states, each a frozen record of its own data (what every state shares
— the config in force, the epochs' marks and energy — is the
:class:`Ledger`)::

    state        event                          → next state   effects / decision
    ───────────  ─────────────────────────────  ─────────────  ───────────────────────────────
    Start        START | first boundary         → Profiling    open trial, apply default
                                                               (a workload known by name:
                                                               its hint's config; HINTED),
                                                               start the profiler (late)
    Profiling    PROFILER_STARTED               → Profiling    (samples count from now)
    Profiling    EPOCH_END | WINDOW_END,        → Settled      apply the cluster's config;
                 profile matched (score ≥ thr.)                MATCHED, observation record
    Profiling    … matched the hint's cluster   → Settled      nothing applied; MATCHED
                                                               ("confirmed")
    Profiling    … no match, ≥ 2 safe configs   → Probing      apply 1st candidate; PROBE
    Profiling    … nothing to probe / no time   → Settled      apply default (a hinted
                                                               workload keeps the hint's
                                                               config); FALLBACK
    Probing      boundary, slot measured,       → Probing      apply next candidate; PROBE
                 strategy proposes another
    Probing      … strategy done / trial ends   → Settled      apply best; SETTLED,
                                                               ground-truth record
    Probing      … next probe exceeds the share → Settled      apply default; FALLBACK
    Profiling    PARENT_STAGE (resumed from a   → Settled      apply the parent's config
                 settled parent stage, same                    within the node share; MATCHED
                 batch size, nothing profiled)                 ("parent stage KEY"), stop the
                                                               profiler (late)
    Profiling    … batch size changed, parent   → Profiling    nothing: profiled afresh
                 not settled, or profiled already
    Settled      REPROFILE (the batch size      → Profiling    apply default, start the
                 changes at this boundary)                     profiler (late): a new workload
    any          REBALANCE (not mid-probe)      → same         take the node share now
    any          REASSERT                       → same         apply the config in force again
    any          FAIL | an answer failed        → Degraded     restore default; DEGRADED
    Degraded     EPOCH_END                      → Degraded     epoch record only
    any          CLOSE                          → same         stop profiler, release trial

The rules that depend on the probing strategy (halving's windows, slot
budgets, the hint-first order, which intervals count) are in
:mod:`pipetune.probing.plan`; the profile window's rules are in
:mod:`pipetune.tuner.profiling`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

from pipetune.errors import NotSupportedError
from pipetune.groundtruth import Hint, Match
from pipetune.probing import Measurement, Objective, ProbeStrategy, ProbeUnit
from pipetune.probing.plan import counted_intervals
from pipetune.tuner import profiling
from pipetune.tuner.records import (
    TRANSITIONS,
    Apply,
    Ask,
    AskFailed,
    Capacity,
    CpusNow,
    Cx,
    Decide,
    Degraded,
    Event,
    Interval,
    Kind,
    KnownWorkload,
    Machine,
    MatchProfile,
    Note,
    OpenEpoch,
    OpenTrial,
    Pending,
    Probing,
    Profiling,
    PublishSpeeds,
    Release,
    Settled,
    Slot,
    StageHint,
    Start,
    StartProfiler,
    StopProfiler,
    TakeShare,
    WriteEpoch,
    WriteGroundTruth,
    guard,
)
from pipetune.tuner.rules import (
    budget,
    chooses_strategy,
    epochs_left,
    for_this_trial,
    oom_kills,
    probe_plan,
    unusable,
)
from pipetune.types import Decision, DecisionKind, EpochProfile, EpochResult, Phase, SystemConfig

__all__ = ["TRANSITIONS", "step"]


def step(m: Machine, ev: Event) -> tuple[Machine, tuple[Any, ...]]:
    """The one transition function (module docstring).  Returns the next
    machine and the effects to carry out in order; when the last effect is
    an :class:`Ask`, the machine returned is ``m`` unchanged and the runner
    steps ``ev`` again with the answer appended to ``ev.answers``."""
    cx, before = Cx(m, ev.answers), m
    if isinstance(m.state, Probing):  # the strategy is mutated on a copy only
        m = replace(m, state=replace(m.state, strategy=copy.deepcopy(m.state.strategy)))
    try:
        try:
            new = _on(m, ev, cx)
        except AskFailed as f:
            new = _degrade(m, cx, f"{ev.kind.value}: {f.reason}", ev.epoch)
    except Pending as p:
        return before, (*cx.effects, Ask(p.query))
    guard(m.phase, new.phase)
    if new.phase is not m.phase:
        cx.emit(Note("info", f"{m.phase.value} -> {new.phase.value} ({new.state.reason})"))
    return new, tuple(cx.effects)


def _on(m: Machine, ev: Event, cx: Cx) -> Machine:
    """(state, event) → work: the table of the module docstring."""
    s, k = m.state, ev.kind
    if k is Kind.CLOSE:
        cx.emit(StopProfiler())
        if cx.opened:
            cx.ask(Release())
        return replace(m, ledger=replace(m.ledger, opened=False))
    if k is Kind.FAIL:
        return _degrade(m, cx, ev.reason, ev.epoch)
    if isinstance(s, Degraded):
        return _degraded_boundary(m, ev, cx)
    if k is Kind.START:
        return _begin(m, cx) if isinstance(s, Start) else m
    if k is Kind.PROFILER_STARTED:
        if not isinstance(s, Profiling):
            return m
        return replace(m, state=replace(s, sampling_from=ev.t, wait_s=ev.wait_s))
    if k is Kind.PARENT_STAGE:
        return _from_parent(m, cx, ev.stage)
    if k is Kind.REPROFILE:
        return _reprofile(m, cx, ev.reason)
    if k is Kind.REBALANCE:
        return _rebalance(m, cx)
    if k is Kind.REASSERT:
        if not m.ledger.opened:
            return m
        cx.emit(Note("warning", f"its limits were lifted from outside (a restarted daemon "
                                f"released it?): {m.ledger.config} applied again"))
        return _apply(m, cx, m.ledger.config)
    # a boundary: EPOCH_START, WINDOW_END or EPOCH_END
    if isinstance(s, Start):  # boundaries before start(): start now
        m = _begin(m, cx)
    m = _add_energy(m, ev)
    if k is Kind.EPOCH_START:
        return _epoch_start(m, ev)
    m, interval = _close_interval(m, ev)
    if k is Kind.WINDOW_END:
        m = replace(m, ledger=replace(m.ledger, windows_in_epoch=m.ledger.windows_in_epoch + 1))
        if isinstance(m.state, Probing) and interval is not None:
            return _probe_progress(m, ev, cx, epoch_over=False)
        if isinstance(m.state, Profiling):
            m, taken = profiling.at_window(m, ev, cx)
            if taken:
                m = _after_profile(m, ev, cx)
                cx.emit(StopProfiler(late=True))
        return m
    return _epoch_end(m, ev, cx)


# -- START → PROFILING ----------------------------------------------------------------------


def _begin(m: Machine, cx: Cx) -> Machine:
    m = replace(m, state=Profiling())
    cx.ask(OpenTrial())
    m = replace(m, ledger=replace(m.ledger, opened=True))
    hint = cx.ask(KnownWorkload(m.params.workload)) if m.params.workload else None
    if hint is not None:
        hint = replace(hint, config=for_this_trial(m, hint.config)[0])
    if hint is not None and hint.config in m.params.space.configs():
        m = _start_hinted(m, cx, hint)
    else:
        m = _apply(m, cx, m.params.default)
    # The default is in force: that is what the training thread waits for.
    # Attaching perf takes a while; the training runs on meanwhile.
    cx.emit(StartProfiler())
    return m


def _start_hinted(m: Machine, cx: Cx, hint: Hint) -> Machine:
    """A workload the ground truth knows by name starts at its cluster's
    config (within the node share); the profile, taken there, confirms or
    corrects it (HINTED)."""
    cfg, capped = hint.config, ""
    share = cx.ask(Capacity(cfg.cores))
    if share is not None and 0 < share < cfg.cores:
        cfg, capped = replace(cfg, cores=share), f", {share} core(s): the node share"
    m = _apply(m, cx, cfg)
    m = replace(m, state=Profiling(f"known workload, confirming cluster {hint.cluster}"),
                ledger=replace(m.ledger, hint=hint))
    _decide(m, cx, DecisionKind.HINTED, m.ledger.config, 0,
            f"{hint.describe()}: applied at start{capped}; the profile confirms or corrects it")
    return m


def _from_parent(m: Machine, cx: Cx, hint: StageHint | None) -> Machine:
    """A trial resumed from a parent stage's checkpoint: the child stage is
    decided once, from the parent's settled config and profile, instead of
    being profiled and probed as a new trial — the parent *was* this
    workload up to the branch point.  The decision is MATCHED (the child is
    matched to its parent: ``pt_phase`` "matched", the reason names the
    parent stage), capped by the node share like a known workload's hint.
    A batch size that changes at the branch point makes another workload
    to the system, so that child profiles (and matches or probes) afresh;
    so does one whose parent was not settled at its end (still profiling or
    probing, or degraded).  Only before anything is profiled: a trial that
    has its own profile already decides by it, and before START (which the
    trial session always posts first) there is nothing to decide from:
    START → SETTLED is no transition of the table."""
    if hint is None:
        return m
    s = m.state
    fresh = ""
    if isinstance(s, Start):
        fresh = "this trial's tuner has not started"
    elif not isinstance(s, Profiling) or s.epochs > 0 or m.ledger.profile is not None:
        fresh = f"this trial's tuner is {m.phase.value} already"
    elif hint.phase is not Phase.SETTLED:
        fresh = f"its tuner was {hint.phase.value} at its end, not settled"
    elif hint.batch_changed:
        fresh = (f"batch size {hint.parent_batch_size} there, {hint.batch_size} here: "
                 f"another workload to the system")
    elif hint.config not in m.params.space.configs():
        fresh = f"its config {hint.config} is not in this trial's space"
    if fresh:
        cx.emit(Note("info", f"parent stage {hint.key} not used ({fresh}): profiled afresh"))
        if isinstance(s, Profiling) and s.epochs == 0 and m.ledger.profile is None:
            m = replace(m, state=replace(s, reason=f"resumed from parent stage {hint.key}, "
                                                   f"profiled afresh: {fresh}"))
        return m
    cfg, capped = hint.config, ""
    share = cx.ask(Capacity(cfg.cores))
    if share is not None and 0 < share < cfg.cores:
        cfg, capped = replace(cfg, cores=share), f"; {share} core(s): the node share"
    m = _apply(m, cx, cfg)
    reason = f"parent stage {hint.key}"
    m = replace(m, state=Settled(reason, m.ledger.config),
                ledger=replace(m.ledger, profile=hint.profile))
    _decide(m, cx, DecisionKind.MATCHED, m.ledger.config, hint.epoch,
            f"{hint.describe()}; decided once for this stage from the parent's profile, "
            f"not profiled{capped}")
    cx.emit(StopProfiler(late=True))
    return m


def _reprofile(m: Machine, cx: Cx, why: str) -> Machine:
    """The workload changed under a settled trial — its schedule changes the
    batch size at this boundary — so the config settled for the old one
    says little about the new one: profile it again as a new trial would,
    at the default, then match or probe.  What was learnt of the old
    workload (its profile, speeds, hint) is dropped; its ground-truth
    records stay.  Only from SETTLED: a trial still profiling or probing
    decides on epochs of both batch sizes (a note says so)."""
    if not isinstance(m.state, Settled):
        cx.emit(Note("info", f"{why}: not re-profiled while {m.phase.value}"))
        return m
    m = _apply(m, cx, m.params.default)
    m = replace(m, state=Profiling(f"re-profiling: {why}"),
                ledger=replace(m.ledger, profile=None, profile_notes=(), window_profile=None,
                               hint=None, speeds=()))
    cx.emit(StartProfiler())
    return m


# -- boundaries -------------------------------------------------------------------------------


def _add_energy(m: Machine, ev: Event) -> Machine:
    led = m.ledger
    if ev.energy is None or led.energy_j is None:
        return replace(m, ledger=replace(led, energy_j=None, epochs_posted=max(
            led.epochs_posted, ev.posted)))
    joules, method = ev.energy
    return replace(m, ledger=replace(
        led, energy_j=led.energy_j + joules, energy_methods=led.energy_methods | {method},
        epochs_posted=max(led.epochs_posted, ev.posted)))


def _epoch_start(m: Machine, ev: Event) -> Machine:
    led = m.ledger
    opened = tuple(o for o in led.open_epochs if o.epoch != ev.epoch)
    led = replace(led, mark=(ev.epoch, ev.t, 0), windows_in_epoch=0,
                  open_epochs=(*opened, OpenEpoch(ev.epoch, ev.t, led.config)))
    s = m.state
    if isinstance(s, Profiling) and s.t0 is None:
        s = replace(s, t0=ev.t)
    return replace(m, ledger=led, state=s)


def _close_interval(m: Machine, ev: Event) -> tuple[Machine, Interval | None]:
    """The interval since the previous mark of the same epoch, given to the
    probe slot in progress (whether it counts is decided later)."""
    mark = m.ledger.mark
    m = replace(m, ledger=replace(m.ledger, mark=(ev.epoch, ev.t, ev.steps)))
    if mark is None or mark[0] != ev.epoch or ev.steps < mark[2] or ev.t <= mark[1]:
        return m, None
    energy = ev.energy[0] if ev.energy is not None else None
    iv = Interval(mark[1], ev.t, ev.steps - mark[2], energy)
    s = m.state
    if isinstance(s, Probing) and s.slot is not None:
        m = replace(m, state=replace(s, slot=replace(s.slot,
                                                     intervals=(*s.slot.intervals, iv))))
    return m, iv


def _epoch_end(m: Machine, ev: Event, cx: Cx) -> Machine:
    led = m.ledger
    m = replace(m, ledger=replace(led, windows_in_epoch=led.windows_in_epoch + 1, mark=None,
                                  epochs_done=max(led.epochs_done, ev.epoch + 1)))
    profile = None
    if isinstance(m.state, Profiling):
        m = replace(m, state=replace(m.state, epochs=m.state.epochs + 1),
                    ledger=replace(m.ledger, windows_per_epoch=m.ledger.windows_in_epoch))
        m, profile = profiling.at_epoch_end(m, ev, cx)
    if profile is None and m.ledger.window_profile is not None:
        # taken at a step window of this epoch: the epoch's record carries it
        profile = m.ledger.window_profile
        m = replace(m, ledger=replace(m.ledger, window_profile=None))
    m = _write_epoch(m, ev, cx, profile)
    if isinstance(m.state, Profiling) and profile is not None:
        m = _after_profile(m, ev, cx)
        # Stopped once the decision is out: stopping perf takes a while.
        cx.emit(StopProfiler(late=True))
    elif isinstance(m.state, Probing):
        m = _probe_progress(_with_group_facts(m, ev), ev, cx, epoch_over=True)
    return m


def _with_group_facts(m: Machine, ev: Event) -> Machine:
    """The slot in progress with the worker-group facts this epoch reported:
    the restart (a change of parallel strategy), counted in the probe's
    time, and the heaviest rank's peak memory, kept as the slot's peak."""
    s = m.state
    if not isinstance(s, Probing) or s.slot is None or ev.result is None:
        return m
    slot = s.slot
    restart_s = ev.result.metrics.get("restart_s")
    if restart_s:
        slot = replace(slot, restart_s=slot.restart_s + float(restart_s))
    peak = ev.result.metrics.get("rss_peak_per_rank_mb")
    if peak is not None and math.isfinite(peak) and peak > 0:
        slot = replace(slot, rss_peak_per_rank_mb=max(slot.rss_peak_per_rank_mb or 0.0, peak))
    return m if slot is s.slot else replace(m, state=replace(s, slot=slot))


def _write_epoch(m: Machine, ev: Event, cx: Cx, profile: EpochProfile | None) -> Machine:
    led = m.ledger
    energy_j = led.energy_j if led.energy_methods else None
    method = "+".join(sorted(led.energy_methods)) or None
    if ev.result is not None:
        # The trial session's record (what was in force, read back; its
        # energy): built once per epoch, enriched with the tuner's energy
        # figure where the session had none.
        result = ev.result
        if result.energy_j is None and energy_j is not None:
            result = replace(result, energy_j=energy_j, energy_method=method)
    else:
        this = next((o for o in led.open_epochs if o.epoch == ev.epoch), None)
        result = EpochResult(
            epoch=ev.epoch, config=this.config if this is not None else led.config,
            seconds=ev.t - this.t0 if this is not None else math.nan, steps=ev.steps,
            metrics={k: v for k, v in ev.metrics.items() if isinstance(v, (int, float))},
            energy_j=energy_j, energy_method=method,
        )
    cx.emit(WriteEpoch(result, m.phase, profile, ev.t))
    return replace(m, ledger=replace(
        led, energy_j=0.0, energy_methods=frozenset(),
        open_epochs=tuple(o for o in led.open_epochs if o.epoch != ev.epoch)))


def _degraded_boundary(m: Machine, ev: Event, cx: Cx) -> Machine:
    """Nothing is tuned any more, but every epoch is still recorded: a
    degraded trial's report must not be empty."""
    if ev.kind is Kind.EPOCH_START:
        led = m.ledger
        opened = tuple(o for o in led.open_epochs if o.epoch != ev.epoch)
        return replace(m, ledger=replace(
            led, open_epochs=(*opened, OpenEpoch(ev.epoch, ev.t, led.config))))
    if ev.kind is Kind.EPOCH_END:
        m = replace(m, ledger=replace(m.ledger, energy_j=None, energy_methods=frozenset()))
        return _write_epoch(m, ev, cx, None)
    return m


# -- PROFILING → SETTLED (match) | PROBING | SETTLED (fallback) ---------------------------------


def _after_profile(m: Machine, ev: Event, cx: Cx) -> Machine:
    p, profile = m.params, m.ledger.profile
    assert profile is not None
    found, why = cx.ask(MatchProfile(profile))  # (None, why) for an empty profile
    if found is None or not profile.rates:  # an empty profile must not match anything
        found = Match(cluster=None, score=0.0, config=None, reason="no profile to match")
    match = found
    why = why or match.reason
    notes = "".join(f"; {n}" for n in m.ledger.profile_notes)
    hint = m.ledger.hint
    if match.accepted(p.threshold):
        assert match.config is not None
        cfg, kept = for_this_trial(m, match.config)
        notes = kept + notes
        problem = unusable(m, cx, cfg)
        if problem is None and hint is not None and match.cluster == hint.cluster \
                and cfg == hint.config:
            # Confirmed: the hinted config is in force already.
            m = replace(m, state=Settled(f"confirmed ({match.reason})", cfg))
            _decide(m, cx, DecisionKind.MATCHED, cfg, ev.epoch,
                    f"confirmed: known workload's cluster {match.cluster} matched: "
                    f"{match.reason}{notes}", score=match.score, threshold=p.threshold)
            _observe(m, cx, cfg)
            return m
        if hint is not None:
            notes = (f"; hint of cluster {hint.cluster} ({hint.config}) contradicted by the "
                     f"profile") + notes
        if problem is None:
            m = _apply(m, cx, cfg)
            m = replace(m, state=Settled(f"matched ({match.reason})", cfg))
            _decide(m, cx, DecisionKind.MATCHED, cfg, ev.epoch,
                    f"matched cluster {match.cluster}: {match.reason}{notes}",
                    score=match.score, threshold=p.threshold)
            _observe(m, cx, cfg)
            return m
        why = f"matched cluster {match.cluster} but its config {cfg} {problem}"
    elif match.cluster is not None and match.config is None and match.score >= p.threshold:
        why = f"matched cluster {match.cluster} ({match.reason}), where no trial has probed yet"
    elif match.cluster is not None:
        why = f"no match ({match.reason} < threshold {p.threshold:.2f})"
    if hint is not None and not match.accepted(p.threshold):
        # Profiles taken at another core count than the history's may not
        # match (issue 15 item 3): not a new workload, but probed as today.
        at = (f"profiled at the hint's config {m.ledger.config}, not the default "
              f"{p.default}: profiles at another config may not match"
              if m.ledger.config != p.default else "profiled at the default")
        notes = f"; hint of cluster {hint.cluster} not confirmed ({at})" + notes
    first = match.config or (hint.config if hint is not None else None)
    return _plan_probing(m, ev, cx, why + notes,
                         hint=None if first is None else for_this_trial(m, first)[0])


def _plan_probing(m: Machine, ev: Event, cx: Cx, why: str,
                  hint: SystemConfig | None) -> Machine:
    strategy, order, note = probe_plan(m, cx, hint)
    if strategy is None:
        return _settle_unprobed(m, ev, cx, f"{why}; nothing to probe ({len(order)} safe "
                                           f"config(s)){note}")
    slots = budget(m, strategy)
    if slots is not None and (slots < 2 or not strategy.shorten(slots)):
        return _settle_unprobed(m, ev, cx, f"{why}; only {epochs_left(m)} epoch(s) left, too "
                                           f"few to probe {len(order)} configs{note}")
    m = replace(m, state=Probing(why + note, strategy))
    return _next_probe(m, ev, cx, why + note)


# -- PROBING ----------------------------------------------------------------------------------


def _next_probe(m: Machine, ev: Event, cx: Cx, why: str = "") -> Machine:
    s = m.state
    assert isinstance(s, Probing)
    cfg = s.strategy.next()
    if cfg is None:
        return _settle_best(m, ev, cx)
    ooms_before = oom_kills(cx)
    m = _apply(m, cx, cfg)
    if m.ledger.config.cores < cfg.cores:
        # Another trial started meanwhile and this trial's share is smaller
        # than this probe: a comparison it cannot finish teaches nothing.
        return _settle_default(m, ev, cx, f"probe {cfg} cannot run: another trial started and "
                                          f"this trial's share of the node is "
                                          f"{m.ledger.config.cores} core(s) now")
    assert cx.last_applied is not None
    slot = Slot(cfg, cx.last_applied.t, s.strategy.slot_windows(), ooms_before)
    unit = "epoch" if s.strategy.unit is ProbeUnit.EPOCH else f"{slot.windows} window(s)"
    reason = f"probe {cfg} for {unit} ({s.strategy.name})" + (f": {why}" if why else "")
    m = replace(m, state=replace(s, slot=slot))
    _decide(m, cx, DecisionKind.PROBE, cfg, ev.epoch, reason, candidates=s.strategy.candidates)
    return m


def _probe_progress(m: Machine, ev: Event, cx: Cx, *, epoch_over: bool) -> Machine:
    s = m.state
    assert isinstance(s, Probing) and s.slot is not None
    strategy, slot, p = s.strategy, s.slot, m.params
    if strategy.unit is ProbeUnit.EPOCH:
        counted = counted_intervals(slot.intervals, slot.applied_at, warmup_s=p.warmup_s,
                                    grace=p.grace, allow_loose=epoch_over)
        done = epoch_over and _slot_done(m, counted, strategy)
    else:  # sub-epoch windows exist to exclude the warm-up: never loose
        counted = counted_intervals(slot.intervals, slot.applied_at, warmup_s=p.warmup_s,
                                    grace=p.grace, allow_loose=False)
        done = len(counted) >= slot.windows
    left = epochs_left(m)
    if not done:
        if epoch_over and left == 0:
            # The trial ends; measure what we have or give up on this slot.
            if counted:
                m = _finish_slot(m, cx, counted)
            return _settle_best(m, ev, cx)
        return m
    m = _finish_slot(m, cx, counted)
    slots = budget(m, strategy)
    if slots is not None and strategy.slots_needed() > slots and not strategy.shorten(slots):
        return _settle_best(m, ev, cx, note=f"; plan cut short: {left} epoch(s) left")
    return _next_probe(m, ev, cx)


def _slot_done(m: Machine, counted: list[Interval], strategy: ProbeStrategy) -> bool:
    """Whether a whole-epoch slot has measured enough at an epoch's end:
    ``probe_min_s`` counted, or the epochs left hold no more than the rest
    of the plan (this slot's extra epoch, one per slot to come, the
    winner's).  An epoch of 0.3 s measured once is mostly warm-up and
    scheduler noise, and the winner picked from it a coin toss."""
    if not counted:
        return False
    if sum(iv.t1 - iv.t0 for iv in counted) >= m.params.probe_min_s:
        return True
    left = epochs_left(m)
    return left is not None and left < strategy.slots_needed() + 1


def _restart_share(m: Machine, slot: Slot, counted: list[Interval]) -> float:
    """What a worker-group restart (a change of strategy) adds to a probe's
    measured seconds.  It is paid once and then serves every epoch the
    strategy would train, so the measured epochs carry their share of it —
    ``restart × counted / (counted + epochs left)`` — rather than all of it
    (which made the strategy in force win whenever its rival restarted) or
    none (a strategy favoured by hiding its restart).  A trial of unknown
    length carries the whole restart.  The restart lies in the slot's first
    interval: when that one was counted, its time is taken out first."""
    if not slot.restart_s:
        return 0.0
    inside = slot.restart_s if slot.intervals and slot.intervals[0] in counted else 0.0
    left = epochs_left(m)
    n = max(len(counted), 1)
    share = slot.restart_s if left is None else slot.restart_s * n / (n + left)
    return share - inside


def _finish_slot(m: Machine, cx: Cx, counted: list[Interval]) -> Machine:
    s = m.state
    assert isinstance(s, Probing) and s.slot is not None
    slot, strategy = s.slot, s.strategy
    m = replace(m, state=replace(s, slot=None))
    ooms = oom_kills(cx)
    if ooms > slot.oom_kills_at_start:
        strategy.infeasible(slot.config, f"{ooms - slot.oom_kills_at_start} OOM kill(s)")
        cx.emit(Note("warning", f"{slot.config} caused OOM kills; marked infeasible"))
        return m
    energies = [iv.energy_j for iv in counted]
    meas = Measurement(
        slot.config, seconds=sum(iv.t1 - iv.t0 for iv in counted) + _restart_share(m, slot,
                                                                                   counted),
        steps=sum(iv.steps for iv in counted),
        energy_j=None if any(e is None for e in energies) else sum(energies),  # type: ignore[arg-type]
        # Memory per rank tells strategies apart; between core counts it is
        # the same model in the same ranks, and the memory objective has
        # nothing to compare (it then falls back to runtime).
        rss_peak_per_rank_mb=slot.rss_peak_per_rank_mb if chooses_strategy(m) else None,
    )
    objective = m.ledger.objective
    try:
        value = objective.cost(meas, m.params.space)
    except NotSupportedError as e:
        cx.emit(Note("warning", f"{e}; using runtime"))
        objective = Objective.RUNTIME
        value = objective.cost(meas, m.params.space)
    strategy.observe(slot.config, value)
    speeds = dict(m.ledger.speeds)
    if meas.seconds > 0 and meas.steps > 0 and slot.config.memory_mb is None:
        speeds[slot.config.cores] = max(speeds.get(slot.config.cores, 0.0),
                                        meas.steps / meas.seconds)
    cx.emit(Note("info", f"probed {slot.config}: {objective.value} = {value:.6g} "
                         f"over {meas.steps} steps"))
    return replace(m, ledger=replace(m.ledger, objective=objective,
                                     speeds=tuple(sorted(speeds.items()))))


# -- → SETTLED --------------------------------------------------------------------------------


def _settle_best(m: Machine, ev: Event, cx: Cx, note: str = "") -> Machine:
    s = m.state
    assert isinstance(s, Probing)
    strategy = s.strategy
    best = strategy.best()
    if best is None or len(strategy.values) + len(strategy.rejected) < 2:
        # One measurement compares nothing (an infeasible config lost): keep the default.
        return _settle_default(m, ev, cx, f"only {len(strategy.values)} probe(s) could be "
                                          f"measured" + note)
    cfg, value = best
    m = _apply(m, cx, cfg)
    measured = tuple(strategy.values)
    profile = m.ledger.profile
    learnable = profile is not None and bool(profile.rates)  # rates teach; noise does not
    if profile is not None and not learnable:
        note += "; no ground-truth record: the profile was empty"
    if m.ledger.opened and len(m.ledger.speeds) >= 2:
        cx.emit(PublishSpeeds(dict(m.ledger.speeds)))
    objective = m.ledger.objective.value
    m = replace(m, state=Settled(f"best of {len(measured)} probed", cfg, best=best,
                                 probed=tuple(strategy.values.items())))
    _decide(m, cx, DecisionKind.SETTLED, cfg, ev.epoch,
            f"best of {len(measured)} probed by {objective} ({value:.6g})" + note,
            objective=objective, candidates=measured)
    if learnable:  # (profile, winner, value): the next similar trial skips probing
        assert profile is not None
        cx.emit(WriteGroundTruth(profile, cfg, objective, value))
    return m


def _settle_unprobed(m: Machine, ev: Event, cx: Cx, reason: str) -> Machine:
    """Nothing can be probed.  A known workload keeps its hinted config (in
    force since the start, as far as the node share allowed): its history
    backed it, while the default is only a guess; an unconfirmed profile is
    weaker evidence against it than that history (profiles taken at another
    core count may simply not match)."""
    hint = m.ledger.hint
    if hint is None:
        return _settle_default(m, ev, cx, reason)
    cfg = m.ledger.config
    reason = f"{reason}; kept the known workload's config {cfg} (cluster {hint.cluster})"
    m = replace(m, state=Settled(reason, cfg))
    _decide(m, cx, DecisionKind.FALLBACK, cfg, ev.epoch, reason)
    _observe(m, cx, cfg)
    return m


def _settle_default(m: Machine, ev: Event, cx: Cx, reason: str) -> Machine:
    default = m.params.default
    m = _apply(m, cx, default)
    m = replace(m, state=Settled(reason, default))
    _decide(m, cx, DecisionKind.FALLBACK, default, ev.epoch, reason)
    _observe(m, cx, default)
    return m


def _observe(m: Machine, cx: Cx, cfg: SystemConfig) -> None:
    """Keep this trial's profile as an observation (a record that casts no
    vote): once a workload is matched its later trials no longer probe, and
    without these the history could never learn how runs of one workload
    scatter — what the model's weights, ``k`` and radii are measured against."""
    profile = m.ledger.profile
    if profile is None or not profile.rates:
        return
    cx.emit(WriteGroundTruth(profile, cfg, m.ledger.objective.value, math.nan, probed=False))


# -- → DEGRADED -------------------------------------------------------------------------------


def _degrade(m: Machine, cx: Cx, reason: str, epoch: int) -> Machine:
    if isinstance(m.state, Degraded):
        return m
    default = m.params.default
    cx.emit(Note("warning", f"tuner degraded, training continues untouched: {reason}"))
    cx.emit(StopProfiler())
    in_force = cx.in_force or m.ledger.config
    restored, opened = "default kept", cx.opened
    if opened and in_force != default:
        try:
            cx.ask(Apply(default))
            restored, in_force = f"default {default} restored", default
        except AskFailed as e:
            cx.ask(Release())
            opened = False
            # What confines the trial now is read back, not assumed: a dead
            # daemon's cgroup keeps its cpuset until a daemon releases it.
            cpus, listed = cx.ask(CpusNow())
            restored = f"could not restore default ({e.reason})"
            in_force = default
            if cpus:
                restored += f"; the trial runs on {len(cpus)} CPU(s) ({listed})"
                in_force = SystemConfig(len(cpus), None, default.gpus)
    m = replace(m, state=Degraded(reason),
                ledger=replace(m.ledger, config=in_force, opened=opened))
    _decide(m, cx, DecisionKind.DEGRADED, in_force, epoch, f"{reason}; {restored}")
    return m


# -- helpers ----------------------------------------------------------------------------------


def _apply(m: Machine, cx: Cx, cfg: SystemConfig) -> Machine:
    applied = cx.ask(Apply(cfg))
    return replace(m, ledger=replace(m.ledger, config=applied.config))


def _rebalance(m: Machine, cx: Cx) -> Machine:
    """Take the node share the allocator gives now (other trials started or
    ended).  Never inside a probe: that slot measures one config."""
    s = m.state
    if not m.ledger.opened or (isinstance(s, Probing) and s.slot is not None):
        return m
    share = cx.ask(TakeShare())
    if share is None:
        return m
    cx.emit(Note("info", f"share of the node moved: {m.ledger.config} -> {share}"))
    return replace(m, ledger=replace(m.ledger, config=share))


def _decide(m: Machine, cx: Cx, kind: DecisionKind, cfg: SystemConfig, epoch: int,
            reason: str, **extra: Any) -> None:
    cx.emit(Decide(Decision(kind=kind, config=cfg, reason=reason, epoch=epoch, **extra)))
