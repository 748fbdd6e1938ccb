"""Bundled workloads and the registry the CLI, the tuner and Tune load them from.

``get_workload(name)`` accepts a registered name (``lenet5-mnist``) or a
dotted path to a user's own :class:`Workload` subclass
(``mypkg.jobs:MyJob`` or ``mypkg.jobs.MyJob``)::

    cls = get_workload("lenet5-mnist")
    wl = cls({"batch_size": 32}, seed=0)
    for epoch in (1, 2):
        wl.train_epoch(epoch)
        print(wl.evaluate()["accuracy"])
"""

from __future__ import annotations

import importlib

from pipetune.errors import UsageError
from workloads.base import TorchWorkload, Workload, default_data_dir
from workloads.hpc import BFS, Jacobi, KMeans
from workloads.text import CNNNews20, LSTMNews20
from workloads.vision import DeepCNNMNIST, LeNet5Fashion, LeNet5MNIST

__all__ = [
    "REGISTRY", "TorchWorkload", "Workload", "default_data_dir", "get_workload",
    "list_workloads", "register",
]

REGISTRY: dict[str, type[Workload]] = {}


def register(cls: type[Workload]) -> type[Workload]:
    """Add a workload class under its ``name`` (usable as a decorator)."""
    if not cls.name:
        raise UsageError(f"{cls.__qualname__} has no name")
    REGISTRY[cls.name] = cls
    return cls


for _cls in (LeNet5MNIST, LeNet5Fashion, DeepCNNMNIST, CNNNews20, LSTMNews20, Jacobi, BFS,
             KMeans):
    register(_cls)


def list_workloads() -> list[str]:
    """Registered workload names, sorted."""
    return sorted(REGISTRY)


def get_workload(name_or_dotted_path: str) -> type[Workload]:
    """The workload class for a registered name or a dotted path.

    Raises:
        UsageError: unknown name (the message lists the known ones), or a
            dotted path that cannot be imported or is not a Workload subclass.
    """
    key = name_or_dotted_path.strip()
    if key in REGISTRY:
        return REGISTRY[key]
    if ":" in key or "." in key:
        module_name, _, attr = key.rpartition(":") if ":" in key else key.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as e:
            raise UsageError(f"cannot load workload {key!r}: {e}") from e
        if isinstance(obj, type) and issubclass(obj, Workload):
            return obj
        raise UsageError(f"{key!r} is not a Workload subclass")
    raise UsageError(
        f"unknown workload {key!r} (known: {', '.join(list_workloads())}; or a dotted path "
        "module:Class)"
    )
