"""Where a trial's processes compute: the one place that picks backend and device per rank.

Every strategy asks a :class:`DevicePlan` for its process group backend and
its rank's ``torch.device`` instead of deciding for itself, so the CPU tests
run exactly the code a GPU run runs, with ``kind="cpu"``:

============  =========  ===================  =======================================
``kind``      backend    rank ``r`` computes  chosen when
============  =========  ===================  =======================================
``"cpu"``     gloo       ``cpu``              ``--device cpu``, or ``auto`` without
                                              one CUDA device per process
``"cuda"``    nccl       ``cuda:r``           ``--device cuda``, or ``auto`` with one
                                              CUDA device per process
============  =========  ===================  =======================================

One CUDA device per process (never two ranks on one GPU) is what NCCL
expects and what makes ``torch.cuda.max_memory_allocated(device)`` a
per-partition figure.

Only the decision is tested on this project's hosts (they have no GPU): the
cuda branch of :func:`resolve_device` with ``torch.cuda`` faked, the cpu branch
for real.  The NCCL/GPU training path itself has not run here; see
``benchmarks/parallel.py --device cuda`` to check it on a GPU machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipetune.errors import UsageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: What ``--device`` accepts.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: Process-group backend for each device kind.
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


@dataclass(frozen=True)
class DevicePlan:
    """The resolved placement of a trial: device kind, and from it backend and rank devices.

    Picklable (it travels to spawned workers inside the ``RunSpec``).
    """

    kind: str = "cpu"

    def __post_init__(self) -> None:
        if self.kind not in BACKENDS:
            raise UsageError(
                f"device kind {self.kind!r} is not one of {', '.join(sorted(BACKENDS))}"
            )

    @property
    def backend(self) -> str:
        """``torch.distributed`` backend: gloo on CPU, NCCL on CUDA."""
        return BACKENDS[self.kind]

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def device(self, rank: int) -> torch.device:
        """The device rank ``rank`` computes on: ``cpu`` or ``cuda:{rank}``."""
        import torch

        return torch.device(f"cuda:{rank}") if self.is_cuda else torch.device("cpu")


def cuda_device_count() -> int:
    """CUDA devices this process can use (0 when torch has no CUDA or none is visible).

    Honours ``CUDA_VISIBLE_DEVICES`` (torch does).  The only place this
    package asks torch about CUDA for the placement decision.
    """
    import torch

    if not torch.cuda.is_available():
        return 0
    return int(torch.cuda.device_count())


def resolve_device(requested: str, processes: int) -> DevicePlan:
    """Decide where ``processes`` ranks compute for ``--device requested``.

    ``auto`` takes CUDA when there is one device per process and the CPU
    otherwise (logged, since a GPU host with too few devices silently
    training on CPU would be a surprise); ``cuda`` insists.

    Raises:
        UsageError: an unknown choice, or ``cuda`` on a host with fewer CUDA
            devices than processes (the message says how many it has).
    """
    if requested not in DEVICE_CHOICES:
        raise UsageError(
            f"unknown device {requested!r} (known: {', '.join(DEVICE_CHOICES)})"
        )
    if requested == "cpu":
        return DevicePlan("cpu")
    have = cuda_device_count()
    if have >= processes:
        return DevicePlan("cuda")
    if requested == "cuda":
        raise UsageError(
            f"device 'cuda' needs {processes} CUDA device{'s' if processes != 1 else ''} "
            f"(one per process) but this host has {have}"
        )
    if have:
        log.info("device auto: %d CUDA device(s) for %d processes; training on cpu",
                 have, processes)
    return DevicePlan("cpu")
