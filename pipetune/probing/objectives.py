"""What probing minimises: runtime, energy, energy-delay product, resource-time,
memory per rank.

Every objective turns one probe :class:`Measurement` (a counted window under
one config) into a number where *lower is better*.  Values are per training
step, so windows of different lengths compare fairly (an epoch probe and a
sub-epoch window of 50 steps measure the same thing).

- ``runtime`` — seconds per step (default; the paper's objective).
- ``energy`` — joules per step.
- ``edp`` — energy-delay product per step (J·s).
- ``resource_time`` — seconds per step × the share of the space's largest
  config that the config holds (mean of its cores share and memory share), so
  the smallest config that is not slower wins; this is what lets a node pack
  more trials.
- ``memory`` — the peak RSS of the heaviest rank (MB) of a trial that trains
  with a parallel strategy: between strategies, the one whose ranks need the
  least memory each (mp/gpipe split the model, DDP copies it), which is what
  decides whether a model fits a rank at all.  Not per step: a peak is not
  spread over steps.  Known only for probes of parallel strategies; for
  others it is not supported (the tuner then uses runtime).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from pipetune.errors import ConfigError, NotSupportedError
from pipetune.types import SystemConfig, SystemSpace


@dataclass(frozen=True)
class Measurement:
    """One counted probe window: ``seconds`` and ``energy_j`` over ``steps``."""

    config: SystemConfig
    seconds: float
    steps: int
    energy_j: float | None = None
    energy_method: str | None = None
    #: The heaviest rank's peak RSS (MB) over the probe, when the trial
    #: trains with parallel ranks and the probes compare strategies.
    rss_peak_per_rank_mb: float | None = None

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)


class Objective(str, enum.Enum):
    RUNTIME = "runtime"
    ENERGY = "energy"
    EDP = "edp"
    RESOURCE_TIME = "resource_time"
    MEMORY = "memory"

    @classmethod
    def parse(cls, name: str | Objective) -> Objective:
        try:
            return cls(name)
        except ValueError:
            raise ConfigError(
                f"objective {name!r}: must be one of {', '.join(o.value for o in cls)}"
            ) from None

    @property
    def needs_energy(self) -> bool:
        return self in (Objective.ENERGY, Objective.EDP)

    def cost(self, m: Measurement, space: SystemSpace | None = None) -> float:
        """The objective of ``m`` (lower is better).

        Raises:
            NotSupportedError: an energy objective without an energy figure;
                the memory objective without a per-rank peak.
        """
        spp = m.seconds_per_step
        if self is Objective.RUNTIME:
            return spp
        if self is Objective.MEMORY:
            peak = m.rss_peak_per_rank_mb
            if peak is None or not math.isfinite(peak) or peak <= 0:
                raise NotSupportedError("objective memory compares the peak memory per rank "
                                        "of parallel strategies; none measured")
            return float(peak)
        if self is Objective.RESOURCE_TIME:
            return spp * resource_share(m.config, space)
        if m.energy_j is None or not math.isfinite(m.energy_j):
            raise NotSupportedError(f"objective {self.value} needs energy figures; none measured")
        jps = m.energy_j / max(m.steps, 1)
        return jps if self is Objective.ENERGY else jps * spp


def resource_share(config: SystemConfig, space: SystemSpace | None) -> float:
    """Share in (0, 1] of the space's largest config that ``config`` holds.

    No memory limit counts as the largest memory of the space (the trial may
    use all of it).  GPUs count as a third resource when the space has any.
    """
    if space is None:
        return float(config.cores)
    shares = [config.cores / max(space.cores)]
    limits = [m for m in space.memory_mb if m is not None]
    if limits:
        top = max(limits)
        shares.append(1.0 if config.memory_mb is None else min(config.memory_mb / top, 1.0))
    if max(space.gpus) > 0:
        shares.append(config.gpus / max(space.gpus))
    return sum(shares) / len(shares)
