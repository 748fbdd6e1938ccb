"""The state machine's records: parameters, states, events, effects.

All frozen.  Each state holds only its own data; what every state shares
(the config in force, the epochs' marks and energy, the profile once taken)
is the :class:`Ledger`.  A step's I/O is asked for with an :class:`Ask` of
one of the questions below (:class:`Apply`, :class:`TakeProfile` …) and
answered by the runner through ``Event.answers``; :class:`Cx` hands a step
its answers in order and collects its effects.  The transitions are in
:mod:`pipetune.tuner.machine`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipetune.groundtruth import Hint
from pipetune.probing import Objective, ProbeStrategy
from pipetune.types import Decision, EpochProfile, EpochResult, Phase, SystemConfig, SystemSpace

#: The tuner's states are the first five phases.
TunerState = Phase

#: Allowed transitions; anything else is a bug (:func:`guard` raises).
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.START: frozenset({Phase.PROFILING, Phase.DEGRADED}),
    Phase.PROFILING: frozenset({Phase.SETTLED, Phase.PROBING, Phase.DEGRADED}),
    Phase.PROBING: frozenset({Phase.PROBING, Phase.SETTLED, Phase.DEGRADED}),
    # SETTLED → PROFILING: the workload changed under it (REPROFILE: a
    # schedule changed the batch size at a boundary of the trial's own run).
    Phase.SETTLED: frozenset({Phase.DEGRADED, Phase.PROFILING}),
    Phase.DEGRADED: frozenset(),
}


def guard(old: Phase, new: Phase) -> None:
    """Raise ``RuntimeError`` for a transition the table does not allow."""
    if new is not old and new not in TRANSITIONS[old]:
        raise RuntimeError(f"illegal tuner transition {old.value} -> {new.value}")


# -- parameters (fixed for a trial) ---------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """What the tuner was configured with (see :class:`~pipetune.tuner.SystemTuner`)."""

    space: SystemSpace
    threshold: float = 0.8
    strategy: str = "grid"
    warmup_s: float = 1.0
    probe_min_s: float = 2.0
    profile_epochs: int = 1
    profile_min_s: float = 3.0
    total_epochs: int | None = None
    memory_margin: float = 0.2
    halving_min_windows: int = 1
    halving_eta: int = 2
    grace: float = 0.05
    workload: str = ""  # the trial's workload name: asked of the ground truth at start

    @property
    def default(self) -> SystemConfig:
        return self.space.default  # type: ignore[return-value]


# -- states ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """Between two marks of one epoch: ``steps`` steps in ``t0..t1``."""

    t0: float
    t1: float
    steps: int
    energy_j: float | None


@dataclass(frozen=True)
class Slot:
    """One probe measurement in progress: ``config`` since ``applied_at``."""

    config: SystemConfig
    applied_at: float
    windows: int  # counted windows wanted (window strategies)
    oom_kills_at_start: int = 0
    intervals: tuple[Interval, ...] = ()
    restart_s: float = 0.0  # a worker-group restart this config cost (its ``restart_s``)
    #: The heaviest rank's peak RSS (MB) over the slot's epochs (the trial
    #: session's ``rss_peak_per_rank_mb``); None without a worker group.
    rss_peak_per_rank_mb: float | None = None


@dataclass(frozen=True)
class Start:
    phase = Phase.START
    reason: str = ""


@dataclass(frozen=True)
class Profiling:
    """Sampling at the default config; ``t0``: the first epoch's start,
    ``sampling_from``: when the profiler began counting (None: not yet)."""

    phase = Phase.PROFILING
    reason: str = "trial started"
    t0: float | None = None
    sampling_from: float | None = None
    wait_s: float = 2.0  # how long to wait for a sample (two profiler intervals)
    epochs: int = 0  # epochs profiled so far


@dataclass(frozen=True)
class Probing:
    """Measuring candidates; ``strategy`` is never mutated once in a state
    (a step works on a copy)."""

    phase = Phase.PROBING
    reason: str
    strategy: ProbeStrategy
    slot: Slot | None = None


@dataclass(frozen=True)
class Settled:
    phase = Phase.SETTLED
    reason: str
    config: SystemConfig
    best: tuple[SystemConfig, float] | None = None  # probed winner and its value
    probed: tuple[tuple[SystemConfig, float], ...] = ()  # every probe's objective value


@dataclass(frozen=True)
class Degraded:
    phase = Phase.DEGRADED
    reason: str


State = Start | Profiling | Probing | Settled | Degraded


@dataclass(frozen=True)
class OpenEpoch:
    epoch: int
    t0: float
    config: SystemConfig


@dataclass(frozen=True)
class Ledger:
    """What every state shares: the config in force and the epochs' bookkeeping."""

    config: SystemConfig
    objective: Objective
    opened: bool = False  # the trial's controller handle exists
    mark: tuple[int, float, int] | None = None  # (epoch, t, steps) of the last mark
    open_epochs: tuple[OpenEpoch, ...] = ()
    energy_j: float | None = 0.0  # since the previous epoch ended (None: a read failed)
    energy_methods: frozenset[str] = frozenset()
    epochs_done: int = 0  # epochs whose end the machine has handled
    epochs_posted: int = 0  # epochs the training has ended (ahead while the worker lags)
    windows_in_epoch: int = 0
    windows_per_epoch: int = 0
    profile: EpochProfile | None = None
    profile_notes: tuple[str, ...] = ()
    window_profile: EpochProfile | None = None  # taken mid-epoch, not yet stored
    speeds: tuple[tuple[int, float], ...] = ()  # cores -> steps/s measured by probes
    hint: Hint | None = None  # the known workload's cluster, applied at start (HINTED)

    def trained_epochs(self) -> int:
        return max(self.epochs_done, self.epochs_posted)


@dataclass(frozen=True)
class Machine:
    params: Params
    ledger: Ledger
    state: State

    @property
    def phase(self) -> Phase:
        return self.state.phase


def initial(params: Params, objective: Objective) -> Machine:
    return Machine(params, Ledger(config=params.default, objective=objective), Start())


@dataclass(frozen=True)
class StageHint:
    """The stage a trial resumes from (a stage tree's parent, see
    :mod:`pipetune.stages`): what that stage's tuner had at its end.

    Why a hint of its own beside :class:`~pipetune.groundtruth.Hint`: the
    parent trained the *same* workload, with the same hyperparameters up to
    the branch point, so its settled config and its profile describe the
    child better than any cluster of the history does; the child decides
    at once from them (no profiling epoch, no probing).  When the batch size
    changes at the branch point the workload is another one to the system
    (another profile, another best config), so the child is profiled afresh.

    ``key``: the parent stage's epoch key (the prefix it ends); ``phase``:
    its tuner's state at the end (only a SETTLED parent's config is a
    decision); ``profile``: the profile that tuner had (None: none taken);
    ``parent_batch_size``/``batch_size``: the batch size of the parent's
    last epoch and of the child's first (None: no such hyperparameter);
    ``epoch``: the child's first epoch to train."""

    key: str
    config: SystemConfig
    phase: Phase
    profile: EpochProfile | None = None
    parent_batch_size: Any = None
    batch_size: Any = None
    how: str = ""  # the parent's last decision kind (matched, settled, fallback …)
    epoch: int = 0

    @property
    def batch_changed(self) -> bool:
        return self.parent_batch_size != self.batch_size

    def describe(self) -> str:
        how = f" ({self.how})" if self.how else ""
        return f"parent stage {self.key}: its tuner settled on {self.config}{how}"


# -- events ---------------------------------------------------------------------------------


class Kind(enum.Enum):
    START = "start"
    EPOCH_START = "epoch_start"
    WINDOW_END = "window_end"
    EPOCH_END = "epoch_end"
    REASSERT = "reassert"
    REBALANCE = "rebalance"
    CLOSE = "close"
    PROFILER_STARTED = "profiler_started"
    FAIL = "fail"  # the system side failed outside a step (perf did not start, a bug)
    PARENT_STAGE = "parent_stage"  # the trial resumed from a parent stage (``Event.stage``)
    REPROFILE = "reprofile"  # the workload changed at this boundary (``Event.reason``: how)


@dataclass(frozen=True)
class Event:
    """A boundary or a runner's report.  ``posted``: epochs the training has
    ended so far; ``energy``: (joules since the previous boundary, method);
    ``result``: the epoch's :class:`EpochResult` when the trial session built
    it (one per epoch: the machine enriches it, never builds a second);
    ``answers``: the runner's answers to this step's asks, in order."""

    kind: Kind
    t: float
    epoch: int = 0
    steps: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    posted: int = 0
    energy: tuple[float, str] | None = None
    wait_s: float = 2.0  # PROFILER_STARTED: how long a profile may wait for a sample
    reason: str = ""  # FAIL, REPROFILE
    result: EpochResult | None = None  # EPOCH_END: the trial session's record of the epoch
    answers: tuple[Any, ...] = ()
    stage: StageHint | None = None  # PARENT_STAGE: the stage the trial resumed from


# -- effects and the questions the machine asks ------------------------------------------------


@dataclass(frozen=True)
class OpenTrial:
    """Open the trial's cgroup. Answer: None."""


@dataclass(frozen=True)
class Apply:
    """Put ``config`` in force. Answer: :class:`Applied`."""

    config: SystemConfig


@dataclass(frozen=True)
class Applied:
    config: SystemConfig  # in force: a node allocator may give fewer cores than asked
    t: float  # when it was in force


@dataclass(frozen=True)
class Usage:
    """The trial's memory peak and OOM kills. Answer: (peak_mb, oom_kills)."""


@dataclass(frozen=True)
class Capacity:
    """Cores the trial would get now asking for ``cores``. Answer: int | None."""

    cores: int


@dataclass(frozen=True)
class TakeProfile:
    """The profile over ``lo..hi`` (``hi`` None: now, at least ``lo``),
    waiting at most ``wait_s`` for a sample. Answer: (profile, hi)."""

    lo: float
    hi: float | None
    epoch: int
    wait_s: float


@dataclass(frozen=True)
class MatchProfile:
    """Match against the ground truth. Answer: (Match, why the model is empty or "")."""

    profile: EpochProfile


@dataclass(frozen=True)
class KnownWorkload:
    """What the ground truth knows of this workload by name.  Answer: a
    :class:`~pipetune.groundtruth.Hint`, or None (unknown: start at the default)."""

    workload: str


@dataclass(frozen=True)
class TakeShare:
    """The node share the allocator gives now. Answer: SystemConfig | None."""


@dataclass(frozen=True)
class Release:
    """Close the trial's cgroup now. Answer: None."""


@dataclass(frozen=True)
class CpusNow:
    """The CPUs the trial runs on, read back. Answer: (cpus, as a list like
    ``0-2,5``), or ((), "") when they cannot be read."""


@dataclass(frozen=True)
class Failed:
    """An answer: the question's I/O failed, ``reason`` in words."""

    reason: str


@dataclass(frozen=True)
class Ask:
    """The machine needs an answer to go on (see the module docstring)."""

    query: Any


@dataclass(frozen=True)
class Decide:
    decision: Decision


@dataclass(frozen=True)
class WriteEpoch:
    result: EpochResult
    phase: Phase
    profile: EpochProfile | None
    t: float


@dataclass(frozen=True)
class WriteGroundTruth:
    profile: EpochProfile
    config: SystemConfig
    objective: str
    value: float
    probed: bool = True


@dataclass(frozen=True)
class PublishSpeeds:
    speeds: Mapping[int, float]


@dataclass(frozen=True)
class StartProfiler:
    """Start the profiler once this boundary is decided (perf attaches slowly)."""


@dataclass(frozen=True)
class StopProfiler:
    """Stop the profiler; ``late``: once this boundary is decided."""

    late: bool = False


@dataclass(frozen=True)
class Note:
    """A log line: ``level`` is a :mod:`logging` level name."""

    level: str
    message: str


Effect = (Ask | Decide | WriteEpoch | WriteGroundTruth | PublishSpeeds | StartProfiler
          | StopProfiler | Note)


# -- one step's answers and effects ---------------------------------------------------


class Pending(Exception):
    """A step needs the answer to ``query``: the runner asks and steps again."""

    def __init__(self, query: Any) -> None:
        self.query = query


class AskFailed(Exception):
    """The answer to a step's question was :class:`Failed`."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Cx:
    """One step's answers and effects; what the step's applies put in force."""

    def __init__(self, m: Machine, answers: tuple[Any, ...]) -> None:
        self.answers = answers
        self.used = 0
        self.effects: list[Any] = []
        self.in_force: SystemConfig | None = None
        self.last_applied: Applied | None = None
        self.opened = m.ledger.opened

    def ask(self, query: Any) -> Any:
        if self.used >= len(self.answers):
            raise Pending(query)
        answer = self.answers[self.used]
        self.used += 1
        if isinstance(answer, Failed):
            raise AskFailed(answer.reason)
        if isinstance(query, Apply):
            self.in_force, self.last_applied = answer.config, answer
        elif isinstance(query, OpenTrial):
            self.opened = True
        elif isinstance(query, Release):
            self.opened = False
        return answer

    def emit(self, effect: Any) -> None:
        self.effects.append(effect)
