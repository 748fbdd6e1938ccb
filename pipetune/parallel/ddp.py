"""``ddp``: ``DistributedDataParallel`` over ``workers`` processes.

Every rank builds the same model (same seed) and walks the same global
batches; rank ``r`` trains on the ``r``-th equal shard of each batch.  DDP
averages the gradients, so each step equals the single-process step on the
whole batch, and the reported loss is the mean of the ranks' shard losses.
On CUDA each rank's replica lives on ``cuda:{rank}`` and DDP is given that
device (``device_ids``); on the CPU it gets none, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipetune.errors import ConfigError
from pipetune.parallel._runtime import (
    build_workload,
    epoch_loop,
    place,
    resume,
    spawn_workers,
    whole_state,
)
from pipetune.parallel.base import EpochRecord, ParallelConfig, ParallelStrategy, RunSpec
from workloads.base import Workload


class DDPStrategy(ParallelStrategy):
    name = "ddp"

    def check(self, workload_cls: type[Workload], hparams: dict[str, Any],
              config: ParallelConfig, *, share_cores: bool = False) -> None:
        super().check(workload_cls, hparams, config, share_cores=share_cores)
        batch = int(hparams.get("batch_size", 1))
        if batch % config.workers:
            raise ConfigError(
                f"batch_size={batch} is not divisible by workers={config.workers} "
                "(ddp cuts every batch into equal shards)"
            )

    def run(self, spec: RunSpec,
            on_epoch: Callable[[EpochRecord], None] | None = None) -> list[EpochRecord]:
        return spawn_workers(f"{__name__}:worker", spec, on_epoch)


def worker(rank: int, world: int, spec: RunSpec, report: Callable[[EpochRecord], None]) -> None:
    import torch
    from torch.nn.parallel import DistributedDataParallel

    wl = build_workload(spec)
    resume(spec, wl)
    device = spec.placement.device(rank)
    place(wl, wl.model, device)
    model = DistributedDataParallel(
        wl.model, device_ids=[device.index] if device.type == "cuda" else None)
    shard = wl.batch_size // world

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xs, ys = x[rank * shard:(rank + 1) * shard], y[rank * shard:(rank + 1) * shard]
        model.train()
        wl.optimizer.zero_grad(set_to_none=True)
        loss = wl.loss_fn(model(xs), ys)
        loss.backward()  # DDP all-reduces (averages) gradients here
        wl.optimizer.step()
        return loss

    epoch_loop(spec, wl, step, module=wl.model, optimizer=wl.optimizer, loss_holders=world,
               report=report, state=whole_state(wl, rank))
