"""Parallel training strategies (none, ddp, mp, gpipe) chosen by a trial's config.

Entry point::

    from pipetune.parallel import ParallelConfig, train
    records = train("lenet5-mnist", {"batch_size": 64},
                    parallel=ParallelConfig("gpipe", workers=2, chunks=4), epochs=2)

See :mod:`pipetune.parallel.base` for the strategies and the epoch record, and
:mod:`pipetune.parallel.device` for where the ranks compute (``device="auto"``:
one GPU per rank with NCCL when there are enough, else the CPU with gloo).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipetune.errors import UsageError
from pipetune.parallel.base import (
    STRATEGY_NAMES,
    EpochRecord,
    ParallelConfig,
    ParallelStrategy,
    RunSpec,
)
from pipetune.parallel.ddp import DDPStrategy
from pipetune.parallel.device import DEVICE_CHOICES, DevicePlan, resolve_device
from pipetune.parallel.gpipe import GPipeStrategy
from pipetune.parallel.local import SingleProcessStrategy
from pipetune.parallel.mp import ModelParallelStrategy
from workloads.base import cpu_count

__all__ = [
    "DEVICE_CHOICES", "STRATEGY_NAMES", "DevicePlan", "EpochRecord", "ParallelConfig",
    "ParallelStrategy", "RunSpec", "get_strategy", "resolve_device", "train",
]

_STRATEGIES: dict[str, type[ParallelStrategy]] = {
    "none": SingleProcessStrategy,
    "ddp": DDPStrategy,
    "mp": ModelParallelStrategy,
    "gpipe": GPipeStrategy,
}


def get_strategy(name: str) -> ParallelStrategy:
    """The strategy called ``name``.  Raises UsageError naming the known ones."""
    try:
        return _STRATEGIES[name]()
    except KeyError:
        raise UsageError(
            f"unknown parallel strategy {name!r} (known: {', '.join(STRATEGY_NAMES)})"
        ) from None


def train(
    workload: str,
    hparams: Mapping[str, Any] | None = None,
    *,
    parallel: ParallelConfig | None = None,
    epochs: int = 1,
    seed: int = 0,
    data_dir: Path | str | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    measure_memory: bool = False,
    record_step_losses: bool = False,
    threads_per_worker: int | None = None,
) -> list[EpochRecord]:
    """Train ``workload`` for ``epochs`` epochs with a parallel strategy; one record per epoch.

    Everything is validated before a process starts: the workload name, its
    hyperparameters, the strategy against the workload, workers against the
    cores, the device (``parallel.device``) against the GPUs there are.
    ``threads_per_worker`` defaults to the cores shared out evenly.

    Raises:
        UsageError / ConfigError: bad names or values, ``device="cuda"`` without
            one CUDA device per process (exit 2 in the CLI).
        NotSupportedError: the strategy does not apply to the workload, or
            ``device="cuda"`` for a workload that is not a torch model.
        WorkloadError: training failed in a worker.
    """
    from pipetune.errors import ConfigError, NotSupportedError
    from workloads import get_workload
    from workloads.base import TorchWorkload

    parallel = parallel or ParallelConfig()
    if epochs < 1:
        raise ConfigError(f"epochs={epochs}: must be >= 1")
    cls = get_workload(workload)
    resolved = cls.resolve_hparams(hparams)
    strategy = get_strategy(parallel.strategy)
    strategy.check(cls, resolved, parallel)
    if issubclass(cls, TorchWorkload):
        placement = resolve_device(parallel.device, parallel.workers)
    elif parallel.device == "cuda":
        raise NotSupportedError(
            f"device 'cuda' does not apply to workload {workload!r} (kind {cls.kind}: "
            "not a torch model, it runs on the CPU); use --device cpu or auto"
        )
    else:
        placement = DevicePlan("cpu")
    threads = threads_per_worker or max(1, cpu_count() // parallel.workers)
    spec = RunSpec(
        workload=workload, hparams=resolved, seed=seed,
        data_dir=str(data_dir) if data_dir is not None else None, epochs=epochs,
        config=parallel, threads_per_worker=threads, measure_memory=measure_memory,
        record_step_losses=record_step_losses, placement=placement,
    )
    return strategy.run(spec, on_epoch)
