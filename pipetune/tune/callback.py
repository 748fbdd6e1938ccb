"""Driver-side facts of a tuning job, as an optional Ray Tune callback.

Trials write their own records from their processes — the trial with its
hyperparameters and end status, samples, epochs, decisions — and refit the
ground truth when they taught it something (:func:`pipetune.wrap`), so a
user's own script needs no callback.  What only the driver knows — when the
job started and ended, how long the tuning took, which trial was best, a
trial whose process died — goes to the store's ``job`` measurement from
here; ``pipetune tune`` adds it, and a user's script may.  With
``model_path`` it also retries a trial's refit that a store outage stopped.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.tune import Callback

from pipetune.store.base import Point

log = logging.getLogger(__name__)

#: Seconds between two checks whether the store is back for a pending refit.
REFIT_RETRY_S = 2.0


class PipeTuneCallback(Callback):
    """Records job-level facts; ``metric``/``mode`` say what "best" means."""

    def __init__(
        self,
        store_url: str,
        spool_dir: Any,
        *,
        job: str,
        mode: str,
        workload: str = "",
        metric: str = "accuracy",
        metric_mode: str = "max",
        model_path: str | None = None,
        objective: str = "runtime",
    ) -> None:
        self.store_url = store_url
        self.spool_dir = spool_dir
        self._store: Any = None
        self.job = job
        self.mode = mode
        self.workload = workload
        self.metric = metric
        self.metric_mode = metric_mode
        self.model_path = model_path
        self.objective = objective
        self.model_updates = 0
        self._refit_pending = False
        self.start_s = time.time()
        self.end_s: float | None = None
        self.trials: dict[str, dict[str, Any]] = {}
        self.interrupted = False

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state: no live store.
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    @property
    def store(self) -> Any:
        if self._store is None:
            from pipetune.store import open_store

            self._store = open_store(self.store_url, spool_root=self.spool_dir)
        return self._store

    def _tags(self) -> dict[str, str]:
        return {"job": self.job, "mode": self.mode, "workload": self.workload}

    def setup(self, **info: Any) -> None:
        self.start_s = time.time()
        self.store.write(Point("job", self._tags(), {"event": "start"}, int(self.start_s * 1e9)))

    def _trial_point(self, trial: Any, fields: dict[str, Any]) -> None:
        tags = {"job": self.job, "trial": str(trial.trial_id), "mode": self.mode}
        self.store.write(Point("trial", tags, fields))

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        t = self.trials.setdefault(trial.trial_id, {"epochs": 0, "status": "running"})
        t["epochs"] += 1
        t["last"] = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            best = t.get("best")
            better = best is None or (value > best if self.metric_mode == "max" else value < best)
            if better:
                t["best"] = float(value)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.trials.setdefault(trial.trial_id, {"epochs": 0})["status"] = "done"
        if self.model_path:
            # The trial refit the model at its end; if the store was down then,
            # that refit failed: retry it from on_step_end once the store answers.
            from pipetune.errors import StoreError

            try:
                self.store.backend.ping()
            except StoreError:
                self._refit_pending = True

    def _learn(self) -> None:
        """Refit the ground truth from every record so far (what a trial
        does at its end), for a refit the store's outage stopped."""
        if not self.model_path:
            return
        from pipetune.tune.learn import Refit, refit_groundtruth

        outcome = refit_groundtruth(self.store, self.model_path, objective=self.objective,
                                    job=self.job)
        # Store down: the records are safe (spooled), the refit is not lost
        # either: on_step_end retries it once the store answers.
        self._refit_pending = outcome is Refit.STORE_DOWN
        if outcome is Refit.DONE:
            self.model_updates += 1

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Retry a refit that the store's outage stopped, every few seconds,
        once the store answers: first replay what was spooled meanwhile (ours
        and trials' that ended during the outage), so the refit sees it."""
        if not getattr(self, "_refit_pending", False):
            return
        now = time.monotonic()
        if now < getattr(self, "_refit_retry_at", 0.0):
            return
        self._refit_retry_at = now + REFIT_RETRY_S
        from pipetune.errors import StoreError

        try:
            self.store.backend.ping()
        except StoreError as e:
            log.debug("job %s: refit still waits for the store: %s", self.job, e)
            return
        self.store.drain_spool(timeout_s=10.0)
        self._learn()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The trial writes its own end status, unless its process died: say it here.
        self.trials.setdefault(trial.trial_id, {"epochs": 0})["status"] = "failed"
        self._trial_point(
            trial, {"status": "failed", "error": str(info.get("exception", ""))[:500]}
        )
        log.warning("job %s: trial %s failed; the job goes on", self.job, trial.trial_id)

    def best_trial(self) -> tuple[str | None, float | None]:
        scored = [(tid, t["best"]) for tid, t in self.trials.items() if "best" in t]
        if not scored:
            return None, None
        pick = max if self.metric_mode == "max" else min
        return pick(scored, key=lambda x: x[1])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.end_s = time.time()
        # Tune calls this hook on Ctrl-C too, after marking the running trials
        # TERMINATED without on_trial_complete: a trial that neither completed
        # nor failed here means the job was interrupted, not complete.
        ended = {tid for tid, t in self.trials.items() if t.get("status") in ("done", "failed")}
        self.interrupted = any(str(t.trial_id) not in ended for t in trials)
        best, value = self.best_trial()
        fields: dict[str, Any] = {
            "event": "interrupted" if self.interrupted else "end",
            "tuning_s": self.end_s - self.start_s,
            "trials": len(self.trials),
            "failed": sum(1 for t in self.trials.values() if t.get("status") == "failed"),
            "start_s": self.start_s,
        }
        if best is not None:
            fields["best_trial"] = best
            fields[f"best_{self.metric}"] = value
        self.store.write(Point("job", self._tags(), fields, int(self.end_s * 1e9)))
        self.store.close()
        self._store = None
