"""A Tune trial that trains with a parallel strategy: :func:`train_parallel`.

Called inside a function wrapped by :func:`pipetune.wrap` (``pipetune tune``
does it for the bundled workloads), it runs the trial's epochs with a
:class:`~pipetune.parallel.group.GroupRunner`: the strategy's ranks are
*child processes of the trial process*, started with the project's own
``spawn_workers`` runtime (not Ray Train's ``TorchTrainer``; see
docs/architecture.md for why), so

* they live in the trial's cgroup and cpuset (children inherit both, and the
  cgroup/affinity controllers follow descendants when they re-apply),
* the trial's perf sampling and energy attribution follow them (both count
  the trial process's descendants),
* each epoch is *one* boundary of the trial's session: rank 0's record is
  relayed here, the session ends the epoch (the tuner decides, limits move),
  and only then are the ranks told to go on, with ``threads_per_rank``
  torch threads each (the trial's thread count divided among them, at least
  one), or to stop and restart with another strategy from the epoch's
  checkpoint (:meth:`TrialSession.request_parallel`).

A user's own model trains this way when it is a
:class:`~workloads.base.TorchWorkload` the worker processes can build by
name: ``"package.module:Class"`` (importable in a fresh process), whose
``build_model`` returns an ``nn.Sequential`` (``mp``/``gpipe`` cut it into
contiguous stages; a model that is not one overrides
``partition_boundaries``) and whose ``load_data`` returns tensors (every rank
loads the same data; ``ddp`` shards each batch).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipetune.parallel.base import EpochRecord, ParallelConfig

log = logging.getLogger(__name__)

#: Record keys that are per-epoch bookkeeping, not metrics for Tune.
_NOT_METRICS = {"epoch", "strategy", "workers", "chunks", "device", "data", "ranks",
                "partitions", "checkpoint", "step_losses", "restart_s", "samples"}


def train_parallel(
    workload: str,
    hparams: Mapping[str, Any] | None,
    *,
    epochs: int,
    parallel: ParallelConfig | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    checkpoint_root: str | Path | None = None,
) -> list[EpochRecord]:
    """Train this trial's ``epochs`` epochs with a worker group, reporting each epoch.

    ``parallel`` defaults to the config given to :func:`pipetune.wrap`.  A
    Tune checkpoint of an earlier run of this trial (HyperBand's pause) is
    resumed.  Outside a pipetune trial, epochs go to ``ray.tune.report``
    directly and each rank gets ``cores // workers`` threads.  Epochs are
    numbered from 0, as the bundled single-process trainable numbers them.

    ``checkpoint_root``: where the group's own epoch checkpoints go (a new
    folder in it, removed when training returns; default: a temporary
    folder).  A trial Tune stops or pauses (HyperBand) is ended without its
    ``finally`` running, so its folder stays: ``pipetune tune`` gives a
    folder of the job's that it removes when the job ends.  Tune keeps its
    own copy of every reported checkpoint.

    Returns every epoch's record (see :mod:`pipetune.parallel.base`).

    Raises:
        UsageError / ConfigError / NotSupportedError: the strategy does not fit
            the workload (before any process starts).
        WorkloadError: a rank failed.
    """
    from ray import tune

    import pipetune.tune as pt
    from pipetune.parallel.group import Boundary, GroupRunner, threads_per_rank
    from pipetune.tune.session import GroupFacts, current_session
    from workloads.base import cpu_count

    session = current_session()
    if parallel is None:
        parallel = (session.starting_parallel() if session is not None else None) \
            or ParallelConfig()
    resume_path = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        # Ray keeps its own copy of the checkpoint for as long as the trial lives.
        resume_path = ckpt.to_directory()

    def threads(workers: int) -> int:
        if session is not None:
            return session.threads_per_rank(workers)
        return threads_per_rank(cpu_count(), workers)

    own_dir = None
    if checkpoint_root is not None:
        Path(checkpoint_root).mkdir(parents=True, exist_ok=True)
        own_dir = tempfile.mkdtemp(prefix="pipetune-group-", dir=checkpoint_root)
    runner = GroupRunner(workload, hparams, parallel, epochs=epochs, start_epoch=0, seed=seed,
                         data_dir=data_dir, resume_path=resume_path,
                         threads=threads(parallel.workers), checkpoint_dir=own_dir,
                         none_here=session.none_here if session is not None else True)

    def on_epoch(record: EpochRecord) -> Boundary:
        metrics = {k: v for k, v in record.items()
                   if k not in _NOT_METRICS and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        metrics["epoch"] = record["epoch"]
        group = GroupFacts(
            strategy=record["strategy"], workers=int(record["workers"]),
            ranks=tuple(record.get("ranks") or ()), restart_s=record.get("restart_s"),
            chunks=int(record.get("chunks", 1)),
        )
        checkpoint = None
        if record.get("checkpoint"):
            checkpoint = tune.Checkpoint.from_directory(record["checkpoint"])
        pt.report(metrics, steps=int(record.get("steps", 0)), checkpoint=checkpoint, group=group)
        restart = session.take_restart() if session is not None else None
        workers = restart.workers if restart is not None else group.workers
        return Boundary(threads=threads(workers), restart=restart)

    try:
        return runner.run(on_epoch)
    finally:
        runner.close()
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
