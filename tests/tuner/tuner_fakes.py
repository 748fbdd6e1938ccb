"""Fakes for what the tuner's unit tests cannot have: a clock they control, a
profiler that returns a chosen profile, a controller that records applies,
and a store that keeps writes in lists.  The real ones are exercised in
test_tuner_real.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipetune.errors import ControlError, PerfUnavailableError
from pipetune.types import EpochProfile, SystemConfig, SystemSpace, TrialRef


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.t

    def advance(self, s: float) -> None:
        with self._lock:
            self.t += s


class FakeProfiler:
    """``rates`` for every window; ``start_gate``: start() waits for it (perf's
    attach blocking the tuner's worker); ``on_stop``: called at stop();
    ``waits``: the ``wait_s`` of each profile() call."""

    def __init__(self, rates: Mapping[str, float], *, fail_start: bool = False,
                 fail_profile: Exception | None = None,
                 gate: threading.Event | None = None,
                 start_gate: threading.Event | None = None,
                 on_stop: Callable[[], None] | None = None) -> None:
        self.rates = dict(rates)
        self.fail_start = fail_start
        self.fail_profile = fail_profile
        self.gate = gate
        self.start_gate = start_gate
        self.on_stop = on_stop
        self.gate_was_open_at_profile: bool | None = None
        self.calls: list[tuple[str, Any]] = []
        self.waits: list[float] = []

    def start(self) -> None:
        self.calls.append(("start", None))
        if self.start_gate is not None:
            self.start_gate.wait(5.0)
        if self.fail_start:
            raise PerfUnavailableError("perf: not found (fake)")

    def stop(self) -> None:
        self.calls.append(("stop", None))
        if self.on_stop is not None:
            self.on_stop()

    def profile(self, start: float, end: float, *, epoch: int = 0,
                warmup_s: float = 0.0, wait_s: float = 0.0) -> EpochProfile:
        self.calls.append(("profile", (start, end, epoch, warmup_s)))
        self.waits.append(wait_s)
        if self.gate is not None:
            self.gate_was_open_at_profile = self.gate.wait(5.0)
        if self.fail_profile is not None:
            raise self.fail_profile
        return EpochProfile(rates=self.rates, start=start, end=end,
                            n_samples=int(end - start) if self.rates else 0, epoch=epoch)


@dataclass
class FakeUsage:
    cpu_s: float = 0.0
    memory_current_mb: float = 100.0
    memory_peak_mb: float = 100.0
    oom_kills: int = 0


class FakeController:
    """Records every apply; ``fail_on`` configs raise ControlError;
    ``apply_takes_s`` advances the fake clock (a slow cgroup write);
    ``oom_on`` configs bump the OOM counter when applied."""

    def __init__(self, clock: FakeClock | None = None, *, fail_on: Sequence[SystemConfig] = (),
                 apply_takes_s: float = 0.0, oom_on: Sequence[SystemConfig] = (),
                 peak_mb: float = 100.0, fail_open: bool = False) -> None:
        self.clock = clock
        self.fail_on = set(fail_on)
        self.apply_takes_s = apply_takes_s
        self.oom_on = set(oom_on)
        self.usage_now = FakeUsage(memory_peak_mb=peak_mb)
        self.fail_open = fail_open
        self.applied: list[SystemConfig] = []
        self.opened: list[tuple[str, list[int]]] = []
        self.closed: list[str] = []
        self.hold = threading.Event()  # clear it to make apply() wait (a slow write)
        self.hold.set()

    def open_trial(self, trial_id: str, pids: Sequence[int]) -> str:
        if self.fail_open:
            raise ControlError("cgroup: permission denied (fake)")
        self.opened.append((trial_id, list(pids)))
        return f"handle-{trial_id}"

    def apply(self, handle: Any, config: SystemConfig, *, cpus: Sequence[int] | None = None,
              cpu_quota: float | None = None) -> SystemConfig:
        self.hold.wait(5.0)
        if config in self.fail_on:
            raise ControlError(f"cannot apply {config} (fake)")
        if self.clock is not None and self.apply_takes_s:
            self.clock.advance(self.apply_takes_s)
        if config in self.oom_on:
            self.usage_now.oom_kills += 1
        self.applied.append(config)
        return config

    def usage(self, handle: Any) -> FakeUsage:
        return self.usage_now

    def close_trial(self, handle: Any) -> None:
        self.closed.append(handle)


@dataclass
class FakeStore:
    decisions: list[Any] = field(default_factory=list)
    epochs: list[Any] = field(default_factory=list)
    groundtruth: list[dict[str, Any]] = field(default_factory=list)

    def write_decision(self, ref: Any, decision: Any, *, time_s: float | None = None) -> None:
        self.decisions.append(decision)

    def write_epoch(self, ref: Any, result: Any, *, phase: str, profile: Any = None,
                    time_s: float | None = None) -> None:
        self.epochs.append((result, phase, profile))

    def write_groundtruth(self, **kwargs: Any) -> None:
        self.groundtruth.append(kwargs)


def train(tuner: Any, clock: FakeClock, epochs: Sequence[int], *, steps: int = 10,
          windows: int = 1,
          seconds_per_step: Callable[[SystemConfig, int], float] = lambda c, w: 1.0) -> None:
    """Drive ``tuner`` like a training loop: each epoch has ``windows`` step
    windows; the time a window takes depends on the config in force and on
    how many windows ran since that config changed (``w``, for warm-up)."""
    per_window = steps // windows
    last_cfg, since = None, 0
    for e in epochs:
        tuner.epoch_start(e)
        assert tuner.wait_idle()
        done = 0
        for i in range(windows):
            cfg = tuner.config
            since = since + 1 if cfg == last_cfg else 0
            last_cfg = cfg
            clock.advance(per_window * seconds_per_step(cfg, since))
            done += per_window
            if i < windows - 1:
                tuner.window_end(e, done)
            else:
                tuner.epoch_end(e, done, {"loss": 1.0 / (e + 1)})
            assert tuner.wait_idle()


# -- a tuner wired to fakes ------------------------------------------------------------

C1, C2 = SystemConfig(1), SystemConfig(2)
RATES_A = {"task-clock": 1900.0, "context-switches": 120.0, "page-faults": 8000.0,
           "sched:sched_wakeup": 300.0, "syscalls:sys_enter_read": 50.0}
RATES_B = {"task-clock": 950.0, "context-switches": 9000.0, "page-faults": 30.0,
           "sched:sched_wakeup": 20000.0, "syscalls:sys_enter_read": 7000.0}


def make(space=None, *, rates=RATES_A, clock=None, controller=None, profiler=None, **kw):
    """(tuner, clock, controller, profiler, store) with fakes where not given."""
    from pipetune.tuner import SystemTuner

    clock = clock or FakeClock()
    controller = controller or FakeController(clock)
    profiler = profiler or FakeProfiler(rates)
    store = kw.pop("store", FakeStore())
    kw.setdefault("warmup_s", 0.0)
    kw.setdefault("profile_min_s", 0.0)
    trial = kw.pop("trial", "t1")
    tuner = SystemTuner(
        TrialRef("job1", trial, "node1"), space or SystemSpace(cores=(1, 2)),
        pids=[12345], controller=controller, profiler_factory=lambda pids: profiler,
        store=store, clock=clock, workload="wl", **kw,
    )
    return tuner, clock, controller, profiler, store


def kinds(tuner):
    return [d.kind for d in tuner.decisions]


def speed(table):
    return lambda cfg, since: table[cfg]
