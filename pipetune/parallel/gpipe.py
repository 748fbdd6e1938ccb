"""``gpipe``: pipeline parallelism with ``torch.distributed.pipelining``.

Rank ``r`` wraps partition ``r`` in a ``PipelineStage``; ``ScheduleGPipe``
cuts each batch into ``chunks`` micro-batches, runs all forwards (fill) then
all backwards (drain), and scales gradients by ``1/chunks`` so a step equals
the single-process step on the whole batch.  The last stage computes the
loss per micro-batch; their mean is the batch loss.  Each stage runs on its
rank's device (``cuda:{rank}`` on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipetune.errors import ConfigError
from pipetune.parallel._runtime import (
    build_workload,
    epoch_loop,
    gather_partitions_to_rank0,
    param_offset,
    partition_state,
    place,
    resume,
    resume_partition,
    spawn_workers,
)
from pipetune.parallel.base import EpochRecord, ParallelConfig, RunSpec
from pipetune.parallel.mp import ModelParallelStrategy
from workloads.base import Workload

if TYPE_CHECKING:
    from torch import nn


class GPipeStrategy(ModelParallelStrategy):
    name = "gpipe"

    def check(self, workload_cls: type[Workload], hparams: dict[str, Any],
              config: ParallelConfig, *, share_cores: bool = False) -> None:
        super().check(workload_cls, hparams, config, share_cores=share_cores)
        batch = int(hparams.get("batch_size", 1))
        if batch % config.chunks:
            raise ConfigError(
                f"batch_size={batch} is not divisible by chunks={config.chunks} "
                "(GPipe micro-batches must be equal for the loss to match)"
            )

    def run(self, spec: RunSpec,
            on_epoch: Callable[[EpochRecord], None] | None = None) -> list[EpochRecord]:
        return spawn_workers(f"{__name__}:worker", spec, on_epoch)


def contiguous_boundaries(part: nn.Sequential) -> nn.Sequential:
    """``part`` with contiguous tensors at its edges, forward and backward.

    The pipeline runtime allocates receive buffers with the strides of what the
    neighbour stage produced, and gloo refuses non-contiguous buffers: the
    input gradient of a ``batch_first`` LSTM, for one, is a transposed view.
    The wrapper adds no parameters, so state-dict keys are unchanged.
    """
    import torch
    from torch import nn

    class _ContiguousGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
            return x.contiguous()

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
            return grad.contiguous()

    class Edges(nn.Module):
        def __init__(self, inner: nn.Sequential) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.is_floating_point() and x.requires_grad:
                x = _ContiguousGrad.apply(x)
            return _ContiguousGrad.apply(self.inner(x))

    return Edges(part)


def worker(rank: int, world: int, spec: RunSpec, report: Callable[[EpochRecord], None]) -> None:
    import torch
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    wl = build_workload(spec)
    state = resume(spec, wl)
    device = spec.placement.device(rank)
    parts = wl.partitions(world)
    part = parts[rank]
    place(wl, part, device)
    optimizer = wl.build_optimizer(part.parameters())
    resume_partition(state, optimizer, param_offset(parts, rank), len(list(part.parameters())))
    stage = PipelineStage(contiguous_boundaries(part), rank, world, device)
    schedule = ScheduleGPipe(stage, n_microbatches=spec.config.chunks, loss_fn=wl.loss_fn)
    last = rank == world - 1

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        part.train()
        optimizer.zero_grad(set_to_none=True)
        if rank == 0:
            schedule.step(x)
            loss = None
        elif last:
            losses: list[torch.Tensor] = []
            schedule.step(target=y, losses=losses)
            loss = torch.stack([v.detach() for v in losses]).mean()
        else:
            schedule.step()
            loss = None
        optimizer.step()
        return loss

    epoch_loop(spec, wl, step, module=part, optimizer=optimizer, loss_holders=1,
               report=report, before_eval=gather_partitions_to_rank0(wl, part, device),
               state=partition_state(wl, optimizer))
