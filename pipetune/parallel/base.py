"""Parallel training strategies: the config a trial chooses and the strategy interface.

A :class:`ParallelConfig` (``strategy``, ``workers``, ``chunks``) comes from
the trial's config; :func:`pipetune.parallel.train` validates it against the
workload and the host, then runs the epochs with the chosen
:class:`ParallelStrategy`:

* ``none``  — one process, the workload's own training loop (the reference).
* ``ddp``   — ``DistributedDataParallel`` over ``workers`` processes; each
  global batch is cut into ``workers`` equal shards, gradients are averaged,
  so a step equals the single-process step on the whole batch.
* ``mp``    — model parallel: the model's layer groups on ``workers``
  processes; activations go forward and gradients back with point-to-point
  send/recv, one batch at a time (no pipelining).
* ``gpipe`` — ``torch.distributed.pipelining``: one ``PipelineStage`` per
  process and ``ScheduleGPipe`` with ``chunks`` micro-batches.

Each epoch yields one record (a dict): ``epoch``, ``loss``, ``steps``,
``samples``, ``seconds``, the workload's evaluation figures, ``strategy``,
``workers``, ``chunks``, ``device`` (``cpu`` or ``cuda``); with
``measure_memory`` also ``partitions`` (per partition: ``device``,
``params_mb``, ``grads_mb``, ``optimizer_mb``, ``activations_mb``,
``total_mb``, ``rss_peak_mb``, and on CUDA ``cuda_max_allocated_mb``) and
with ``record_step_losses`` the per-step losses.  Workers are processes on
127.0.0.1 talking over gloo on CPU, or NCCL with one GPU per rank
(:mod:`pipetune.parallel.device` decides); the caller owns them and they end
with the call.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipetune.errors import ConfigError, NotSupportedError, UsageError
from pipetune.parallel.device import DEVICE_CHOICES, DevicePlan
from workloads.base import Workload, cpu_count

STRATEGY_NAMES = ("none", "ddp", "mp", "gpipe")

EpochRecord = dict[str, Any]


@dataclass(frozen=True)
class ParallelConfig:
    """How one trial trains: strategy, worker processes, micro-batches (gpipe), device.

    ``device`` is what was asked for (``auto``, ``cpu`` or ``cuda``);
    :func:`pipetune.parallel.device.resolve_device` turns it into the
    :class:`~pipetune.parallel.device.DevicePlan` the processes follow.
    """

    strategy: str = "none"
    workers: int = 1
    chunks: int = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGY_NAMES:
            raise UsageError(
                f"unknown parallel strategy {self.strategy!r} (known: {', '.join(STRATEGY_NAMES)})"
            )
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers={self.workers!r}: must be an integer >= 1")
        if not isinstance(self.chunks, int) or self.chunks < 1:
            raise ConfigError(f"chunks={self.chunks!r}: must be an integer >= 1")
        if self.device not in DEVICE_CHOICES:
            raise UsageError(
                f"unknown device {self.device!r} (known: {', '.join(DEVICE_CHOICES)})"
            )

    @classmethod
    def of(cls, strategy: str, *, workers: int | None = None, chunks: int | None = None,
           device: str = "auto") -> ParallelConfig:
        """``strategy`` with the defaults every entry point shares for what is
        left out: one process for ``none`` and 2 ranks for the others;
        4 micro-batches for ``gpipe`` and 1 for the others."""
        if workers is None:
            workers = 1 if strategy == "none" else 2
        if chunks is None:
            chunks = 4 if strategy == "gpipe" else 1
        return cls(strategy, workers=workers, chunks=chunks, device=device)

    def __str__(self) -> str:
        s = f"{self.strategy}"
        if self.strategy != "none":
            s += f" x{self.workers}"
        if self.strategy == "gpipe":
            s += f" ({self.chunks} chunks)"
        return s


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker process needs to rebuild the trial (picklable)."""

    workload: str
    hparams: dict[str, Any]
    seed: int
    data_dir: str | None
    epochs: int
    config: ParallelConfig
    threads_per_worker: int
    measure_memory: bool = False
    record_step_losses: bool = False
    #: Where the ranks compute (resolved from ``config.device`` before any process starts).
    placement: DevicePlan = DevicePlan("cpu")
    #: Index of the first epoch to train (``1`` for ``pipetune train``; a Tune
    #: trial counts from ``0``; a restarted group from the epoch after its checkpoint).
    start_epoch: int = 1
    #: Index one past the last epoch (default ``epochs + 1``: epochs 1..epochs).
    stop_epoch: int | None = None
    #: A checkpoint (:func:`pipetune.parallel._runtime.save_state`) every rank starts from.
    resume_path: str | None = None
    #: Rank 0 writes the whole trial state (weights, optimizer, RNG) here at every
    #: epoch end, as ``epoch-{k}/state.pt``, and names it in the record (``checkpoint``).
    checkpoint_dir: str | None = None
    #: The ranks wait at every epoch boundary for the trial process's word
    #: (a thread count, or stop): :class:`pipetune.parallel.group.GroupRunner`.
    controlled: bool = False

    @property
    def epoch_range(self) -> range:
        stop = self.stop_epoch if self.stop_epoch is not None else self.epochs + 1
        return range(self.start_epoch, stop)


class ParallelStrategy(abc.ABC):
    """One way of training a workload.  Stateless; one instance may run many trials."""

    name: str = ""

    def check(self, workload_cls: type[Workload], hparams: dict[str, Any],
              config: ParallelConfig, *, share_cores: bool = False) -> None:
        """Refuse what cannot work, before any process starts.

        ``share_cores``: the ranks share whatever cores the trial holds (a Tune
        trial: its cpuset may be smaller than its workers for a while), so
        workers are not checked against this process's cores.

        Raises:
            NotSupportedError: the strategy does not apply to this workload.
            UsageError / ConfigError: workers/chunks/batch size do not fit.
        """
        cores = cpu_count()
        if not share_cores and config.workers > cores:
            raise UsageError(
                f"workers={config.workers} exceeds the {cores} cores this process may use"
            )
        if self.name != "none" and not workload_cls.supports_parallel:
            raise NotSupportedError(
                f"parallel strategy {self.name!r} does not apply to workload "
                f"{workload_cls.name!r} (kind {workload_cls.kind}: not a DNN); use --parallel none"
            )

    @abc.abstractmethod
    def run(self, spec: RunSpec,
            on_epoch: Callable[[EpochRecord], None] | None = None) -> list[EpochRecord]:
        """Train ``spec.epochs`` epochs; call ``on_epoch`` as each one ends."""
