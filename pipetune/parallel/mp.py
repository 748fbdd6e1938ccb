"""``mp``: model parallel — the model's layer groups on ``workers`` processes.

Rank ``r`` holds partition ``r`` (see ``TorchWorkload.partitions``).  One
batch at a time: activations travel forward rank to rank, the last rank
computes the loss, gradients travel back; then every rank steps its own
optimizer.  There is no overlap between ranks (that is what ``gpipe`` adds),
but each process holds only its partition's parameters, gradients and
optimizer state — on its own device (``cuda:{rank}``) when the trial runs on
CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipetune.errors import ConfigError
from pipetune.parallel._runtime import (
    build_workload,
    epoch_loop,
    gather_partitions_to_rank0,
    param_offset,
    partition_state,
    place,
    recv_tensor,
    resume,
    resume_partition,
    send_tensor,
    spawn_workers,
)
from pipetune.parallel.base import EpochRecord, ParallelConfig, ParallelStrategy, RunSpec
from workloads.base import Workload


class ModelParallelStrategy(ParallelStrategy):
    name = "mp"

    def check(self, workload_cls: type[Workload], hparams: dict[str, Any],
              config: ParallelConfig, *, share_cores: bool = False) -> None:
        super().check(workload_cls, hparams, config, share_cores=share_cores)
        if config.workers < 2:
            raise ConfigError(
                f"workers={config.workers}: {self.name} needs at least 2 (one partition each)"
            )

    def run(self, spec: RunSpec,
            on_epoch: Callable[[EpochRecord], None] | None = None) -> list[EpochRecord]:
        return spawn_workers(f"{__name__}:worker", spec, on_epoch)


def worker(rank: int, world: int, spec: RunSpec, report: Callable[[EpochRecord], None]) -> None:
    import torch
    import torch.distributed as dist

    wl = build_workload(spec)
    state = resume(spec, wl)
    device = spec.placement.device(rank)
    parts = wl.partitions(world)
    part = parts[rank]
    place(wl, part, device)
    optimizer = wl.build_optimizer(part.parameters())
    resume_partition(state, optimizer, param_offset(parts, rank), len(list(part.parameters())))
    last = rank == world - 1

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        part.train()
        optimizer.zero_grad(set_to_none=True)
        inp = x if rank == 0 else recv_tensor(rank - 1, device).requires_grad_()
        out = part(inp)
        loss = None
        if last:
            loss = wl.loss_fn(out, y)
            loss.backward()
        else:
            send_tensor(out.detach(), rank + 1)
            grad = torch.empty_like(out)
            dist.recv(grad, rank + 1)
            out.backward(grad)
        if rank > 0:
            dist.send(inp.grad.contiguous(), rank - 1)
        optimizer.step()
        return loss

    epoch_loop(spec, wl, step, module=part, optimizer=optimizer, loss_holders=1,
               report=report, before_eval=gather_partitions_to_rank0(wl, part, device),
               state=partition_state(wl, optimizer))
