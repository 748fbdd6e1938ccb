"""The trial side of the Ray Tune integration.

- :class:`TrialSession` — lives in the trial process for one call of the
  user's training function: marks epoch boundaries, lets the policy act,
  makes the training thread adopt the thread count, measures energy and
  reports the user's metrics plus the system facts to Tune.

Nothing here may make training fail: a system-side error puts the policy in
a degraded state, logged once, and training goes on untouched.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipetune.policy import SystemPolicy
from pipetune.types import Decision, DecisionKind, EpochResult, TrialRef

log = logging.getLogger(__name__)

#: Keys pipetune adds to each Tune result (prefixed so they never clash).
REPORT_KEYS = (
    "pt_config",
    "pt_phase",
    "pt_epoch_s",
    "pt_energy_j",
    "pt_energy_method",
    "pt_cores",
    "pt_threads",
    "pt_reason",
)


_current: TrialSession | None = None


def current_session() -> TrialSession | None:
    """The session of the trial running in this process, if any."""
    return _current


def set_current(session: TrialSession | None) -> None:
    # Lives here, not in pipetune.tune: Ray pickles the wrapped trainable *by
    # value* with a copy of its module's globals, so a global set from the
    # trainable must belong to a module the trial process imports.
    global _current
    _current = session


class TrialSession:
    """One trial's pipetune session; see the module docstring.

    ``report_fn`` is ``ray.tune.report`` inside Tune; tests and plain scripts
    may pass their own.
    """

    def __init__(
        self,
        ref: TrialRef,
        policy: SystemPolicy,
        *,
        report_fn: Callable[..., None] | None = None,
        store: Any = None,
        energy: Any = None,
        first_epoch: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.ref = ref
        self.policy = policy
        self._report_fn = report_fn
        self._store = store
        self._energy = energy
        self.epoch = first_epoch
        self.history: list[EpochResult] = []
        self._t_start = time.time()
        self._threads_set: int | None = None
        self._extra = dict(extra or {})

    def start(self) -> TrialSession:
        self.policy.bind(store=self._store)
        self.policy.start([os.getpid()])
        if self._store is not None and not self.policy.writes_to_store:
            degraded = self.policy.phase == "degraded"
            kind = DecisionKind.DEGRADED if degraded else DecisionKind.FIXED
            decision = Decision(kind, self.policy.config(), self.policy.reason, self.epoch)
            self._store.write_decision(self.ref, decision)
        self._sync_threads()
        self.policy.epoch_start(self.epoch)
        self._t_start = time.time()
        if self._energy is not None:
            self._energy_interval()  # reset the trial's energy counter to now
        return self

    def _energy_interval(self) -> tuple[float | None, str | None]:
        try:
            joules, method = self._energy.interval()
            return float(joules), str(method)
        except Exception as e:  # noqa: BLE001 - a meter failing is a missing figure
            log.debug("trial %s: energy unavailable: %s", self.ref.trial, e)
            return None, None

    def _sync_threads(self) -> None:
        want = max(1, self.policy.threads())
        if want != self._threads_set:
            try:
                from pipetune.control import sync_threads

                self._threads_set = sync_threads(want)
            except Exception as e:  # noqa: BLE001
                log.debug("thread sync failed: %s", e)
                self._threads_set = want

    def window(self, steps: int) -> None:
        """A step window of the current epoch ended (see pipetune.window)."""
        try:
            self.policy.window_end(self.epoch, steps)
        except Exception as e:  # noqa: BLE001
            log.warning("trial %s: system policy failed at a window: %s", self.ref.trial, e)
        self._sync_threads()

    def report(
        self,
        metrics: Mapping[str, Any],
        *,
        steps: int = 0,
        checkpoint: Any = None,
    ) -> dict[str, Any]:
        """End the current epoch with ``metrics``; returns what went to Tune."""
        now = time.time()
        if isinstance(metrics.get("epoch"), int) and not isinstance(metrics["epoch"], bool):
            # The loop's own epoch index wins: after a resume from a
            # checkpoint (pause/resume under HyperBand) it does not start at 0.
            self.epoch = metrics["epoch"]
        config = self.policy.config()
        energy_j, method = (None, None)
        if self._energy is not None:
            energy_j, method = self._energy_interval()
        numeric = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        result = EpochResult(
            self.epoch, config, now - self._t_start, steps, energy_j, method, numeric
        )
        self.history.append(result)
        try:
            self.policy.epoch_end(result)
        except Exception as e:  # noqa: BLE001
            log.warning("trial %s: system policy failed at epoch end: %s", self.ref.trial, e)
        if self._store is not None and not self.policy.writes_to_store:
            self._store.write_epoch(self.ref, result, phase=self.policy.phase, time_s=now)
        out = dict(metrics)
        out.update(
            {
                "pt_config": str(config),
                "pt_phase": self.policy.phase,
                "pt_epoch_s": result.seconds,
                "pt_energy_j": energy_j,
                "pt_energy_method": method,
                "pt_cores": config.cores,
                "pt_threads": self._threads_set,
                "pt_reason": self.policy.reason,
                **self._extra,
            }
        )
        # The next epoch starts now; the policy may have changed the config.
        self.epoch += 1
        self._sync_threads()
        self.policy.epoch_start(self.epoch)
        self._t_start = time.time()
        if self._report_fn is not None:
            if checkpoint is not None:
                self._report_fn(out, checkpoint=checkpoint)
            else:
                self._report_fn(out)
        return out

    def close(self) -> None:
        try:
            self.policy.close()
        finally:
            if self._store is not None:
                self._store.flush(10)
