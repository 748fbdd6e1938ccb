"""The trial side of stage-tree execution: three calls in a training loop.

::

    start = stages.resume(model.load_state_dict)           # before the loop
    for epoch in range(start, epochs):
        lr = stages.value(config["lr"], epoch)              # per scheduled value
        ...
        stages.report(metrics, state=model.state_dict)      # instead of tune.report

- :func:`resume` — asks the stage store for the longest prefix of this
  trial's epochs that is already trained (waiting while another trial is
  training it), loads that prefix's checkpoint through the caller's
  ``load`` function, replays the prefix's recorded per-epoch metrics to Tune
  (so Tune sees the trial as if it had trained them) and returns the first
  epoch left to train.
- :func:`report` — records the epoch's metrics under its prefix key, writes
  a checkpoint where the stage tree branches (``state()`` is only called
  then), and forwards the metrics to :func:`pipetune.tune.report` (so a
  trial wrapped by :func:`pipetune.wrap` keeps its system tuner).  The
  record also keeps what the trial's system policy had once the epoch's
  boundary was decided (config in force, state, profile).

**The system tuner per stage.**  A trial that resumes from a parent stage's
checkpoint hands that record to its pipetune session
(:meth:`~pipetune.tune.session.TrialSession.resume_stage`): its tuner
decides the child stage once, at the parent's settled config within the
node share (decision MATCHED, reason "parent stage KEY …"), with no
profiling epoch and no probing — unless the batch size changes at the
branch point, or the parent was not settled, when it profiles as a new
trial would.  When the trial's own schedule changes the batch size after
an epoch it trained, its tuner re-profiles the next epoch (a settled one
goes back to profiling at the default).  Replayed epochs never reach the
tuner.

Outside a stage run (no :class:`StageSession`), :func:`resume` returns
``start`` and :func:`report` is :func:`pipetune.tune.report`: the same
training function runs trial-based unchanged.

Checkpoints are written with ``torch.save`` and read with
``torch.load(weights_only=True)``: a state may hold tensors, numbers,
strings and containers of them (what ``state_dict()`` returns), never
arbitrary pickled objects.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipetune.stages.tree import TrialPlan

log = logging.getLogger(__name__)

__all__ = ["BATCH_SIZE", "StageSession", "current", "report", "resume", "set_current"]

_current: StageSession | None = None

#: The hyperparameter whose change at a branch point makes a child stage
#: another workload to the system tuner (profiled afresh, not decided from
#: its parent): the bundled workloads' and :func:`growing_batch`'s name.
BATCH_SIZE = "batch_size"


def current() -> StageSession | None:
    """The stage session of the trial running in this process, if any."""
    return _current


def set_current(session: StageSession | None) -> None:
    # Called through the module (``session.set_current``) from the wrapped
    # trainable: Ray pickles closures by value with a copy of the globals
    # they name, so the global must live in a module the trial imports.
    global _current
    _current = session


class StageSession:
    """One trial's view of the stage store; see the module docstring.

    Args:
        store: the stage store actor handle (or a :class:`StageStore` for
            tests; calls are made through :meth:`_call`).
        trial: the Tune trial id.
        plan: the trial's plan (its ``trial_id`` is the plan id in the tree).
        checkpoint_dir: where stage checkpoints are written (shared by every
            trial of the job; on one node, or a shared file system).
        report_fn: where metrics go (default :func:`pipetune.tune.report`);
            replays go to ``replay_fn`` (default ``ray.tune.report``) so a
            system tuner never sees a replayed epoch as a trained one.
        poll_s: how often a waiting trial asks again.
    """

    def __init__(
        self,
        store: Any,
        trial: str,
        plan: TrialPlan,
        checkpoint_dir: Path,
        *,
        report_fn: Callable[..., Any] | None = None,
        replay_fn: Callable[[dict[str, Any]], Any] | None = None,
        poll_s: float = 0.2,
    ) -> None:
        self.store = store
        self.trial = trial
        self.plan = plan
        self.keys = plan.epoch_keys()
        self.checkpoint_dir = Path(checkpoint_dir)
        self._report_fn = report_fn
        self._replay_fn = replay_fn
        self.poll_s = poll_s
        self.epoch = 0
        self.waited_s = 0.0
        self._cpu_mark = time.process_time()
        self._wall_mark = time.time()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.store, method)
        if hasattr(fn, "remote"):
            import ray

            return ray.get(fn.remote(*args, **kwargs))
        return fn(*args, **kwargs)

    def _cpu_since_mark(self) -> float:
        now = time.process_time()
        spent, self._cpu_mark = now - self._cpu_mark, now
        return spent

    def resume(self, load: Callable[[Any], Any] | None, start: int = 0,
               replay: Callable[[dict[str, Any]], Any] | None = None) -> int:
        """See :func:`resume`."""
        while True:
            got = self._call("acquire", self.trial, self.plan, start)
            if got.wait_for is not None:
                log.debug("trial %s waits for trial %s", self.trial, got.wait_for)
                time.sleep(self.poll_s)
                self.waited_s += self.poll_s
                continue
            if got.resume_epoch < 0 or got.checkpoint is None or load is None:
                break
            state = self._read_checkpoint(got.checkpoint)
            if state is not None:
                load(state)
                break
            # Unreadable: the store forgets it and names an earlier start.
            self._call("forget_checkpoint", self.trial, self.keys[got.resume_epoch],
                       len(got.replay))
        if got.resume_epoch < 0:
            self.epoch = start
            return start
        replay = replay or self._replay_fn or _tune_report
        for i, metrics in enumerate(got.replay):
            epoch = got.first_replayed + i
            replay({**metrics, "epoch": epoch, "pt_stage_replayed": True})
        log.info("trial %s resumes after epoch %d from stage checkpoint %s",
                 self.trial, got.resume_epoch, got.checkpoint)
        self.epoch = got.resume_epoch + 1
        if self.epoch < len(self.keys) and got.checkpoint is not None and load is not None:
            self._tell_tuner(got.resume_epoch, got.system)
        self._wall_mark = time.time()
        return self.epoch

    def _tell_tuner(self, parent_epoch: int, system: Mapping[str, Any] | None) -> None:
        """Hand the parent stage's system facts to this trial's pipetune
        session, so its tuner decides the child stage from them (or profiles
        it afresh when the batch size changes at the branch point) instead of
        profiling as a new trial.  Outside a pipetune trial: nothing."""
        from pipetune.tune.session import current_session

        session = current_session()
        if session is None:
            return
        before = dict(self.plan.point(parent_epoch))
        after = dict(self.plan.point(parent_epoch + 1))
        session.resume_stage(self.keys[parent_epoch], dict(system or {}),
                             epoch=parent_epoch + 1,
                             parent_batch_size=before.get(BATCH_SIZE),
                             batch_size=after.get(BATCH_SIZE))

    def _batch_change(self, epoch: int) -> None:
        """When this trial's schedule changes the batch size after ``epoch``
        (and it trains on), its tuner profiles the next epoch afresh: the
        config settled for the old batch size is another workload's.  Called
        once ``epoch``'s boundary is decided, before the next one starts."""
        if epoch + 1 >= self.plan.epochs:
            return
        before = dict(self.plan.point(epoch)).get(BATCH_SIZE)
        after = dict(self.plan.point(epoch + 1)).get(BATCH_SIZE)
        if before == after:
            return
        from pipetune.tune.session import current_session

        session = current_session()
        if session is not None:
            session.reprofile(f"batch size {before} -> {after} from epoch {epoch + 1}")

    def _read_checkpoint(self, path: str) -> Any:
        """The state in ``path``, or None (one warning line) when the file is
        gone or unreadable: a stage another job wrote may have been removed
        or cut short since."""
        import torch

        try:
            return torch.load(path, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file means: train again
            log.warning("trial %s: stage checkpoint %s unreadable (%s: %s); its stage is "
                        "trained again", self.trial, path, type(e).__name__, e)
            return None

    def report(self, metrics: Mapping[str, Any], *, state: Callable[[], Any] | None = None,
               steps: int = 0, checkpoint: Any = None) -> Any:
        """See :func:`report`."""
        epoch = metrics.get("epoch", self.epoch)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < len(self.keys):
            epoch = self.epoch
        key = self.keys[epoch] if epoch < len(self.keys) else None
        path = None
        if key is not None and state is not None and self._call(
            "wants_checkpoint", self.trial, self.plan.trial_id, epoch, key
        ):
            import torch

            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            final = self.checkpoint_dir / f"stage-{key}.pt"
            tmp = final.with_suffix(f".{os.getpid()}.tmp")
            torch.save(state(), tmp)
            os.replace(tmp, final)  # a reader never sees half a checkpoint
            path = str(final)
        now = time.time()
        seconds, cpu_s = now - self._wall_mark, self._cpu_since_mark()

        def record(system: Mapping[str, Any] | None) -> None:
            # After the trial's system policy decided this boundary (the
            # config in force at the epoch's end), before Tune hears of it.
            if key is not None:
                plain = {k: v for k, v in metrics.items()
                         if isinstance(v, (int, float, str, bool)) or v is None}
                self._call("record", self.trial, key, plain, seconds=seconds, cpu_s=cpu_s,
                           checkpoint=path, epoch=epoch, system=dict(system) if system else None)
            self._batch_change(epoch)

        self._wall_mark = now
        self.epoch = epoch + 1
        out = {**metrics, "pt_stage_replayed": False}
        if self._report_fn is not None:
            from pipetune.tune.session import current_session

            session = current_session()
            record(session.stage_facts() if session is not None else None)
            return self._report_fn(out, steps=steps, checkpoint=checkpoint)
        import pipetune.tune as pt

        return pt.report(out, steps=steps, checkpoint=checkpoint, on_decided=record)

    def close(self) -> None:
        """Hand back unrecorded CPU time and every claim still held."""
        try:
            self._call("add_cpu", self.trial, self._cpu_since_mark())
            self._call("release", self.trial)
        except Exception as e:  # noqa: BLE001 - the callback releases too
            log.debug("trial %s: stage store unreachable at close: %s", self.trial, e)


def _tune_report(metrics: dict[str, Any]) -> None:
    from ray import tune

    tune.report(metrics)


def resume(load: Callable[[Any], Any] | None = None, start: int = 0,
           replay: Callable[[dict[str, Any]], Any] | None = None) -> int:
    """The first epoch this trial must train; see the module docstring.

    Args:
        load: called with the stage checkpoint's state (what ``state()``
            returned to :func:`report` in the trial that trained the prefix).
        start: the epoch the loop would start from anyway (after restoring
            the trial's own Tune checkpoint, e.g. on a HyperBand resume).
        replay: reports one replayed epoch's metrics to Tune (default:
            ``ray.tune.report`` without a checkpoint).  Under a scheduler
            that pauses trials (HyperBand), give each replayed epoch a Tune
            checkpoint of the state ``load`` received, with that epoch's
            number: a trial paused on a replayed epoch then resumes after
            it, where without one it starts over and Tune hears the epochs
            it had replayed twice.
    """
    session = current()
    return start if session is None else session.resume(load, start, replay)


def report(metrics: Mapping[str, Any], *, state: Callable[[], Any] | None = None,
           steps: int = 0, checkpoint: Any = None) -> Any:
    """End an epoch: record it for the stage tree, then report to Tune.

    ``metrics["epoch"]`` (0-based), when given, says which epoch ended.
    ``state`` returns the training state to checkpoint (called only where
    another trial will resume from it)."""
    session = current()
    if session is None:
        import pipetune.tune as pt

        return pt.report(metrics, steps=steps, checkpoint=checkpoint)
    return session.report(metrics, state=state, steps=steps, checkpoint=checkpoint)
