"""Memory safety of probe candidates (DESIGN §9).

A memory limit below the working set gets the trial OOM-killed, so no
candidate may limit memory below the observed peak × (1 + margin).  The peak
is an input (the controller's ``usage().memory_peak_mb`` during profiling),
so this module has no I/O and the rule is testable on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipetune.types import SystemConfig

DEFAULT_MEMORY_MARGIN = 0.25


def memory_floor_mb(peak_mb: float | None, margin: float = DEFAULT_MEMORY_MARGIN) -> float:
    """Smallest memory limit that is safe for a trial that peaked at ``peak_mb``."""
    if peak_mb is None or peak_mb <= 0:
        return 0.0
    return float(peak_mb) * (1.0 + max(margin, 0.0))


def is_memory_safe(config: SystemConfig, peak_mb: float | None,
                   margin: float = DEFAULT_MEMORY_MARGIN) -> bool:
    return config.memory_mb is None or config.memory_mb >= memory_floor_mb(peak_mb, margin)


def safe_candidates(
    configs: Sequence[SystemConfig], peak_mb: float | None,
    margin: float = DEFAULT_MEMORY_MARGIN,
) -> tuple[list[SystemConfig], list[SystemConfig]]:
    """(safe, unsafe) split of ``configs``; order is kept."""
    safe = [c for c in configs if is_memory_safe(c, peak_mb, margin)]
    return safe, [c for c in configs if c not in safe]
