"""The SystemTuner: Algorithm 1 of the paper as an explicit state machine.

- :mod:`.machine` — the pure transition function ``step(machine, event) ->
  (machine, effects)``; its docstring holds the transition table.
- :mod:`.records` — the frozen states (:class:`Start`, :class:`Profiling`,
  :class:`Probing`, :class:`Settled`, :class:`Degraded`), events and effects.
- :mod:`.profiling` — when and over which window the profile is taken.
- :mod:`.rules` — the probe plan and what it asks (memory peak, node capacity).
- :mod:`.runner` — :class:`SystemTuner`, one per trial: a worker thread that
  steps the machine and carries out its effects (decisions, store,
  profiler start/stop once a boundary is decided).
- :mod:`.answers` — :class:`TrialSide`: the trial's controller, profiler,
  ground truth and energy, answering the machine's questions.
- :mod:`.base` — the collaborators' protocols.

The strategy-specific rules (halving's step windows, slot budgets, which
intervals count) live in :mod:`pipetune.probing.plan`.
"""

from pipetune.tuner.base import ConfigApplier, EnergySource, Profiler, ProfilerFactory, StoreSink
from pipetune.tuner.machine import step
from pipetune.tuner.records import (
    TRANSITIONS,
    Degraded,
    Event,
    Kind,
    Machine,
    Params,
    Probing,
    Profiling,
    Settled,
    StageHint,
    Start,
    TunerState,
    initial,
)
from pipetune.tuner.runner import SystemTuner

__all__ = [
    "TRANSITIONS",
    "ConfigApplier",
    "Degraded",
    "EnergySource",
    "Event",
    "Kind",
    "Machine",
    "Params",
    "Probing",
    "Profiler",
    "ProfilerFactory",
    "Settled",
    "StageHint",
    "Start",
    "Profiling",
    "StoreSink",
    "SystemTuner",
    "TunerState",
    "initial",
    "step",
]
