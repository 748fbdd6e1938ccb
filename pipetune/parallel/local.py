"""``none``: one process, no parallelism — the reference the other strategies must match.

A torch workload trains on ``spec.placement``'s device for rank 0 (``cpu`` or
``cuda:0``); the others always run on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pipetune.errors import ConfigError
from pipetune.parallel._runtime import (
    HereChannel,
    build_workload,
    epoch_loop,
    place,
    resume,
    start_on,
    whole_state,
)
from pipetune.parallel.base import EpochRecord, ParallelConfig, ParallelStrategy, RunSpec
from workloads.base import TorchWorkload, Workload


class SingleProcessStrategy(ParallelStrategy):
    """Trains in the calling process.  Applies to every workload, DNN or not."""

    name = "none"

    def check(self, workload_cls: type[Workload], hparams: dict[str, Any],
              config: ParallelConfig, *, share_cores: bool = False) -> None:
        super().check(workload_cls, hparams, config, share_cores=share_cores)
        if config.workers != 1:
            raise ConfigError(
                f"workers={config.workers}: parallel strategy 'none' runs one process; "
                "use --parallel ddp, mp or gpipe for more"
            )

    def run(self, spec: RunSpec,
            on_epoch: Callable[[EpochRecord], None] | None = None) -> list[EpochRecord]:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(spec.threads_per_worker)
        records: list[EpochRecord] = []

        def report(record: EpochRecord) -> None:
            records.append(record)
            if on_epoch is not None:
                on_epoch(record)

        try:
            wl = build_workload(spec)
            if isinstance(wl, TorchWorkload):
                place(wl, wl.model, start_on(spec.placement, 0))

                epoch_loop(spec, wl, whole_batch_step(wl), module=wl.model, optimizer=wl.optimizer,
                           loss_holders=1, report=report)
            else:
                for epoch in range(1, spec.epochs + 1):
                    t0 = time.perf_counter()
                    result = wl.train_epoch(epoch)
                    record: EpochRecord = {"epoch": epoch, **result,
                                           "seconds": time.perf_counter() - t0}
                    record.update(wl.evaluate())
                    record.update(strategy="none", workers=1, chunks=spec.config.chunks,
                                  device="cpu", data=wl.data_source)
                    report(record)
        finally:
            torch.set_num_threads(previous)
        return records


def whole_batch_step(wl: TorchWorkload) -> Callable[[Any, Any], Any]:
    """One optimiser step on a whole batch: what ``none`` does in the calling
    process and as a group of one, so the two cannot drift apart."""

    def step(x: Any, y: Any) -> Any:
        wl.model.train()
        wl.optimizer.zero_grad(set_to_none=True)
        loss = wl.loss_fn(wl.model(x), y)
        loss.backward()
        wl.optimizer.step()
        return loss

    return step


def worker(rank: int, world: int, spec: RunSpec, report: Callable[[EpochRecord], None]) -> None:
    """``none`` as a worker group of one child process (a Tune trial's group, so a
    restart to or from another strategy is the same stop/start as any other)."""
    wl = build_workload(spec)
    resume(spec, wl)
    place(wl, wl.model, spec.placement.device(rank))

    epoch_loop(spec, wl, whole_batch_step(wl), module=wl.model, optimizer=wl.optimizer,
               loss_holders=1, report=report, state=whole_state(wl, rank))


def train_here(spec: RunSpec, answer: Callable[[EpochRecord], tuple[str, int | None]],
               *, on_ready: Callable[[], None] | None = None,
               wl: TorchWorkload | None = None) -> tuple[list[EpochRecord], TorchWorkload]:
    """``none`` as a controlled group of one, run in the calling (trial) process.

    The same epoch loop, checkpoints and boundary protocol as :func:`worker`,
    without a child process: no forkserver to start (a torch import, ~2 s
    here) and no rank to fork and build the workload in, so a trial that
    trains with ``none`` costs what a plain trial costs, and a restart back
    into ``none`` costs a checkpoint load.  ``answer(record)`` is the trial
    process's word at each boundary (``("go", threads)`` or ``("stop", None)``).

    ``wl``: the workload built here for an earlier stretch of this trial (a
    restart back into ``none``): its data and model are reused and its state
    replaced by ``spec.resume_path``'s.  Returns the records and the workload,
    to keep for the next stretch.
    """
    import torch

    records: list[EpochRecord] = []
    channel = HereChannel(on_ready)

    def report(record: EpochRecord) -> None:
        records.append(record)
        channel.answer(answer(record))

    previous = torch.get_num_threads()
    torch.set_num_threads(spec.threads_per_worker)
    try:
        if wl is None:
            wl = build_workload(spec)
        resume(spec, wl)
        place(wl, wl.model, start_on(spec.placement, 0))
        epoch_loop(spec, wl, whole_batch_step(wl), module=wl.model, optimizer=wl.optimizer,
                   loss_holders=1, report=report, state=whole_state(wl, 0), channel=channel)
    finally:
        torch.set_num_threads(previous)
    return records, wl
