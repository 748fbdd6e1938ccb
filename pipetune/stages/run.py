"""Stage-tree execution on Ray Tune: the design.

**Every original trial stays a Tune trial; stages are shared underneath.**
Tune's searcher draws trials (grid or random, schedules included) and its
scheduler (FIFO, ASHA, HyperBand …) sees normal trials with a result per
epoch.  What changes is inside each trial: before training, the trial asks
the job's *stage store* (:class:`~pipetune.stages.store.StageStore`, one Ray
actor per job) for the longest prefix of its epochs that another trial has
already trained.  It loads that prefix's checkpoint (weights, optimizer,
RNG; data order is a function of seed and epoch in the bundled workloads),
replays the prefix's recorded per-epoch metrics to Tune, and trains only the
rest.  While another trial is training a prefix it needs, it waits for that
trial instead of training it again.  So every node of the stage tree is
trained once, in whatever order the searcher and scheduler issue trials,
and a trial stopped by ASHA/HyperBand simply never trains its own unshared
stages, while stages that surviving trials need are trained by them.

Checkpoints are written only where the tree branches (the driver registers
the grid's plans first, so the first trial through a shared stage knows
where later ones leave it); with ``prune_safe`` also at every epoch of a
stage live trials share, so a trial stopped mid-stage loses nothing.  They
live under the job's folder in Tune's storage path (``<storage>/<job>/
stages``), which must be a shared file system when trials run on several
nodes.

Pieces:

- :class:`StageRunner` — the driver side: starts the store actor,
  registers plans, wraps the training function
  (:meth:`StageRunner.wrap`), gives Tune the callback that releases an
  ended trial's claims, reads the figures, cleans up.
- :mod:`pipetune.stages.session` — the trial side (``resume``/``report``).

**Across jobs** (``store`` and ``reuse``): the store actor records every
trained epoch in the pipetune store (:mod:`pipetune.stages.ledger`: the
prefix key, metrics, checkpoint path), and with ``reuse`` it first adopts
what earlier jobs of the same namespace recorded, so a widened grid trains
only what is new.  Those checkpoints stay where their job wrote them (for
``pipetune tune``, ``$PIPETUNE_HOME/ray_results/JOB/stages``) until someone
deletes them; a later job retrains what it finds gone or unreadable.  At
:meth:`StageRunner.close` the job's tree and figures go to the store too
(``pipetune report`` draws them).

**The system tuner per stage**: in mode ``pipetune`` each trained epoch's
record keeps the trial's system facts at its end, and a trial resuming from
a parent stage decides its stage once from them (see
:mod:`pipetune.stages.session`); concurrent stages are Tune trials, so the
node allocator packs them as it packs trials.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pipetune.errors import ConfigError
from pipetune.stages.ledger import StageLedger
from pipetune.stages.store import StageStore
from pipetune.stages.tree import TrialPlan

log = logging.getLogger(__name__)

__all__ = ["StageRunner", "order_trials", "plan_for"]


def plan_for(
    config: Mapping[str, Any], epochs: int, *, namespace: str = "", ignore: Iterable[str] = ()
) -> TrialPlan:
    """The plan of a trial config; its id names the full value sequence, so
    the driver's pre-registered plan and the trial's own are the same."""
    probe = TrialPlan.from_config("?", config, epochs, namespace=namespace, ignore=ignore)
    return TrialPlan(
        probe.epoch_keys()[-1], epochs, probe.static, probe.schedules, probe.namespace
    )


def order_trials(
    trials: Iterable[Mapping[str, Any]],
    epochs: int,
    lanes: int,
    *,
    namespace: str = "",
    ignore: Iterable[str] = (),
) -> list[Mapping[str, Any]]:
    """``trials`` (hyperparameter dicts, e.g. a grid) reordered so that
    ``lanes`` trials running at once rarely wait for each other's prefixes
    (:meth:`StageTree.order`); give the result to ``tune.grid_search``."""
    from pipetune.stages.tree import StageTree

    tree = StageTree()
    by_plan: dict[str, list[Mapping[str, Any]]] = {}
    ignored = tuple(ignore)
    for t in trials:
        plan = plan_for(t, epochs, namespace=namespace, ignore=ignored)
        tree.add(plan)
        by_plan.setdefault(plan.trial_id, []).append(t)
    return [t for pid in tree.order(lanes) for t in by_plan[pid]]


class StageRunner:
    """Stage-tree execution for one tuning job (driver side).

    Args:
        checkpoint_dir: where stage checkpoints go (default: a fresh folder
            removed by :meth:`close`); usually ``<storage>/<job>/stages``.
        share: False runs every trial alone through the same code, which is
            what a trial-based baseline should measure.
        prune_safe: also checkpoint inside shared stages (use with a
            scheduler that stops trials).
        lease_s: a claim of a trial not heard of for this long (at least
            ten of the longest epoch) is given to a waiting trial.
        store: the pipetune store URL (``Settings.store``): every trained
            epoch is recorded there (only when ``checkpoint_dir`` is given:
            a temporary folder's checkpoints end with the job), and, with
            ``job``, the tree and figures at :meth:`close` (``pipetune
            report`` shows them).
        spool_dir: where the store's points wait while it is down
            (default ``$PIPETUNE_HOME/spool``).
        job: the job's name in the store.
        reuse: start from the epochs earlier jobs of the same namespace
            recorded in ``store`` (stages are shared across jobs by the exact
            prefix of values, namespace included), and checkpoint every
            epoch trained so later jobs can branch anywhere.

    Raises:
        ConfigError: ``reuse`` without ``store`` or ``checkpoint_dir``.
    """

    def __init__(
        self,
        checkpoint_dir: Path | None = None,
        *,
        share: bool = True,
        prune_safe: bool = False,
        lease_s: float = 60.0,
        store: str | None = None,
        spool_dir: Path | None = None,
        job: str = "",
        reuse: bool = False,
    ) -> None:
        import ray

        if reuse and (store is None or checkpoint_dir is None):
            raise ConfigError(
                "stage reuse needs a store and a checkpoint_dir that outlives the job"
            )
        self._owns_dir = checkpoint_dir is None
        if checkpoint_dir is None:
            import tempfile

            checkpoint_dir = Path(tempfile.mkdtemp(prefix="pipetune-stages-"))
        self.checkpoint_dir = Path(checkpoint_dir)
        self.name = f"pipetune-stages-{uuid.uuid4().hex[:8]}"
        self.figures: dict[str, Any] | None = None
        ledger = None
        if store is not None:
            from pipetune.config import default_home

            ledger = StageLedger(store, spool_dir or default_home() / "spool")
        actor = ray.remote(num_cpus=0)(StageStore)
        self.store = actor.options(name=self.name).remote(
            share=share, prune_safe=prune_safe, lease_s=lease_s, ledger=ledger,
            reuse=reuse, job=job, record_epochs=not self._owns_dir,
        )

    def register(self, plans: Iterable[TrialPlan]) -> int:
        """Pre-register trials (e.g. the grid) so checkpoints land where they
        branch; returns the tree's node count."""
        import ray

        return int(ray.get(self.store.register.remote(list(plans))))

    def wrap(
        self,
        fn: Callable[[dict[str, Any]], Any],
        epochs: int,
        *,
        namespace: str = "",
        hparams: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
        ignore: Iterable[str] = (),
    ) -> Callable[[dict[str, Any]], Any]:
        """The Tune function trainable running ``fn`` with a stage session.

        Args:
            fn: the training function; it calls
                :func:`pipetune.stages.resume` and :func:`pipetune.stages.report`.
            epochs: epochs every trial trains.
            namespace: what else decides the numbers (workload, data, seed).
            hparams: where the trial's hyperparameters are in its config
                (default: the config).
            ignore: config keys that do not change the numbers (``cores``).
        """
        store_name, ckpt_dir, ignored = self.name, self.checkpoint_dir, tuple(ignore)

        def trainable(config: dict[str, Any]) -> Any:
            import ray
            from ray import tune

            from pipetune.stages import session as stage_session

            plan = plan_for(
                hparams(config) if hparams else config, epochs, namespace=namespace,
                ignore=ignored,
            )
            trial = tune.get_context().get_trial_id() or plan.trial_id
            s = stage_session.StageSession(ray.get_actor(store_name), trial, plan, ckpt_dir)
            stage_session.set_current(s)
            try:
                return fn(config)
            finally:
                stage_session.set_current(None)
                s.close()

        trainable.__name__ = getattr(fn, "__name__", "trainable")
        return trainable

    def callback(self) -> Any:
        """A Tune callback that releases the claims of a trial that ended
        or was paused at once (a stopped trial's own ``finally`` may never
        run; a paused one would hold its claims until its lease ran out,
        and with HyperBand the trials it blocks are the ones the scheduler
        waits for before it resumes the paused ones)."""
        from ray.tune import Callback

        store = self.store

        class StageReleaseCallback(Callback):
            def __init__(self) -> None:
                self.paused: set[str] = set()

            def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
                now = {t.trial_id for t in trials if t.status == "PAUSED"}
                for trial_id in now - self.paused:
                    store.release.remote(trial_id)
                self.paused = now

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any
                                  ) -> None:
                store.release.remote(trial.trial_id)

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any
                               ) -> None:
                store.release.remote(trial.trial_id)

        return StageReleaseCallback()

    def stats(self) -> dict[str, Any]:
        """The store's totals (CPU-seconds, epochs trained and replayed, tree size)."""
        import ray

        return dict(ray.get(self.store.stats.remote()))

    def tree(self) -> list[dict[str, Any]]:
        """The stage tree as plain rows (see :meth:`StageTree.describe`)."""
        import ray

        return list(ray.get(self.store.tree_rows.remote()))

    def close(self) -> None:
        """Record the job's tree and figures in the store (see ``store``),
        keep the figures in :attr:`figures`, stop the store actor; remove the
        checkpoints if the folder is ours."""
        import ray

        try:
            self.figures = dict(ray.get(self.store.finish.remote()))
        except Exception as e:  # noqa: BLE001 - closing must not fail the job
            log.warning("stage store: tree and figures not recorded: %s", e)
        try:
            ray.kill(self.store)
        except Exception as e:  # noqa: BLE001 - already gone with Ray
            log.debug("stage store already gone: %s", e)
        if self._owns_dir:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
