"""pipetune: tune a deep-learning trial's system parameters (cores, memory,
GPUs) while it trains, beside its hyperparameters.

In a Ray Tune script: ``pipetune.wrap(train, system=SystemSpace(...))`` and,
inside ``train``, ``pipetune.report(metrics)`` instead of ``tune.report``.
See README.md for the quickstart and ../shared/DESIGN.md for the map.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pipetune.errors import ConfigError, PipetuneError
from pipetune.tune import current_session, report, window, wrap
from pipetune.types import SystemConfig, SystemSpace

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
