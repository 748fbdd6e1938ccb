"""A trial's worker group under the trial process's control: :class:`GroupRunner`.

``pipetune train`` runs a strategy's ranks to the end on their own.  Inside a
Tune trial the trial process must keep the upper hand at every epoch
boundary, so the system tuner acts on the whole group at once:

* every rank is a child process of the trial process (``spawn_workers``), so
  the trial's cgroup, cpuset and perf sampling (which follow descendants)
  cover all of them;
* rank 0's epoch record is relayed to the trial process (one epoch boundary
  per epoch, whatever the number of ranks), with each rank's pid, CPU
  seconds and peak RSS (``ranks``) and the path of the epoch's checkpoint;
* every rank then waits at the boundary until the trial process answers:
  the thread count per rank for the next epoch (``Boundary.threads``), or a
  restart with another :class:`~pipetune.parallel.base.ParallelConfig`
  (``Boundary.restart``): the group stops, and a new one starts from the
  epoch's checkpoint (weights, optimizer, RNG).  The restart's cost — from
  the stop to every new rank ready to train — is measured and put into the
  next epoch's record as ``restart_s``.

Any strategy runs this way, ``none`` included: as one child process, or
(``none_here=True``, what a Tune trial uses unless it compares strategies by
memory) in the trial process itself, with the same loop, checkpoints and
boundaries (:func:`pipetune.parallel.local.train_here`).  Trained there,
``none`` costs what a plain trial costs — no forkserver, no rank rebuilding
the workload — and a restart back into it reloads the checkpoint into the
workload the trial process built before.  A group of one child process is
what a per-rank memory comparison needs: the trial process's peak RSS holds
Ray's worker as well.

Ranks are forked from a forkserver with torch preloaded that the runner
holds for the length of :meth:`GroupRunner.run` (``start_method="forkserver"``,
the default; :mod:`pipetune.parallel._forkserver` says why it is safe for the
trial's cgroup and why ranks still die with the trial process): a restart
then costs the new ranks' model build, checkpoint load and process group,
not a fresh interpreter importing torch per rank (4–5 s here).
``start_method="spawn"`` starts every group's ranks as fresh interpreters.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipetune.errors import ConfigError
from pipetune.parallel.base import EpochRecord, ParallelConfig, RunSpec

if TYPE_CHECKING:
    from pipetune.parallel._forkserver import WarmForkserver

log = logging.getLogger(__name__)

#: How ranks start: forked from a warm forkserver, or spawned as fresh interpreters.
START_METHODS = ("forkserver", "spawn")

#: Worker entry of each strategy when run as a controlled group.
TARGETS = {
    "none": "pipetune.parallel.local:worker",
    "ddp": "pipetune.parallel.ddp:worker",
    "mp": "pipetune.parallel.mp:worker",
    "gpipe": "pipetune.parallel.gpipe:worker",
}


@dataclass(frozen=True)
class Boundary:
    """The trial process's answer at an epoch boundary.

    ``threads``: torch threads per rank from the next epoch (None: unchanged).
    ``restart``: stop the group and go on with this config from the epoch's
    checkpoint (None, or the config in force: no restart).
    """

    threads: int | None = None
    restart: ParallelConfig | None = None


def threads_per_rank(share: int, workers: int) -> int:
    """Threads each rank gets from the trial's cores: ``share // workers``, at least 1."""
    return max(1, int(share) // max(1, int(workers)))


class GroupRunner:
    """Trains one trial's epochs with a worker group the trial process controls.

    Args:
        workload: a bundled workload name or ``"package.module:Class"`` (a
            :class:`~workloads.base.TorchWorkload`: the worker processes build it
            by name).
        hparams: its hyperparameters (resolved here).
        parallel: the strategy to start with.
        epochs: the trial's epoch count; epochs ``start_epoch .. start_epoch+epochs-1``
            minus those already in ``resume_path``.
        start_epoch: index of the trial's first epoch (0 in a Tune trial).
        resume_path: a checkpoint folder to start from (a Tune checkpoint).
        threads: torch threads per rank for the first epoch.
        checkpoint_dir: where each epoch's state goes (default: a temporary
            folder removed by :meth:`close`; the last two epochs are kept).
        start_method: ``"forkserver"`` (ranks forked from a forkserver with
            torch preloaded, held during :meth:`run`; started when the first
            group of more than the trial process starts) or ``"spawn"``.
        none_here: train ``none`` in this process instead of one child process.

    Not thread-safe; :meth:`run` once.
    """

    def __init__(self, workload: str, hparams: Mapping[str, Any] | None, parallel: ParallelConfig,
                 *, epochs: int, start_epoch: int = 0, seed: int = 0,
                 data_dir: str | Path | None = None, resume_path: str | None = None,
                 threads: int = 1, checkpoint_dir: str | Path | None = None,
                 measure_memory: bool = True, start_method: str = "forkserver",
                 none_here: bool = False) -> None:
        from pipetune.parallel import get_strategy
        from workloads import get_workload
        from workloads.base import TorchWorkload

        if epochs < 1:
            raise ConfigError(f"epochs={epochs}: must be >= 1")
        if start_method not in START_METHODS:
            raise ConfigError(f"start_method={start_method!r}: one of {', '.join(START_METHODS)}")
        self._cls = get_workload(workload)
        if not issubclass(self._cls, TorchWorkload):
            raise ConfigError(
                f"workload {workload!r} is not a TorchWorkload: a worker group needs a torch "
                "model it can rebuild by name"
            )
        self.hparams = self._cls.resolve_hparams(hparams)
        get_strategy(parallel.strategy).check(self._cls, self.hparams, parallel, share_cores=True)
        self._own_dir = checkpoint_dir is None
        self.checkpoint_dir = str(checkpoint_dir or tempfile.mkdtemp(prefix="pipetune-group-"))
        self.workload = workload
        self.parallel = parallel
        self.seed = seed
        self.data_dir = str(data_dir) if data_dir is not None else None
        self.stop_epoch = start_epoch + epochs
        self.next_epoch = start_epoch
        self.resume_path = resume_path
        if resume_path:
            from pipetune.parallel._runtime import load_state

            self.next_epoch = int(load_state(resume_path).get("epoch", start_epoch - 1)) + 1
        self.threads = max(1, int(threads))
        self.measure_memory = measure_memory
        self.start_method = start_method
        self.none_here = none_here
        self._here_wl: Any = None  # the workload none trained with here, for a restart back
        self._warm: WarmForkserver | None = None
        self._asked = False  # whether this run asked for its forkserver yet
        self.restarts: list[dict[str, Any]] = []
        self._kept: list[str] = []

    def _spec(self) -> RunSpec:
        from pipetune.parallel.device import resolve_device

        return RunSpec(
            workload=self.workload, hparams=self.hparams, seed=self.seed,
            data_dir=self.data_dir, epochs=self.stop_epoch - self.next_epoch,
            config=self.parallel, threads_per_worker=self.threads,
            measure_memory=self.measure_memory,
            placement=resolve_device(self.parallel.device, self.parallel.workers),
            start_epoch=self.next_epoch, stop_epoch=self.stop_epoch,
            resume_path=self.resume_path, checkpoint_dir=self.checkpoint_dir, controlled=True,
        )

    def run(self, on_epoch: Callable[[EpochRecord], Boundary | None]) -> list[EpochRecord]:
        """Train to the last epoch; ``on_epoch(record)`` answers each boundary.

        Returns every epoch's record, in order, across restarts.

        Raises:
            WorkloadError (or the PipetuneError a worker raised): a rank failed.
            UsageError / ConfigError / NotSupportedError: a restart's config
                does not apply (checked before the group stops).
        """
        # The forkserver is held for this run only: released before the
        # trial's session closes, so it never outlives the trial in its cgroup.
        try:
            return self._run(on_epoch)
        finally:
            if self._warm is not None:
                self._warm.release()
                self._warm = None

    def _forkserver(self) -> WarmForkserver | None:
        """The run's forkserver, acquired when its first group of ranks starts:
        a run that trains only ``none`` here never checks its preloads (a
        fresh interpreter) nor starts one."""
        if self.start_method == "forkserver" and not self._asked:
            from pipetune.parallel._forkserver import acquire_forkserver

            self._asked = True
            self._warm = acquire_forkserver([self._cls.__module__])
        return self._warm

    def _run(self, on_epoch: Callable[[EpochRecord], Boundary | None]) -> list[EpochRecord]:
        from pipetune.parallel import get_strategy
        from pipetune.parallel._runtime import spawn_workers

        records: list[EpochRecord] = []
        restart_from: float | None = None
        while self.next_epoch < self.stop_epoch:
            spec = self._spec()
            stop: dict[str, Any] = {}
            cost: list[float] = []

            def on_ready(cost: list[float] = cost, since: float | None = restart_from) -> None:
                if since is not None:
                    cost.append(time.perf_counter() - since)

            def relay(record: EpochRecord, spec: RunSpec = spec, stop: dict[str, Any] = stop,
                      cost: list[float] = cost) -> tuple[str, int | None]:
                if cost:
                    record["restart_s"] = self.restarts[-1]["restart_s"] = cost.pop()
                self._keep(record.get("checkpoint"))
                answer = on_epoch(record) or Boundary()
                if answer.threads:
                    self.threads = max(1, int(answer.threads))
                last = record["epoch"] + 1 >= self.stop_epoch
                new = answer.restart
                if new is not None and new != spec.config and not last:
                    get_strategy(new.strategy).check(self._cls, self.hparams, new,
                                                     share_cores=True)
                    stop.update(config=new, epoch=record["epoch"], at=time.perf_counter(),
                                checkpoint=record.get("checkpoint"))
                    return ("stop", None)
                return ("go", self.threads)

            if self.none_here and spec.config.strategy == "none":
                from pipetune.parallel.local import train_here

                got, self._here_wl = train_here(spec, relay, on_ready=on_ready, wl=self._here_wl)
            else:
                got = spawn_workers(TARGETS[spec.config.strategy], spec, relay,
                                    on_ready=on_ready, forkserver=self._forkserver())
            records.extend(got)
            if got:
                self.next_epoch = got[-1]["epoch"] + 1
            if not stop:
                break
            if not stop.get("checkpoint"):
                raise ConfigError("a restart needs the epoch's checkpoint; the group wrote none")
            log.info("worker group: restart after epoch %d: %s -> %s", stop["epoch"],
                     self.parallel, stop["config"])
            self.restarts.append({"epoch": stop["epoch"], "from": str(self.parallel),
                                  "to": str(stop["config"]), "restart_s": None})
            self.parallel = stop["config"]
            self.resume_path = stop["checkpoint"]
            restart_from = stop["at"]
        return records

    def _keep(self, checkpoint: str | None) -> None:
        """Keep the last two epochs' checkpoints (the one a restart or Tune may need)."""
        if not checkpoint:
            return
        self._kept.append(checkpoint)
        while len(self._kept) > 2:
            shutil.rmtree(self._kept.pop(0), ignore_errors=True)

    def close(self) -> None:
        """Remove the checkpoints this runner's own temporary folder holds."""
        if self._own_dir:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
