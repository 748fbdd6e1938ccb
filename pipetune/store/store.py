"""The :class:`Store`: non-blocking writes, spooling, typed helpers.

Training threads call ``write_*``; those only put points on a bounded queue.
One writer thread batches them to the backend.  When the backend is down the
batch goes to the spool (:mod:`pipetune.store.spool`) and is replayed once the
backend answers again — also by the next process that opens the same store,
if this one dies first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipetune.errors import StoreError, StoreUnavailableError
from pipetune.store.base import Backend, Point
from pipetune.store.spool import Spool, spool_dir_for
from pipetune.types import Decision, EpochProfile, EpochResult, Sample, SystemConfig, TrialRef

log = logging.getLogger(__name__)

RATE_PREFIX = "rate."
METRIC_PREFIX = "metric."
RUNNING_PREFIX = "running."


class Store:
    """Thread-safe facade over one backend.

    ``write`` never blocks on I/O to the backend and never raises: a point
    is either queued, or (queue full / backend down) appended to the spool.
    ``flush`` waits until everything queued so far was written or spooled.
    """

    def __init__(
        self,
        backend: Backend,
        spool_root: Path,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        retry_interval_s: float = 2.0,
    ) -> None:
        self.backend = backend
        self.url = backend.url
        self._queue: queue.Queue[Point] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retry_interval_s = retry_interval_s
        self._spool = Spool(spool_dir_for(spool_root, self.url), self.url)
        self._pending = 0  # queued or in flight, not yet written or spooled
        self._overflow: list[Point] = []  # arrived while the queue was full
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._down_until = 0.0  # monotonic time before which we do not retry
        self._orphans_checked = False
        self._outage = False  # between a failed write and the next one that works
        self.written = 0
        self.spooled = 0
        self.rejected = 0
        self._thread = threading.Thread(target=self._run, name="pipetune-store-writer", daemon=True)
        self._thread.start()

    # -- writing -------------------------------------------------------------------

    def write(self, point: Point) -> None:
        point = point.clean()
        with self._cond:
            self._pending += 1
        try:
            self._queue.put_nowait(point)
        except queue.Full:
            # Never block training, not even on disk I/O: the writer thread
            # moves the overflow to the spool (with fsync) itself.
            with self._cond:
                self._overflow.append(point)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until all points written so far are in the backend or the
        spool.  Returns False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    @property
    def spooled_now(self) -> int:
        """Points of this process waiting in the spool."""
        return len(self._spool)

    def drain_spool(self, timeout_s: float = 30.0) -> bool:
        """Retry the spool now (after an outage) and wait until it is empty:
        this process's points, and the files of writers that ended meanwhile."""
        self._down_until = 0.0
        self._orphans_checked = False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.flush(max(0.0, deadline - time.monotonic()))
            if len(self._spool) == 0 and self._orphans_checked:
                return True
            time.sleep(0.1)
        return len(self._spool) == 0 and self._orphans_checked

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush, try a last replay, stop the writer.  What could not be sent
        stays in the spool for the next process."""
        self.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout_s)
        self._spool.close()
        self.backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            batch: list[Point] = []
            try:
                batch.append(self._queue.get(timeout=self._flush_interval_s))
                while len(batch) < self._batch_size:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if batch:
                self._send(batch)
                with self._cond:
                    self._pending -= len(batch)
                    self._cond.notify_all()
            self._spool_overflow()
            self._replay()
            if self._stop.is_set() and self._queue.empty() and not self._overflow:
                return

    def _spool_overflow(self) -> None:
        with self._cond:
            overflow, self._overflow = self._overflow, []
        if overflow:
            self._spool.append(overflow)  # replayed at once when the backend is up
            with self._cond:
                self.spooled += len(overflow)
                self._pending -= len(overflow)
                self._cond.notify_all()

    def _send(self, batch: Sequence[Point]) -> None:
        if time.monotonic() < self._down_until:
            self._spool.append(batch)
            self.spooled += len(batch)
            return
        try:
            self.backend.write_points(batch)
            self.written += len(batch)
            self._mark_up()
        except StoreUnavailableError as e:
            self._mark_down(e)
            self._spool.append(batch)
            self.spooled += len(batch)
        except StoreError as e:
            # Refused (bad field type, unknown database): retrying cannot help,
            # and replaying them would block the points behind them.  They are
            # kept aside, never replayed, for a person to look at.
            path = self._spool.reject(batch)
            log.error("store %s refused %d points: %s (kept in %s)", self.url, len(batch), e, path)
            self.rejected += len(batch)

    def _replay(self) -> None:
        if time.monotonic() < self._down_until:
            return
        if len(self._spool) == 0 and self._orphans_checked and not self._outage:
            return
        try:
            if self._outage and len(self._spool) == 0:
                self.backend.ping()  # nothing to replay: is it back?
            n = self._spool.replay_own(self.backend.write_points, self._batch_size)
            self._mark_up()
            if n:
                log.info("store %s is back: replayed %d spooled points", self.url, n)
            self.written += n
            if not self._orphans_checked:
                self.written += self._spool.replay_orphans(
                    self.backend.write_points, self._batch_size
                )
                self._orphans_checked = True
        except StoreError as e:
            self._mark_down(e)

    def _mark_down(self, e: Exception) -> None:
        # Said once per outage: every retry failing again is DEBUG, and the
        # end of the outage is said when a write or replay goes through.
        level = logging.DEBUG if self._outage else logging.WARNING
        log.log(
            level,
            "store %s unavailable (%s); spooling, retry every %.0f s",
            self.url,
            e,
            self._retry_interval_s,
        )
        self._outage = True
        self._down_until = time.monotonic() + self._retry_interval_s

    def _mark_up(self) -> None:
        if self._outage:
            self._outage = False
            # Writers that ended during the outage (trials) left their spool
            # files behind: look for them again now.
            self._orphans_checked = False
            log.info("store %s answers again", self.url)

    @property
    def outage(self) -> bool:
        """True from a failed write until one goes through again."""
        return self._outage

    # -- typed writes (DESIGN §11) ---------------------------------------------------

    def write_sample(
        self, ref: TrialRef, sample: Sample, *, phase: str, config: SystemConfig | str
    ) -> None:
        fields: dict[str, Any] = {"interval_s": sample.interval_s}
        fields.update(sample.counts)
        for event, pct in sample.running_pct.items():
            if pct < 100.0:
                fields[RUNNING_PREFIX + event] = pct
        self.write(
            Point(
                "sample",
                _trial_tags(ref, phase=phase, config=config),
                fields,
                _ns(sample.timestamp),
            )
        )

    def write_epoch(
        self,
        ref: TrialRef,
        result: EpochResult,
        *,
        phase: str,
        profile: EpochProfile | None = None,
        time_s: float | None = None,
    ) -> None:
        fields: dict[str, Any] = {"seconds": result.seconds, "steps": result.steps}
        if result.energy_j is not None:
            fields["energy_j"] = result.energy_j
            fields["energy_method"] = result.energy_method or "unknown"
        fields.update({METRIC_PREFIX + k: _field(v) for k, v in result.metrics.items()})
        if profile is not None:
            fields.update({RATE_PREFIX + k: float(v) for k, v in profile.rates.items()})
            fields["n_samples"] = profile.n_samples
        tags = _trial_tags(ref, phase=phase, config=result.config, epoch=str(result.epoch))
        self.write(Point("epoch", tags, fields, _ns(time_s)))

    def write_decision(
        self, ref: TrialRef, decision: Decision, *, time_s: float | None = None
    ) -> None:
        fields: dict[str, Any] = {
            "config": str(decision.config),
            "reason": decision.reason,
            "epoch": decision.epoch,
        }
        if decision.score is not None:
            fields["score"] = decision.score
        if decision.threshold is not None:
            fields["threshold"] = decision.threshold
        if decision.objective:
            fields["objective"] = decision.objective
        if decision.candidates:
            fields["candidates"] = ",".join(str(c) for c in decision.candidates)
        if decision.config.parallel != "none" or any(
                c.parallel != "none" for c in decision.candidates):
            # The strategy chosen or probed, named even when it is "none"
            # (which a config's string leaves out).
            fields["parallel"] = decision.config.parallel
        tags = {"node": ref.node, "job": ref.job, "trial": ref.trial, "kind": decision.kind.value}
        self.write(Point("decision", tags, fields, _ns(time_s)))

    def write_groundtruth(
        self,
        *,
        workload: str,
        profile: EpochProfile,
        config: SystemConfig,
        objective: str,
        value: float,
        ref: TrialRef | None = None,
        time_s: float | None = None,
        probed: bool = True,
    ) -> None:
        """One ground-truth record: this profile's best config by ``objective``
        (``probed``), or the config a matched trial ran (an observation, see
        :class:`pipetune.groundtruth.GroundTruthRecord`)."""
        fields: dict[str, Any] = {RATE_PREFIX + k: float(v) for k, v in profile.rates.items()}
        fields["value"] = float(value)
        fields["probed"] = 1.0 if probed else 0.0
        if ref is not None:
            fields.update({"job": ref.job, "trial": ref.trial, "node": ref.node})
        tags = {"workload": workload, "config": str(config), "objective": objective}
        self.write(Point("groundtruth", tags, fields, _ns(time_s)))

    def write_power(
        self, node: str, watts: float, *, source: str, time_s: float | None = None
    ) -> None:
        self.write(
            Point(
                "power",
                {"node": node, "source": source},
                {"watts": float(watts)},
                _ns(time_s),
            )
        )

    # -- queries -----------------------------------------------------------------------

    def query(
        self,
        measurement: str,
        tags: Mapping[str, str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> pd.DataFrame:
        return self.backend.query(measurement, tags, start_ns, end_ns)

    def samples(self, job: str, trial: str | None = None) -> pd.DataFrame:
        return self.query("sample", _job_tags(job, trial))

    def epochs(self, job: str, trial: str | None = None) -> pd.DataFrame:
        return self.query("epoch", _job_tags(job, trial))

    def decisions(self, job: str, trial: str | None = None) -> pd.DataFrame:
        return self.query("decision", _job_tags(job, trial))

    def groundtruth_records(self, objective: str | None = None) -> pd.DataFrame:
        return self.query("groundtruth", {"objective": objective} if objective else None)

    def power(
        self, node: str | None = None, start_ns: int | None = None, end_ns: int | None = None
    ) -> pd.DataFrame:
        return self.query("power", {"node": node} if node else None, start_ns, end_ns)

    def ping(self) -> None:
        self.backend.ping()


def _trial_tags(ref: TrialRef, **extra: Any) -> dict[str, str]:
    tags = {"node": ref.node, "job": ref.job, "trial": ref.trial}
    tags.update({k: str(v) for k, v in extra.items() if v is not None})
    return tags


def _job_tags(job: str, trial: str | None) -> dict[str, str]:
    return {"job": job} if trial is None else {"job": job, "trial": trial}


def _ns(seconds: float | None) -> int:
    """Seconds since the epoch (now when None) as the point's ns time."""
    return int(round((time.time() if seconds is None else seconds) * 1e9))


def _field(v: Any) -> Any:
    return v if isinstance(v, (bool, int, float, str)) else str(v)


def prefixed(df: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Columns of ``df`` that start with ``prefix``, with the prefix removed
    (e.g. the event rates of ``epochs()`` via ``prefixed(df, RATE_PREFIX)``)."""
    cols = [c for c in df.columns if c.startswith(prefix)]
    return df[cols].rename(columns={c: c[len(prefix) :] for c in cols})
