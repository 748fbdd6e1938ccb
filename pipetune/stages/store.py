"""The stage store: which epochs of which prefixes are trained, by whom, and
where their checkpoints are.

:class:`StageStore` is a plain class so it can be tested without Ray; the
executor runs one instance as a Ray actor (``num_cpus=0``) per tuning job,
so its methods are called one at a time (an actor is single-threaded) and
need no locks.

Records are keyed by *epoch key* (:meth:`TrialPlan.epoch_keys`): the record
of key ``k`` holds the metrics of the epoch that ends the prefix ``k`` and,
where one was written, the checkpoint after it.  A trial *claims* the keys it
is about to train; another trial that needs a claimed key waits for it
instead of training it again.  Claims end when the key is recorded, when the
trial ends (the Tune callback, or the trial's own ``finally``), or when the
claimer has not been heard of for a lease (a paused or vanished trial must
not block the others forever).

Across jobs (``reuse``): with a :class:`~pipetune.stages.ledger.StageLedger`
every trained epoch is also written to the pipetune store, and with
``reuse`` the first trial of a namespace loads the epochs earlier jobs
recorded there (:meth:`StageLedger.load`) as if this job had trained them;
a reusing job also checkpoints every epoch it trains, so a later job can
branch off anywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pipetune.stages.ledger import StageLedger
from pipetune.stages.tree import StageTree, TrialPlan

__all__ = ["Acquired", "StageStore"]


@dataclass(frozen=True)
class Acquired:
    """The answer to :meth:`StageStore.acquire`.

    ``wait_for`` is the trial to wait for (then nothing else is set), else:
    resume from ``checkpoint`` (a path; None = from the trial's own state),
    which holds the state after epoch ``resume_epoch`` (-1 = none), replay
    ``replay`` (the recorded metrics of epochs ``first_replayed`` ..
    ``resume_epoch``) and train from ``resume_epoch + 1``.  ``system``:
    what the system policy of the trial that trained epoch ``resume_epoch``
    had at its end (config, state, last decision, profile; see
    :meth:`StageStore.record`), None when nothing was recorded.
    """

    wait_for: str | None = None
    resume_epoch: int = -1
    checkpoint: str | None = None
    first_replayed: int = 0
    replay: tuple[dict[str, Any], ...] = ()
    system: dict[str, Any] | None = None


class StageStore:
    """See the module docstring.  ``share=False`` makes every trial train
    alone (trial-based execution through the same code path, for fair
    comparisons); ``prune_safe`` also checkpoints every epoch of a stage
    that live trials share, so a trial stopped by a scheduler in the middle
    of a shared stage leaves its work to the others.  ``ledger`` records
    every trained epoch in the pipetune store for later jobs (``job`` names
    this one there; ``record_epochs=False``: only the job's tree, for
    checkpoints that end with the job); ``reuse`` also loads what earlier
    jobs recorded and checkpoints every epoch (see the module docstring)."""

    def __init__(self, *, share: bool = True, prune_safe: bool = False,
                 lease_s: float = 60.0, ledger: StageLedger | None = None,
                 reuse: bool = False, job: str = "", record_epochs: bool = True) -> None:
        self.share = share
        self.prune_safe = prune_safe
        self.lease_s = lease_s
        self.ledger = ledger
        self.reuse = reuse and share and ledger is not None
        self.job = job
        self.record_epochs = record_epochs
        self.loaded: set[str] = set()  # namespaces whose earlier records are loaded
        self.reused: dict[str, int] = {}  # Tune trial id -> epochs replayed from earlier jobs
        self.reported: dict[str, list[str]] = {}  # Tune trial id -> keys reported to Tune
        self.tree = StageTree()
        self.records: dict[str, dict[str, Any]] = {}
        self.claims: dict[str, str] = {}  # key -> Tune trial id
        self.heard: dict[str, float] = {}  # Tune trial id -> last time heard of
        self.plan_of: dict[str, str] = {}  # Tune trial id -> plan id
        self.finished: set[str] = set()  # plan ids no longer running
        self.cpu_s: dict[str, float] = {}
        self.trained: dict[str, int] = {}
        self.replayed: dict[str, int] = {}
        self.longest_epoch_s = 0.0

    # -- plans ---------------------------------------------------------------------

    def register(self, plans: list[TrialPlan]) -> int:
        """Add plans to the tree (the driver registers a grid before Tune
        starts, so the first trial already checkpoints where later ones
        branch off).  Returns the number of nodes."""
        for plan in plans:
            self.tree.add(plan)
        return len(self.tree)

    # -- claims --------------------------------------------------------------------

    def _alive(self, trial: str, now: float) -> bool:
        lease = max(self.lease_s, 10 * self.longest_epoch_s)
        return now - self.heard.get(trial, 0.0) < lease

    def acquire(self, trial: str, plan: TrialPlan, from_epoch: int = 0) -> Acquired:
        """Where ``trial`` (a Tune trial id running ``plan``, already restored
        to its own state up to ``from_epoch - 1``) should start; claims the
        epochs it is to train.  Called again after a wait."""
        now = time.time()
        self.heard[trial] = now
        self.plan_of[trial] = plan.trial_id
        self.finished.discard(plan.trial_id)  # back from a pause
        self.tree.add(plan)
        self._load_earlier(plan.namespace)
        keys = plan.epoch_keys()
        done = -1
        if self.share:
            while done + 1 < len(keys) and keys[done + 1] in self.records:
                done += 1
            nxt = done + 1
            if nxt < len(keys) and nxt >= from_epoch:
                owner = self.claims.get(keys[nxt])
                if owner is not None and owner != trial and self._alive(owner, now):
                    return Acquired(wait_for=owner)
        if done == len(keys) - 1 and done >= from_epoch:
            resume = done  # all trained already: replay, nothing to load or train
        else:
            resume = max(
                (e for e in range(from_epoch, done + 1) if self.records[keys[e]].get("checkpoint")),
                default=-1,
            )
        for key in keys[max(resume + 1, from_epoch):]:
            if key not in self.records and self.claims.get(key) in (None, trial):
                self.claims[key] = trial
        if resume < 0:
            return Acquired()
        replayed = keys[from_epoch:resume + 1]
        replay = tuple(self.records[k]["metrics"] for k in replayed)
        self.replayed[trial] = self.replayed.get(trial, 0) + len(replay)
        self.reused[trial] = self.reused.get(trial, 0) + sum(
            1 for k in replayed if self.records[k].get("reused"))
        self.reported.setdefault(trial, []).extend(replayed)
        return Acquired(
            resume_epoch=resume,
            checkpoint=self.records[keys[resume]]["checkpoint"],
            first_replayed=from_epoch,
            replay=replay,
            system=self.records[keys[resume]].get("system"),
        )

    def wants_checkpoint(self, trial: str, plan_id: str, epoch: int, key: str) -> bool:
        """Whether the state after ``epoch`` must be saved for other trials:
        the tree branches (or another trial ends) there, or, with
        ``prune_safe``, a live trial shares the next epoch too."""
        self.heard[trial] = time.time()
        if not self.share or key in self.records and self.records[key].get("checkpoint"):
            return False
        if self.reuse or epoch in self.tree.boundaries(plan_id):
            return True
        if self.prune_safe:
            node = next((n for n in self.tree.path(plan_id) if n.start <= epoch < n.stop), None)
            return node is not None and bool(node.trials - {plan_id} - self.finished)
        return False

    def record(self, trial: str, key: str, metrics: dict[str, Any], *, seconds: float,
               cpu_s: float, checkpoint: str | None, epoch: int | None = None,
               system: dict[str, Any] | None = None) -> None:
        """Epoch ``key`` (epoch number ``epoch``) is trained: keep its metrics
        (and checkpoint path); with a ledger, write them to the store too.
        ``system``: the trial's system policy at the epoch's end, once that
        boundary was decided (config in force, state, last decision, profile:
        :meth:`~pipetune.policy.SystemPolicy.stage_facts`), so a child stage
        resuming here is decided from it instead of profiled afresh."""
        self.heard[trial] = time.time()
        self.longest_epoch_s = max(self.longest_epoch_s, seconds)
        old = self.records.get(key)
        if old is None or (checkpoint and not old.get("checkpoint")):
            self.records[key] = {"metrics": dict(metrics), "trial": trial, "cpu_s": float(cpu_s),
                                 "checkpoint": checkpoint or (old or {}).get("checkpoint"),
                                 "system": dict(system) if system else (old or {}).get("system")}
        if self.claims.get(key) == trial:
            del self.claims[key]
        self.trained[trial] = self.trained.get(trial, 0) + 1
        self.reported.setdefault(trial, []).append(key)
        self.add_cpu(trial, cpu_s)
        plan = self.tree.plans.get(self.plan_of.get(trial, ""))
        if self.ledger is not None and self.record_epochs and plan is not None:
            self.ledger.write_epoch(
                namespace=plan.namespace, key=key,
                epoch=epoch if epoch is not None else plan.epoch_keys().index(key),
                metrics=metrics, checkpoint=checkpoint, job=self.job, trial=trial,
                seconds=seconds, cpu_s=cpu_s, system=system,
            )

    def forget_checkpoint(self, trial: str, key: str, replayed: int = 0) -> None:
        """The checkpoint of ``key`` cannot be read: the epochs after the
        previous one are trained again.  ``replayed``: the epochs the
        :meth:`acquire` that named it counted as replayed, undone."""
        if key in self.records:
            self.records[key]["checkpoint"] = None
        if replayed:
            self.replayed[trial] = self.replayed.get(trial, 0) - replayed
            done = self.reported.get(trial, [])
            undone = done[len(done) - replayed:]
            self.reused[trial] = self.reused.get(trial, 0) - sum(
                1 for k in undone if self.records.get(k, {}).get("reused"))
            del done[len(done) - replayed:]

    def _load_earlier(self, namespace: str) -> None:
        """With ``reuse``, adopt the epochs earlier jobs recorded for
        ``namespace`` (once per namespace; this job's own records win)."""
        if not self.reuse or namespace in self.loaded or self.ledger is None:
            return
        self.loaded.add(namespace)
        for key, rec in self.ledger.load(namespace).items():
            if key not in self.records:
                self.records[key] = {**rec, "trial": None, "reused": True}

    def add_cpu(self, trial: str, cpu_s: float) -> None:
        """CPU-seconds the trial's process spent (training, loading, replaying)."""
        self.cpu_s[trial] = self.cpu_s.get(trial, 0.0) + float(cpu_s)

    def release(self, trial: str) -> int:
        """The trial ended (completed, stopped, failed) or was paused: drop
        its claims (a paused trial claims again when it resumes).  Returns
        how many it held."""
        mine = [k for k, t in self.claims.items() if t == trial]
        for k in mine:
            del self.claims[k]
        if trial in self.plan_of:
            self.finished.add(self.plan_of[trial])
        return len(mine)

    # -- figures -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Totals for benchmarks and reports (plain data).

        ``epochs_reported`` is what the trials reported to Tune (trained
        and replayed): what trial-based execution trains for the same trials
        stopped at the same epochs; ``cpu_s_trial_based`` estimates its
        CPU-seconds as the recorded CPU-seconds of each epoch times the
        trials that reported it (None when an epoch has none recorded).
        ``epochs_reused`` are replayed epochs earlier jobs trained."""
        keys = [k for done in self.reported.values() for k in done]
        costs = [self.records.get(k, {}).get("cpu_s") for k in keys]
        return {
            "trials": len(self.plan_of),
            "epochs_trained": sum(self.trained.values()),
            "epochs_replayed": sum(self.replayed.values()),
            "epochs_reused": sum(self.reused.values()),
            "epochs_reported": len(keys),
            # float(): a store field keeps one type (InfluxDB refuses an int after a float)
            "cpu_s_trial_based": (float(sum(costs))  # type: ignore[arg-type]
                                  if all(c is not None for c in costs) else None),
            "cpu_s": float(sum(self.cpu_s.values())),
            "cpu_s_by_trial": dict(self.cpu_s),
            "tree_nodes": len(self.tree),
            "tree_unique_epochs": self.tree.unique_epochs(),
            "tree_trial_epochs": self.tree.trial_epochs(),
            "checkpoints": sum(1 for r in self.records.values() if r.get("checkpoint")),
        }

    def tree_rows(self) -> list[dict[str, Any]]:
        """:meth:`StageTree.describe`, each row with the Tune trials that
        ran its plans (``tune_trials``) and that end at it
        (``tune_ending``), and ``epoch_marks``, one letter per epoch:
        ``t`` trained by this job, ``r`` reused from an earlier one, ``-``
        never trained (its trials were stopped first)."""
        tune_of: dict[str, list[str]] = {}
        for tune_id, plan_id in sorted(self.plan_of.items()):
            tune_of.setdefault(plan_id, []).append(tune_id)
        rows = self.tree.describe()
        for row in rows:
            row["tune_trials"] = sorted(t for p in row["trials"] for t in tune_of.get(p, []))
            row["tune_ending"] = sorted(t for p in row["ending"] for t in tune_of.get(p, []))
            keys = self.tree.plans[row["trials"][0]].epoch_keys()[row["start"]:row["stop"]]
            row["epoch_marks"] = "".join(
                "-" if k not in self.records else "r" if self.records[k].get("reused") else "t"
                for k in keys
            )
        return rows

    def finish(self) -> dict[str, Any]:
        """The job ended: write its tree and figures to the store (with a
        ledger and a job name) and close the ledger.  Returns the figures."""
        figures = self.stats()
        if self.ledger is not None:
            if self.job:
                plain = {k: v for k, v in figures.items() if not isinstance(v, dict)}
                plain["reuse"] = int(self.reuse)
                self.ledger.write_job(self.job, self.tree_rows(), plain)
            self.ledger.close()
        return figures
