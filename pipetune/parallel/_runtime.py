"""Shared machinery of the strategies: worker processes, the epoch loop, memory accounting.

:func:`spawn_workers` starts ``workers`` processes with ``torch.multiprocessing``'s
spawn context, or forks them from a warm forkserver (a trial's worker groups:
:mod:`pipetune.parallel._forkserver`), joined in one process group on a free
port of 127.0.0.1 (gloo on CPU, NCCL on CUDA: the ``RunSpec``'s
:class:`~pipetune.parallel.device.DevicePlan` decides, and :func:`start_on` /
:func:`place` apply it in every process), and
streams their epoch records back through a queue.  A worker that fails sends
its error and the parent ends the others (only the processes it started, by
their handles) and raises it as one clear error.

:func:`epoch_loop` is the training loop every strategy runs, so that they
differ only in their ``step`` function: that is what makes their losses
comparable with the single-process reference.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import resource
import socket
import time
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pipetune import errors
from pipetune.errors import WorkloadError
from pipetune.parallel.base import EpochRecord, RunSpec
from pipetune.parallel.device import DevicePlan

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipetune.parallel._forkserver import WarmForkserver
    from workloads.base import TorchWorkload

log = logging.getLogger(__name__)

MB = 1024 * 1024
#: Seconds the parent waits for workers to exit once they are done or failed.
JOIN_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_workload(spec: RunSpec) -> TorchWorkload:
    from pathlib import Path

    from workloads import get_workload

    cls = get_workload(spec.workload)
    data_dir = Path(spec.data_dir) if spec.data_dir else None
    return cls(spec.hparams, seed=spec.seed, data_dir=data_dir)  # type: ignore[return-value]


# -- placement ------------------------------------------------------------------------------
# The CUDA branches below follow the DevicePlan; this project's hosts have no GPU, so
# they have not run here (the CPU tests run the same functions with device "cpu").


def start_on(placement: DevicePlan, rank: int) -> torch.device:
    """Make ``rank``'s device current in this process and start its peak-memory count.

    Call once per process, before the model moves and the process group starts
    (NCCL and ``all_gather_object`` use the current CUDA device).
    """
    import torch

    device = placement.device(rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    return device


def place(wl: TorchWorkload, module: nn.Module, device: torch.device) -> None:
    """Move ``module`` (the whole model, or this rank's partition of it) to ``device``.

    ``module.to`` keeps the parameter objects, so the optimizers built on them
    (their state is created lazily, on the parameters' device) stay valid.  When
    ``module`` is the whole model, evaluation follows it (``wl.device``).
    """
    module.to(device)
    if module is wl.model:
        wl.device = device


# -- memory accounting ---------------------------------------------------------------------


def tensors_mb(tensors: Iterable[torch.Tensor]) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / MB


class SavedActivations:
    """Counts the bytes autograd saves for backward while it is active.

    Storages are counted once each and parameters not at all (a linear layer
    saves its weight, which is already counted as a parameter).  Under GPipe
    all micro-batches' forwards run before any backward, so the count is the
    peak of saved activations; for the one-batch strategies it is too.
    """

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self._exclude = {p.untyped_storage().data_ptr() for p in params}
        self._seen: set[int] = set()
        self.bytes = 0
        self._ctx: Any = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._exclude and ptr not in self._seen:
            self._seen.add(ptr)
            self.bytes += storage.nbytes()
        return t

    def __enter__(self) -> SavedActivations:
        import torch

        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


class _NoMeter:
    def __enter__(self) -> _NoMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM).

    Not ``getrusage().ru_maxrss``: Linux carries that across fork+exec, so a
    spawned worker would report its parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def partition_memory(module: nn.Module, optimizer: torch.optim.Optimizer,
                     activations_bytes: int, device: torch.device) -> dict[str, float]:
    """Memory one partition holds at its peak: params + grads + optimizer state + activations.

    On CUDA also ``cuda_max_allocated_mb``: ``torch.cuda.max_memory_allocated``
    of the rank's own device since :func:`start_on` reset it (everything the
    caching allocator handed out, workspace included; untested here).
    """
    import torch

    params = list(module.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    opt_state = [v for s in optimizer.state.values() for v in s.values()
                 if isinstance(v, torch.Tensor)]
    record = {
        "params_mb": tensors_mb(params),
        "grads_mb": tensors_mb(grads),
        "optimizer_mb": tensors_mb(opt_state),
        "activations_mb": activations_bytes / MB,
    }
    record["total_mb"] = sum(record.values())
    record["rss_peak_mb"] = peak_rss_mb()
    record["layers"] = ",".join(name for name, _ in module.named_children())  # type: ignore[assignment]
    record["device"] = str(device)  # type: ignore[assignment]
    if device.type == "cuda":
        record["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / MB
    return record


# -- the epoch loop --------------------------------------------------------------------------

StepFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor | None"]


def epoch_loop(
    spec: RunSpec,
    wl: TorchWorkload,
    step: StepFn,
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_holders: int,
    report: Callable[[EpochRecord], None],
    before_eval: Callable[[], None] | None = None,
    state: Callable[[], dict[str, Any] | None] | None = None,
    channel: RankChannel | None = None,
) -> None:
    """Train ``spec.epochs`` epochs with ``step`` and report each from rank 0.

    ``step(x, y)`` runs one global batch and returns the loss on ranks that
    compute it (None elsewhere); ``loss_holders`` is how many ranks do, so the
    all-reduced sum divided by it is the loss of the whole batch.
    ``module``/``optimizer`` are this rank's partition, for memory accounting.
    Batches move to this rank's device (``spec.placement``) before ``step``.

    With ``spec.checkpoint_dir``, ``state()`` (called on every rank: it may
    gather) gives rank 0 the whole trial state, saved before the record goes
    out.  Every record carries ``ranks``: per rank its pid, CPU seconds of
    the epoch and peak RSS.  With ``spec.controlled`` every rank then waits
    at the boundary for the trial process's word (:class:`RankChannel`; this
    process's own, or ``channel`` when ``none`` trains in the trial process).
    """
    import torch
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = spec.placement.device(rank)
    channel = channel or _CHANNEL
    if channel is not None:
        channel.ready()
    first = spec.epoch_range.start
    for epoch in spec.epoch_range:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        losses: list[torch.Tensor] = []
        samples = 0
        meter_bytes = 0
        for i, (x, y) in enumerate(wl.train_batches(epoch)):
            x, y = x.to(device), y.to(device)  # no copy on the CPU
            measure = spec.measure_memory and epoch == first and i == 0
            meter: Any = SavedActivations(module.parameters()) if measure else _NoMeter()
            with meter, wl.rng_scope():
                loss = step(x, y)
            if measure:
                meter_bytes = meter.bytes
                memory = partition_memory(module, optimizer, meter_bytes, device)
            losses.append(loss.detach().reshape(()) if loss is not None
                          else torch.zeros((), device=device))
            samples += len(x)
        step_losses = torch.stack(losses) if losses else torch.zeros(0, device=device)
        if distributed:
            dist.all_reduce(step_losses, op=dist.ReduceOp.SUM)
        # .cpu() waits for the device, so the epoch's seconds include its queued work.
        step_losses = step_losses.cpu() / loss_holders
        seconds = time.perf_counter() - t0
        partitions = None
        if spec.measure_memory and epoch == first:
            if distributed:
                gathered: list[Any] = [None] * world
                dist.all_gather_object(gathered, memory)
                partitions = gathered
            else:
                partitions = [memory]
        if before_eval is not None:
            before_eval()
        checkpoint = None
        if spec.checkpoint_dir and state is not None:
            full = state()
            if rank == 0 and full is not None:
                full["epochs_trained"] = epoch
                full["epoch"] = epoch
                checkpoint = save_state(full, spec.checkpoint_dir, epoch)
        ranks = rank_facts(rank, cpu0)
        if distributed:
            gathered_ranks: list[Any] = [None] * world
            dist.all_gather_object(gathered_ranks, ranks)
            all_ranks = gathered_ranks
        else:
            all_ranks = [ranks]
        if rank == 0:
            record: EpochRecord = {
                "epoch": epoch,
                "loss": float(step_losses.mean()) if len(step_losses) else float("nan"),
                "steps": len(step_losses),
                "samples": samples,
                "seconds": seconds,
            }
            record.update(wl.evaluate())
            record.update(strategy=spec.config.strategy, workers=world,
                          chunks=spec.config.chunks, device=spec.placement.kind,
                          data=wl.data_source)
            if partitions is not None:
                record["partitions"] = partitions
            if spec.record_step_losses:
                record["step_losses"] = [float(v) for v in step_losses]
            record["ranks"] = all_ranks
            if checkpoint is not None:
                record["checkpoint"] = checkpoint
            report(record)
        wl.epochs_trained = epoch
        if channel is not None and not channel.boundary():
            break  # the trial process stops this group here (a restart)


def gather_partitions_to_rank0(wl: TorchWorkload, part: nn.Module,
                               device: torch.device) -> Callable[[], None]:
    """A ``before_eval`` that merges every rank's partition weights into rank 0's full model.

    Weights travel as CPU tensors (a pickled CUDA tensor would name the sender's
    device); rank 0 then evaluates the whole model on its own ``device``.
    """
    import torch.distributed as dist

    def merge() -> None:
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states,
                               {k: v.detach().cpu() for k, v in part.state_dict().items()})
        if dist.get_rank() == 0:
            merged: dict[str, Any] = {}
            for s in states:
                merged.update(s)
            wl.model.load_state_dict(merged)
            place(wl, wl.model, device)

    return merge


# -- epoch boundaries under a trial's control ------------------------------------------------

#: This worker process's channel to the trial process (set by :func:`_worker_main`
#: when the spec is controlled; one per process, so a module global is enough).
_CHANNEL: RankChannel | None = None


class RankChannel:
    """One rank's side of the boundary protocol with the trial process.

    ``ready()`` once the rank has built its model (and loaded its checkpoint)
    and is about to train; ``boundary()`` at every epoch end blocks until the
    trial process answers: ``("go", threads)`` sets this rank's torch threads
    for the next epoch and returns True; ``("stop", None)`` returns False.
    """

    def __init__(self, rank: int, results: Any, control: Any) -> None:
        self.rank = rank
        self._results = results
        self._control = control

    def ready(self) -> None:
        self._results.put(("ready", self.rank, None, ""))

    def boundary(self) -> bool:
        import torch

        kind, value = self._control.get()
        if kind == "stop":
            return False
        if value and int(value) != torch.get_num_threads():
            torch.set_num_threads(int(value))
        return True


class HereChannel(RankChannel):
    """The boundary protocol when ``none`` trains in the trial process itself
    (:func:`pipetune.parallel.local.train_here`): the trial process's answer
    is known as soon as rank 0's record is reported, so it waits in a local
    queue for the loop's boundary instead of crossing a process."""

    def __init__(self, on_ready: Callable[[], None] | None = None) -> None:
        super().__init__(0, None, queue_mod.SimpleQueue())
        self._on_ready = on_ready

    def ready(self) -> None:
        if self._on_ready is not None:
            self._on_ready()

    def answer(self, word: tuple[str, int | None]) -> None:
        self._control.put(word)


def rank_facts(rank: int, cpu0: float) -> dict[str, Any]:
    """This rank's figures for one epoch: pid, torch threads, CPU seconds (all its
    threads), peak RSS."""
    import torch

    return {"rank": rank, "pid": os.getpid(), "threads": torch.get_num_threads(),
            "cpu_s": time.process_time() - cpu0, "rss_peak_mb": peak_rss_mb()}


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside moved to the CPU (for pickling across devices)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_state(state: dict[str, Any], directory: str, epoch: int) -> str:
    """Write ``state`` as ``directory/epoch-{epoch}/state.pt`` atomically; return the folder.

    ``torch.save`` of plain tensors and numbers; read back with
    ``torch.load(weights_only=True)`` (no arbitrary pickle).
    """
    import torch

    folder = os.path.join(directory, f"epoch-{epoch}")
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, "state.pt.tmp")
    torch.save(to_cpu(state), tmp)
    os.replace(tmp, os.path.join(folder, "state.pt"))
    return folder


def load_state(folder: str) -> dict[str, Any]:
    """What :func:`save_state` wrote in ``folder``."""
    import torch

    return torch.load(os.path.join(folder, "state.pt"), weights_only=True)


def whole_state(wl: TorchWorkload, rank: int) -> Callable[[], dict[str, Any] | None]:
    """``state`` for strategies whose rank 0 holds the whole model and optimizer (none, ddp)."""
    return lambda: wl.state_dict() if rank == 0 else None


def param_offset(parts: list[nn.Module], rank: int) -> int:
    """Index of partition ``rank``'s first parameter in the whole model's parameter order."""
    return sum(len(list(p.parameters())) for p in parts[:rank])


def partition_state(wl: TorchWorkload, optimizer: torch.optim.Optimizer
                    ) -> Callable[[], dict[str, Any] | None]:
    """``state`` for mp/gpipe: weights are already merged on rank 0 (``before_eval``);
    the partitions' optimizer states are gathered and merged into one for the whole model."""
    import torch.distributed as dist

    def gather() -> dict[str, Any] | None:
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, to_cpu(optimizer.state_dict()))
        if dist.get_rank() != 0:
            return None
        return {"model": wl.model.state_dict(), "optimizer": merge_optimizer_states(states),
                "rng": wl._rng_state}

    return gather


def merge_optimizer_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One optimizer state dict from the partitions' (in order, one param group each).

    Partitions are contiguous runs of the model's children, so partition
    ``r``'s parameter ``i`` is the whole model's parameter ``offset_r + i``.
    """
    merged: dict[int, Any] = {}
    offset = 0
    for s in states:
        for k, v in s["state"].items():
            merged[offset + int(k)] = v
        offset += sum(len(g["params"]) for g in s["param_groups"])
    group = {k: v for k, v in states[0]["param_groups"][0].items() if k != "params"}
    return {"state": merged, "param_groups": [{**group, "params": list(range(offset))}]}


def slice_optimizer_state(full: dict[str, Any], offset: int, count: int) -> dict[str, Any]:
    """The part of a whole-model optimizer state dict that belongs to one partition."""
    group = {k: v for k, v in full["param_groups"][0].items() if k != "params"}
    state = {int(k) - offset: v for k, v in full["state"].items()
             if offset <= int(k) < offset + count}
    return {"state": state, "param_groups": [{**group, "params": list(range(count))}]}


def resume(spec: RunSpec, wl: TorchWorkload) -> dict[str, Any] | None:
    """Load ``spec.resume_path`` into ``wl`` (weights, optimizer, RNG); the state, or None."""
    if not spec.resume_path:
        return None
    state = load_state(spec.resume_path)
    wl.load_state_dict(state)
    return state


def resume_partition(state: dict[str, Any] | None, optimizer: torch.optim.Optimizer,
                     offset: int, count: int) -> None:
    if state is not None and state.get("optimizer"):
        optimizer.load_state_dict(slice_optimizer_state(state["optimizer"], offset, count))


# -- point-to-point tensors with their shape ---------------------------------------------------

_DTYPES = ["float32", "float64", "int64", "float16", "bfloat16"]


def send_tensor(t: torch.Tensor, dst: int) -> None:
    """Send a tensor whose shape the receiver does not know: a header, then the data.

    The header lives on ``t``'s device (NCCL sends only CUDA tensors).
    """
    import torch
    import torch.distributed as dist

    header = torch.zeros(10, dtype=torch.int64)
    header[0] = _DTYPES.index(str(t.dtype).removeprefix("torch."))
    header[1] = t.dim()
    header[2:2 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
    dist.send(header.to(t.device), dst)
    dist.send(t.contiguous(), dst)


def recv_tensor(src: int, device: torch.device) -> torch.Tensor:
    """Receive what :func:`send_tensor` sent, into a tensor on ``device``."""
    import torch
    import torch.distributed as dist

    header = torch.zeros(10, dtype=torch.int64, device=device)
    dist.recv(header, src)
    values = header.tolist()
    ndim = values[1]
    t = torch.empty(values[2:2 + ndim], dtype=getattr(torch, _DTYPES[values[0]]),
                    device=device)
    dist.recv(t, src)
    return t


# -- processes -----------------------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to end this worker if its parent dies (no orphans blocked in gloo).

    ``parent_pid`` is the process that forked this rank: the trial process
    (spawn), or the trial process's forkserver, which ends when the trial
    process does (see :mod:`pipetune.parallel._forkserver`).
    """
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _take_trial_context(start: dict[str, Any] | None) -> None:
    """Make a forked rank's environment and CPU affinity the trial process's at
    the group's start, as a spawned rank's are (the forkserver's are those of
    the trial's start; ``CUDA_VISIBLE_DEVICES`` may differ).  Runs before
    anything reads them: CUDA starts lazily, and the rank sets its torch
    threads itself."""
    if not start:
        return
    env = start.get("env")
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    cpus = start.get("cpus")
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as e:  # a cpuset that no longer holds them: keep the inherited ones
            log.debug("rank affinity %s not taken: %s", cpus, e)


def _worker_main(rank: int, world: int, port: int, target: str, spec: RunSpec,
                 results: Any, parent_pid: int, control: Any = None,
                 start: dict[str, Any] | None = None) -> None:
    """Entry of one worker process (module-level so spawn can import it).

    ``start``: for a rank forked from the forkserver, the trial process's
    ``env`` and ``cpus`` at the group's start (:func:`_take_trial_context`).
    """
    import importlib

    from pipetune.parallel._forkserver import detach_from_forkserver

    global _CHANNEL
    _die_with_parent(parent_pid)
    detach_from_forkserver()
    _take_trial_context(start)

    import torch
    import torch.distributed as dist

    if control is not None:
        _CHANNEL = RankChannel(rank, results, control)
    torch.set_num_threads(spec.threads_per_worker)
    if rank != 0:  # one copy of "which data was used" is enough
        logging.getLogger("workloads").setLevel(logging.ERROR)
    module_name, _, fn_name = target.partition(":")
    fn = getattr(importlib.import_module(module_name), fn_name)
    try:
        start_on(spec.placement, rank)
        dist.init_process_group(spec.placement.backend, init_method=f"tcp://127.0.0.1:{port}",
                                rank=rank, world_size=world)
        try:
            fn(rank, world, spec, lambda record: results.put(("epoch", rank, record, "")))
        finally:
            dist.destroy_process_group()
        results.put(("done", rank, None, ""))
    except BaseException as e:  # noqa: BLE001 - everything is reported to the parent
        results.put(("error", rank, f"{type(e).__name__}: {e}", traceback.format_exc()))


def spawn_workers(target: str, spec: RunSpec,
                  on_epoch: Callable[[EpochRecord], Any] | None,
                  *, on_ready: Callable[[], None] | None = None,
                  forkserver: WarmForkserver | None = None) -> list[EpochRecord]:
    """Run ``target(rank, world, spec, report)`` in ``spec.config.workers`` processes.

    Returns the epoch records (reported by rank 0) in order.  With
    ``spec.controlled``, ``on_epoch``'s answer is sent to every rank waiting at
    the boundary: ``("go", threads)`` or ``("stop", None)`` (None: go on with
    the threads they have); ``on_ready`` is called once every rank is ready to
    train.

    ``forkserver``: fork the ranks from this warm forkserver (torch already
    imported: a group starts in a fraction of a second) instead of spawning
    fresh interpreters; each rank takes this process's environment and CPU
    affinity as a spawned one would.

    Raises:
        WorkloadError (or the PipetuneError a worker raised): a worker failed or died.
    """
    import torch.multiprocessing as tmp

    world = spec.config.workers
    start: dict[str, Any] | None = None
    if forkserver is not None:
        try:
            # The ranks' parent, started here: by the trial process.
            parent = forkserver.pid()
            ctx = forkserver.context
            start = {"env": dict(os.environ), "cpus": sorted(os.sched_getaffinity(0))}
        except OSError as e:
            log.warning("forkserver did not start (%s): spawning the %s ranks", e,
                        spec.config.strategy)
            forkserver = None
    if forkserver is None:
        ctx = tmp.get_context("spawn")
        parent = os.getpid()
    results = ctx.Queue()
    port = free_port()
    controls = [ctx.SimpleQueue() for _ in range(world)] if spec.controlled else [None] * world
    procs = [ctx.Process(target=_worker_main,
                         args=(r, world, port, target, spec, results, parent, controls[r],
                               start),
                         name=f"pipetune-{spec.config.strategy}-{r}", daemon=True)
             for r in range(world)]
    records: list[EpochRecord] = []
    done: set[int] = set()
    ready: set[int] = set()
    failure: tuple[int, str, str] | None = None
    try:
        for p in procs:
            p.start()
        log.debug("started %d %s workers (%s): %s", world, spec.config.strategy,
                  "forkserver" if forkserver is not None else "spawn", [p.pid for p in procs])
        while len(done) < world and failure is None:
            try:
                kind, rank, payload, tb = results.get(timeout=0.5)
            except queue_mod.Empty:
                for r, p in enumerate(procs):
                    if r not in done and p.exitcode not in (None, 0):
                        failure = (r, f"exited with code {p.exitcode}", "")
                continue
            if kind == "epoch":
                records.append(payload)
                answer = on_epoch(payload) if on_epoch is not None else None
                if spec.controlled:
                    word = answer if answer is not None else ("go", None)
                    for q in controls:
                        q.put(word)
            elif kind == "ready":
                ready.add(rank)
                if len(ready) == world and on_ready is not None:
                    on_ready()
            elif kind == "done":
                done.add(rank)
            else:
                failure = (rank, payload, tb)
    finally:
        # Not all done and no failure: the caller's on_epoch raised (a trial
        # stopped by its scheduler) while the ranks wait at a boundary.
        clean = failure is None and len(done) == world
        deadline = time.monotonic() + (JOIN_TIMEOUT_S if clean else 2.0)
        for p in procs:
            if p.pid is None:
                continue
            p.join(timeout=max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()  # only the processes started above, by their handles
                p.join(timeout=5)
            if p.is_alive():  # pragma: no cover - a worker stuck in a syscall
                os.kill(p.pid, 9)
                p.join(timeout=5)
        # Records already sent may still sit in the queue behind a failure report
        # from another rank: they are epochs that did end, so they are kept.
        while True:
            try:
                kind, _, payload, _ = results.get(timeout=0.05)
            except (queue_mod.Empty, OSError, EOFError, ValueError):
                break
            if kind == "epoch" and (not records or payload["epoch"] > records[-1]["epoch"]):
                records.append(payload)
                if on_epoch is not None:
                    on_epoch(payload)
        results.close()
    if failure is not None:
        rank, message, tb = failure
        log.debug("worker %d traceback:\n%s", rank, tb)
        cls_name, _, text = message.partition(": ")
        cls = getattr(errors, cls_name, None)
        if isinstance(cls, type) and issubclass(cls, errors.PipetuneError):
            raise cls(text)
        raise WorkloadError(f"{spec.config.strategy} worker {rank} failed: {message}")
    return records
