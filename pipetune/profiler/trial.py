"""The profiler of one trial: perf intervals + procfs figures → samples → profiles.

:class:`TrialProfiler` is what the system tuner uses.  It starts a
:class:`~pipetune.profiler.perf_stat.PerfStatSampler` on the trial's process
tree, merges the :class:`~pipetune.profiler.procfs.ProcTreeReader` figures of
the same interval into each :class:`~pipetune.types.Sample`, keeps the
samples (thread-safe) and turns any window into an
:class:`~pipetune.types.EpochProfile`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence

from pipetune.errors import PerfUnavailableError, ProfilerError
from pipetune.procs import tree_pids
from pipetune.profiler.epochs import epoch_profile
from pipetune.profiler.events import PROC_FIGURES, available_events, canonical
from pipetune.profiler.perf_stat import PerfInterval, PerfStatSampler
from pipetune.profiler.procfs import ProcReading, ProcTreeReader
from pipetune.types import EpochProfile, Sample

log = logging.getLogger(__name__)

#: How many times :meth:`TrialProfiler.start` attaches perf again for children
#: that appeared while it attached.
LATE_CHILD_REATTACHES = 3


class TargetExitedError(ProfilerError):
    """Every process the profiler watched has exited (the sampler ended cleanly)."""


class TrialProfiler:
    """Samples one trial's processes every ``interval_ms``.

    Args:
        pids: the trial's processes; their descendants at :meth:`start` are
            added (perf only inherits children created after attach).
        interval_ms: sampling interval.
        events: perf events; None = :meth:`EventSupport.default_events` of this
            host (and :class:`PerfUnavailableError` at :meth:`start` when perf
            cannot run); ``()`` = procfs figures only, no perf at all.
        perf_binary: the perf executable.
        procfs: merge the procfs/psutil figures (``proc.*``) into each sample.
        on_sample: called on the sampler thread with each new sample; its
            exceptions are logged, never raised into the sampler.
        max_samples: samples kept in memory (oldest dropped first).

    Thread safety: :meth:`start`/:meth:`stop` from the owner; :attr:`samples`,
    :meth:`profile` and :attr:`error` from any thread.  When perf dies or every
    target exits, :attr:`error` is set, the sampler ends and the samples taken
    so far stay readable.
    """

    def __init__(
        self,
        pids: Sequence[int],
        *,
        interval_ms: int = 1000,
        events: Sequence[str] | None = None,
        perf_binary: str = "perf",
        procfs: bool = True,
        on_sample: Callable[[Sample], None] | None = None,
        max_samples: int = 200_000,
    ) -> None:
        if isinstance(pids, int):
            pids = [pids]
        if not pids:
            raise ProfilerError("profiler needs at least one pid")
        if interval_ms < 10:
            raise ProfilerError(f"interval_ms={interval_ms}: must be >= 10")
        self.pids = tuple(int(p) for p in pids)
        self.interval_ms = int(interval_ms)
        self._requested = None if events is None else tuple(canonical(e) for e in events)
        self.perf_binary = perf_binary
        self.procfs = procfs
        self.on_sample = on_sample
        self.events: tuple[str, ...] = ()
        self.error: Exception | None = None
        self.started_at: float | None = None
        self._samples: collections.deque[Sample] = collections.deque(maxlen=max_samples)
        self._cond = threading.Condition()
        self._sampler: PerfStatSampler | None = None
        self._reader: ProcTreeReader | None = None
        self._prev_reading: ProcReading | None = None
        self._prev_perf_t = 0.0
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._ended = threading.Event()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Attach to the trial and start sampling; returns once counting began.

        Raises:
            PerfUnavailableError: perf is missing or forbidden on this host.
            ProfilerError: no such process, an event perf rejects, perf failed.
        """
        if self.started_at is not None:
            raise ProfilerError("profiler already started")
        events = self._requested
        if events is None:
            support = available_events(self.perf_binary)
            if not support.perf_available:
                raise PerfUnavailableError(support.reason)
            events = support.default_events()
        if not events and not self.procfs:
            raise ProfilerError("nothing to sample: no perf events and procfs=False")
        pids = tree_pids(self.pids)
        if not pids:
            raise ProfilerError(
                f"no such process: pid {','.join(str(p) for p in self.pids)}")
        if self.procfs:
            self._reader = ProcTreeReader(pids)
            self._prev_reading = self._reader.read()
        self.events = tuple(events) + (PROC_FIGURES if self.procfs else ())
        if events:
            self._attach(events, pids)
            # A child born after the tree was listed but before perf attached
            # is in neither: not listed, and not inherited (it forked before the
            # counters existed) — a trial's worker ranks spawned while perf
            # starts, seen once in a Tune trial.  Attach again with the tree as
            # it is now (children born after an attach are inherited).
            for _ in range(LATE_CHILD_REATTACHES):
                fresh = tree_pids(self.pids)
                if not set(fresh) - set(self._sampler.pids):
                    break
                log.debug("profiler: children %s appeared while perf attached; attaching "
                          "again", sorted(set(fresh) - set(self._sampler.pids)))
                self._sampler.stop()
                self._attach(events, fresh)
            self.started_at = self._sampler.enabled_at or time.time()
        else:
            self.started_at = time.time()
            self._timer = threading.Thread(target=self._procfs_loop, daemon=True,
                                           name="pipetune-procfs-sampler")
            self._timer.start()
        log.debug("profiling pids %s every %d ms with %d figures", pids, self.interval_ms,
                  len(self.events))

    def stop(self) -> None:
        """Stop sampling (our own perf, by PID).  Idempotent; samples stay readable."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.stop()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join(5.0)
        self._ended.set()
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> TrialProfiler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.started_at is not None and not self._ended.is_set()

    @property
    def perf_pid(self) -> int | None:
        """PID of the perf process this profiler owns (None without perf)."""
        return self._sampler.pid if self._sampler is not None else None

    # -- samples ---------------------------------------------------------------------

    @property
    def samples(self) -> list[Sample]:
        """A copy of the samples so far, oldest first."""
        with self._cond:
            return list(self._samples)

    def profile(
        self,
        start: float,
        end: float,
        *,
        epoch: int = 0,
        warmup_s: float = 0.0,
        wait_s: float = 0.0,
    ) -> EpochProfile:
        """Mean rate per event over ``[start + warmup_s, end]`` (``time.time()`` s).

        Samples are reported at the end of their interval, so right after an
        epoch the last partial interval may not be in yet; ``wait_s`` > 0 waits
        up to that long for a sample reaching ``end`` (not at all once the
        sampler has ended).  Without it the profile covers what is there.
        See :func:`pipetune.profiler.epochs.epoch_profile` for the weighting.
        """
        if wait_s > 0:
            deadline = time.monotonic() + wait_s
            with self._cond:
                while (not self._ended.is_set()
                       and not (self._samples and self._samples[-1].timestamp >= end)):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
        return epoch_profile(self.samples, start, end, epoch=epoch, warmup_s=warmup_s)

    # -- sampler callbacks -------------------------------------------------------------

    def _proc_counts(self) -> dict[str, float]:
        if self._reader is None:
            return {}
        cur = self._reader.read()
        counts = ProcTreeReader.delta(self._prev_reading, cur)
        self._prev_reading = cur
        return counts

    def _on_interval(self, interval: PerfInterval, wall_end: float) -> None:
        interval_s = interval.time_s - self._prev_perf_t
        self._prev_perf_t = interval.time_s
        if interval_s <= 0:
            return
        counts = interval.counts()
        running = interval.running_pct()
        if self._sampler is not None and self._sampler.unsupported:
            self.events = tuple(e for e in self.events if e not in self._sampler.unsupported)
        counts.update(self._proc_counts())
        self._add(Sample(timestamp=wall_end, interval_s=interval_s, counts=counts,
                         running_pct=running))

    def _add(self, sample: Sample) -> None:
        with self._cond:
            self._samples.append(sample)
            self._cond.notify_all()
        log.debug("sample %.3f: %d figures", sample.timestamp, len(sample.counts))
        if self.on_sample is not None:
            try:
                self.on_sample(sample)
            except Exception:
                log.exception("profiler on_sample callback failed")

    def _attach(self, events: Sequence[str], pids: Sequence[int]) -> None:
        """Start a perf sampler on ``pids`` (again with a fresh tree when one of
        them exited between listing and attach)."""
        for attempt in (1, 2):
            self._sampler = PerfStatSampler(
                events, pids=pids, interval_ms=self.interval_ms,
                perf_binary=self.perf_binary, on_interval=self._on_interval,
                on_end=self._on_end,
            )
            try:
                self._sampler.start()
                return
            except ProfilerError as e:
                # A child of the tree may have exited between listing and attach.
                fresh = tree_pids(self.pids)
                if attempt == 2 or "no such process" not in str(e) or not fresh:
                    raise
                pids = fresh

    def _on_end(self, reason: str) -> None:
        alive = self._reader.processes() if self._reader is not None else []
        self.error = (TargetExitedError(reason) if not alive or "every target" in reason
                      else ProfilerError(reason))
        self._ended.set()
        with self._cond:
            self._cond.notify_all()

    def _procfs_loop(self) -> None:
        assert self._reader is not None
        interval_s = self.interval_ms / 1000.0
        last = time.time()
        while not self._stop.wait(max(0.0, last + interval_s - time.time())):
            now = time.time()
            counts = self._proc_counts()
            if not self._reader.processes():
                self._on_end("every target process ended")
                return
            self._add(Sample(timestamp=now, interval_s=now - last, counts=counts))
            last = now
