"""pipetune: tune a deep-learning trial's system parameters (cores, memory,
GPUs) while it trains, beside its hyperparameters.

In a Ray Tune script: ``pipetune.wrap(train, system=SystemSpace(...))`` and,
inside ``train``, ``pipetune.report(metrics)`` instead of ``tune.report``.
See README.md for the quickstart and docs/architecture.md for the map.

The Tune layer (:func:`wrap`, :func:`report`, :func:`window`,
:func:`current_session`) is imported on first use (PEP 562), not here: the
core packages (profiler, groundtruth, probing, control, energy, store) are
imported through this root, and ``import pipetune.groundtruth`` must not
pull in ``pipetune.tune``, the trial policy and their imports.  Ray pickles
a trainable by reference to ``pipetune.tune``, which the trial process
imports by name, so the lazy names unpickle the same way.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from pipetune.errors import ConfigError, PipetuneError
from pipetune.types import SystemConfig, SystemSpace

if TYPE_CHECKING:  # the names the lazy hook below provides, for type checkers
    from pipetune.tune import current_session, report, window, wrap

#: Names of the Tune layer this root provides, and the module that defines them.
_LAZY = {
    "current_session": "pipetune.tune",
    "report": "pipetune.tune",
    "window": "pipetune.tune",
    "wrap": "pipetune.tune",
}

__all__ = [
    "ConfigError",
    "PipetuneError",
    "SystemConfig",
    "SystemSpace",
    "__version__",
    "current_session",
    "report",
    "window",
    "wrap",
]


def __getattr__(name: str) -> Any:
    """Import the Tune layer when one of its names is first asked for, and
    keep the name here so later lookups skip this hook."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
