"""The profile window's rules (PROFILING): when the profile is taken, over
which window, and what the decision says about how it was taken.

The profiler needs a while to attach (perf's start-up, longer on a loaded
host), during which the training runs on and its boundaries queue up.  So
the window starts where the samples do (the later of the first epoch's start
+ ``warmup_s`` and the profiler's start), ``profile_min_s`` counts sampled
seconds, and a window no sample covers yet runs on to the present (the
default is still in force) and waits for one.  A loop that reports step
windows is profiled at the first window by which ``profile_min_s`` is
sampled, mid-epoch, so the decision does not wait for the end of a long
epoch run at a possibly poor default.  The profile is taken early when
waiting for ``profile_min_s`` would leave the trial too few epochs to probe
(:func:`deadline`).  An empty profile is never matched and never becomes a
ground-truth record.

Pure functions of the machine; the profile itself is a question
(:class:`~pipetune.tuner.records.TakeProfile`) the runner answers.
"""

from __future__ import annotations

import math
from dataclasses import replace

from pipetune.probing.plan import epochs_for, profiles_at_window
from pipetune.tuner.records import Cx, Event, Machine, Note, Profiling, TakeProfile
from pipetune.tuner.rules import epochs_left, probe_plan
from pipetune.types import EpochProfile


def at_window(m: Machine, ev: Event, cx: Cx) -> tuple[Machine, bool]:
    """Take the profile at a step window once ``profile_min_s`` is sampled,
    rather than waiting for the epoch's end; (machine, True) when taken.

    Why: a long epoch at the default config may be the slowest way to run
    (two threads beside a busy neighbour ran deepcnn-mnist's epoch in 9 s
    where one core took 3 s): deciding a few sampled seconds in saves the
    rest of it.  Not when the profile must span several epochs, nor for a
    window strategy before the first epoch has shown how many windows an
    epoch has.
    """
    s, p = m.state, m.params
    assert isinstance(s, Profiling)
    if (p.profile_epochs > 1 or s.sampling_from is None or s.t0 is None
            or not profiles_at_window(p.strategy, m.ledger.windows_per_epoch)):
        return m, False
    lo = max(s.t0 + p.warmup_s, s.sampling_from)
    sampled_s = ev.t - lo
    if sampled_s <= 0 or sampled_s < p.profile_min_s:
        return m, False
    profile, _ = cx.ask(TakeProfile(lo, ev.t, ev.epoch, 0.0))
    if profile is None or not profile.rates:
        return m, False  # no sample in yet: the next window or the epoch's end
    note = f"profile taken in epoch {ev.epoch} at step {ev.steps} after {sampled_s:.2f} s sampled"
    return replace(m, ledger=replace(m.ledger, profile=profile, window_profile=profile,
                                     profile_notes=(note,))), True


def at_epoch_end(m: Machine, ev: Event, cx: Cx) -> tuple[Machine, EpochProfile | None]:
    """The profile, once enough was sampled or the trial's length says it
    must be taken now; None to keep profiling.  ``profile_min_s`` is judged
    on the sampled time, not on the epochs' wall time (which may include
    the profiler's start-up)."""
    s, p, led = m.state, m.params, m.ledger
    assert isinstance(s, Profiling)
    this = next((o for o in led.open_epochs if o.epoch == ev.epoch), None)
    t0 = s.t0 if s.t0 is not None else (this.t0 if this is not None else None)
    if t0 is None or s.sampling_from is None:
        return m, None
    late_s = max(s.sampling_from - t0, 0.0)  # how late the profiler began counting
    lo = max(t0 + p.warmup_s, s.sampling_from)
    sampled_s = max(ev.t - lo, 0.0)
    enough = s.epochs >= p.profile_epochs and sampled_s >= p.profile_min_s
    by = deadline(m, cx)
    if not enough and (by is None or led.trained_epochs() < by):
        return m, None
    notes: list[str] = []
    if not enough:
        left = epochs_left(m)
        purpose = f"to leave {left} epoch(s) for probing" if left else "before the trial ends"
        notes.append(f"profile taken at epoch {ev.epoch} after {sampled_s:.2f} s sampled "
                     f"(wanted {p.profile_min_s:g} s over {p.profile_epochs} epoch(s)) "
                     f"{purpose}")
    profile = None
    if lo < ev.t:
        # A sample arrives at the end of its interval, so the last partial
        # interval is usually not in yet.  A full profile can do without it;
        # one taken early is short, and that interval a large part of it:
        # wait for it, but for at most a quarter of an epoch (the probe must
        # not miss the next one).
        epoch_s = ev.t - this.t0 if this is not None else math.inf
        wait_s = 0.0 if enough else min(s.wait_s, 0.25 * epoch_s)
        profile, _ = cx.ask(TakeProfile(lo, ev.t, ev.epoch, wait_s))
    if profile is None or not profile.rates:
        # No sample covers the profiled epochs: they ended before the
        # profiler counted, or the sample covering them is not in yet.  The
        # default is still in force, so the window runs on to now.
        profile, end = cx.ask(TakeProfile(lo, None, ev.epoch, s.wait_s))
        if profile.rates:
            notes.append(
                f"no sample covered the profiled epochs yet (the profiler counted from "
                f"{late_s:.2f} s into the trial): the window ran on "
                f"{end - ev.t:.2f} s past epoch {ev.epoch}'s end and waited for a sample")
        else:
            notes.append(
                f"profile empty: no profiler sample within {end - lo:.2f} s of sampling "
                f"(the profiler counted from {late_s:.2f} s into the trial)")
            cx.emit(Note("warning", notes[-1]))
    return replace(m, ledger=replace(led, profile=profile, profile_notes=tuple(notes))), profile


def deadline(m: Machine, cx: Cx) -> int | None:
    """Epochs done by which the profile must be taken, whatever
    ``profile_min_s`` wants (None: the trial's length is unknown).

    The probe plan needs its slots plus the winner's epoch; one more epoch
    is kept when the trial has it, because a probe applied a little late
    (the worker lags the training loop) may miss the next epoch.  A trial
    too short for the whole plan profiles one epoch, so that a shortened
    plan has the most epochs; a trial too short for any plan profiles as
    long as it likes, but decides by its last epoch."""
    total = m.params.total_epochs
    if total is None:
        return None
    strategy, _order, _note = probe_plan(m, cx, None)
    if strategy is None:
        return total
    wpe = m.ledger.windows_per_epoch
    spare = total - epochs_for(strategy.slots_needed(), strategy.unit, wpe)
    if spare >= 2:
        return spare - 1
    if spare >= 1:
        return spare
    least = epochs_for(2 * strategy.slot_windows(), strategy.unit, wpe)
    return 1 if total - least >= 1 else total
