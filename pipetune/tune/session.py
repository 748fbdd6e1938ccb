"""The trial side of the Ray Tune integration.

- :class:`TrialSession` — lives in the trial process for one call of the
  user's training function: records the trial, marks epoch boundaries, lets
  the policy act, makes the training thread adopt the thread count *at the
  same boundary* as the cpuset/quota change, measures energy and reports the
  user's metrics plus the system facts really in force to Tune.

Nothing here may make training fail: a system-side error puts the policy in
a degraded state, logged once, and training goes on untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipetune.policy import SystemPolicy
from pipetune.store.base import Point
from pipetune.types import Decision, DecisionKind, EpochResult, Phase, TrialRef

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
    "pt_cpus",
    "pt_controller",
    "pt_reason",
)

#: How long the training thread waits at a boundary for the tuner's decision
#: (milliseconds usually; up to a sample interval or two at the profile).
DECISION_WAIT_S = 5.0


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
    may pass their own.  ``record``: the trial's ``mode``, ``workload`` and
    ``hparams``, written to the store's ``trial`` measurement at start and,
    with the trial's end status, at close — so a report of a user's own
    script knows what each trial was and whether the job finished.
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
        record: Mapping[str, Any] | None = None,
        decision_wait_s: float = DECISION_WAIT_S,
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
        self._record = dict(record or {})
        self._decision_wait_s = decision_wait_s

    def start(self) -> TrialSession:
        self.policy.bind(store=self._store)
        self.policy.start([os.getpid()])
        self.policy.wait_decision(self._decision_wait_s)
        self._write_trial("running")
        if self._store is not None and not self.policy.writes_to_store:
            degraded = self.policy.phase is Phase.DEGRADED
            kind = DecisionKind.DEGRADED if degraded else DecisionKind.FIXED
            decision = Decision(kind, self.policy.config(), self.policy.reason, self.epoch)
            self._store.write_decision(self.ref, decision)
        self._sync_threads()
        self.policy.epoch_start(self.epoch)
        self._t_start = time.time()
        if self._energy is not None:
            self._energy_interval()  # reset the trial's energy counter to now
        return self

    def _write_trial(self, status: str, error: str | None = None) -> None:
        if self._store is None or not self._record:
            return
        tags = {"job": self.ref.job, "trial": self.ref.trial, "node": self.ref.node,
                "mode": str(self._record.get("mode", "")),
                "workload": str(self._record.get("workload", ""))}
        fields: dict[str, Any] = {"status": status}
        if status == "running":
            # Who enforces this trial's configs (cgroup-v1, affinity when
            # cgroups are not writable, daemon:..., dry-run), for the report.
            fields["controller"] = self.policy.controller_name
            for k, v in (self._record.get("hparams") or {}).items():
                if isinstance(v, (bool, int, float, str)):
                    fields["hp." + str(k)] = v
        if error:
            fields["error"] = error[:500]
        try:
            self._store.write(Point("trial", tags, fields, int(time.time() * 1e9)))
        except Exception as e:  # noqa: BLE001 - a record missing is no reason to fail
            log.warning("trial %s: trial record not written: %s", self.ref.trial, e)

    def _energy_interval(self) -> tuple[float | None, str | None]:
        try:
            joules, method = self._energy.interval()
            return float(joules), str(method)
        except Exception as e:  # noqa: BLE001 - a meter failing is a missing figure
            log.debug("trial %s: energy unavailable: %s", self.ref.trial, e)
            return None, None

    def _sync_threads(self) -> None:
        # Never more threads than CPUs that really confine this process: a
        # lost daemon's cgroup may hold fewer than the config says.
        try:
            from pipetune.control import cores_in_force

            want = max(1, min(self.policy.threads(), cores_in_force()))
        except Exception as e:  # noqa: BLE001
            log.debug("cores in force unknown: %s", e)
            want = max(1, self.policy.threads())
        if want != self._threads_set:
            try:
                from pipetune.control import sync_threads

                self._threads_set = sync_threads(want)
            except Exception as e:  # noqa: BLE001
                log.debug("thread sync failed: %s", e)
                self._threads_set = want

    def _check_confinement(self, cpus: tuple[int, ...]) -> None:
        """Apply the limits again when this process runs on CPUs its last
        apply did not give it: someone lifted them (a restarted daemon
        releases the groups of the one that died).  Only CPUs *outside* the
        applied set count: an OpenMP runtime may pin the training thread to
        fewer."""
        want = self.policy.applied_cpus()
        if want and cpus and not set(cpus) <= set(want):
            try:
                self.policy.reassert()
            except Exception as e:  # noqa: BLE001
                log.warning("trial %s: limits not applied again: %s", self.ref.trial, e)

    def window(self, steps: int) -> None:
        """A step window of the current epoch ended (see pipetune.window)."""
        try:
            self.policy.window_end(self.epoch, steps)
            self.policy.rebalance()
            self.policy.wait_decision(self._decision_wait_s)
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
        # What was in force for this epoch, read before the policy decides
        # the next one: the config, the threads, the CPUs (read back).
        config = self.policy.config()
        phase = str(self.policy.phase)  # the value: what the store and Tune read
        threads = self._threads_set
        cpus = _cpus_in_force()
        self._check_confinement(cpus)
        if cpus and len(cpus) < config.cores:
            # The kernel runs this trial on fewer CPUs than its config says
            # (a share not picked up yet, a mask set from outside): report
            # what was in force, as the threads already follow it.
            config = dataclasses.replace(config, cores=len(cpus))
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
            self.policy.rebalance()
            self.policy.wait_decision(self._decision_wait_s)
        except Exception as e:  # noqa: BLE001
            log.warning("trial %s: system policy failed at epoch end: %s", self.ref.trial, e)
        if self._store is not None and not self.policy.writes_to_store:
            self._store.write_epoch(self.ref, result, phase=phase, time_s=now)
        out = dict(metrics)
        out.update(
            {
                "pt_config": str(config),
                "pt_phase": phase,
                "pt_epoch_s": result.seconds,
                "pt_energy_j": energy_j,
                "pt_energy_method": method,
                "pt_cores": config.cores,
                "pt_threads": threads,
                "pt_cpus": _format_cpus(cpus),
                "pt_controller": self.policy.controller_name,
                "pt_reason": self.policy.reason,
                **self._extra,
            }
        )
        # The next epoch starts now, with the config just decided and the
        # threads following it.
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

    def close(self, error: BaseException | None = None) -> None:
        """The trial ended (``error``: the exception that ended it)."""
        try:
            self.policy.close()
        finally:
            if error is not None:
                self._write_trial("failed", f"{type(error).__name__}: {error}")
            else:
                self._write_trial("done")
            if self._store is not None:
                self._store.flush(10)


def _cpus_in_force() -> tuple[int, ...]:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except OSError:
        return ()


def _format_cpus(cpus: tuple[int, ...]) -> str:
    from pipetune.control import format_cpus

    return format_cpus(cpus)
