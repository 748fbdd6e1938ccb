"""The ground-truth interface and the records it is made of.

- :class:`GroundTruthRecord` — one past trial: its epoch profile (event rates),
  the system config that won its probing, and that config's objective value.
- :class:`Match` — the answer to "have we seen this workload?": the nearest
  cluster, a similarity score in [0, 1] and the cluster's best config.
- :class:`GroundTruth` — a model: ``fit`` on records, ``match`` a profile
  (what the tuner needs).
  :class:`EmptyGroundTruth` is the model of a host with no history: it knows
  nothing, says so, and every workload probes.

Thread safety: a fitted model is read-only, so ``match`` may be called from
any number of tuner threads at once.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from pipetune.errors import ConfigError
from pipetune.types import EpochProfile, SystemConfig

RATE_PREFIX = "rate."


@dataclass(frozen=True)
class GroundTruthRecord:
    """One (profile, winner, objective value) record of a past trial.

    ``probed`` False: an *observation* — a trial that was matched (or could
    not probe) and ran ``config`` without comparing it to others.  It teaches
    the model how the workload's profile looks and scatters (features,
    weights, clusters) but casts no vote for a cluster's config: a matched
    trial voting for the config it was given would only echo the match.
    """

    rates: Mapping[str, float]
    config: SystemConfig
    objective: str = "runtime"
    value: float = math.nan
    workload: str = ""
    probed: bool = True


@dataclass(frozen=True)
class Match:
    """Nearest known cluster of a profile and how close it is.

    ``score`` is 1 at the cluster's centroid and falls with the distance
    measured in units of that cluster's own spread (see
    :func:`pipetune.groundtruth.model.similarity`).  ``config`` is the
    cluster's best known config, ``None`` when the model has none.
    ``reason`` says in words why a match is weak or impossible.
    """

    cluster: int | None
    score: float
    config: SystemConfig | None
    distance: float = math.inf
    radius: float = math.nan
    events_used: int = 0
    reason: str = ""
    workloads: Mapping[str, int] = field(default_factory=dict)

    def accepted(self, threshold: float) -> bool:
        """True when the score reaches ``threshold`` and a config is known."""
        check_threshold(threshold)
        return self.config is not None and self.score >= threshold


@dataclass(frozen=True)
class Hint:
    """What the ground truth knows of a workload by its name, before any
    profile: the cluster holding most of its past records and that
    cluster's best config.  A trial starts there and its profile confirms
    or corrects it (issue 15 item 4)."""

    workload: str
    cluster: int
    config: SystemConfig
    records: int  # this workload's records in ``cluster``
    total: int  # this workload's records in every cluster

    def describe(self) -> str:
        return (f"known workload {self.workload!r}: {self.records} of its {self.total} "
                f"record(s) in cluster {self.cluster}, best {self.config}")


class GroundTruth(abc.ABC):
    """A model of past workloads, fitted on their records and asked about a
    new profile.  ``fit`` returns the model itself (scikit-learn's rule), so
    ``Model(...).fit(records).match(profile)`` reads left to right; a fitted
    model is read-only.  ``match`` never raises for a profile it cannot
    use: it returns a score-0 :class:`Match` with the reason."""

    @abc.abstractmethod
    def fit(self, records: Sequence[GroundTruthRecord]) -> GroundTruth:
        """Learn from past trials' ``records`` and return this model.

        Raises:
            GroundTruthError: the records cannot be fitted (none, mixed
                objectives, the clustering failed).
            ConfigError: the model's parameters do not fit these records.
        """

    @abc.abstractmethod
    def match(self, profile: EpochProfile | Mapping[str, float]) -> Match:
        """The nearest cluster of ``profile`` (an epoch profile or its rates)."""

    def hint(self, workload: str) -> Hint | None:
        """The cluster holding most (more than half) of ``workload``'s past
        records and its best config; None when the name is unknown, its
        records are split, or that cluster has no known config.  Never raises."""
        return None

    @property
    def n_clusters(self) -> int:
        return 0

    def describe(self) -> str:
        return f"{type(self).__name__} with {self.n_clusters} clusters"


class EmptyGroundTruth(GroundTruth):
    """No history yet (or no usable model file): every workload probes."""

    def __init__(self, reason: str = "no ground-truth model yet") -> None:
        self.reason = reason

    def fit(self, records: Sequence[GroundTruthRecord]) -> EmptyGroundTruth:
        """Learns nothing: this model stands for "no model" (fit a
        :class:`~pipetune.groundtruth.model.ClusterGroundTruth` to learn)."""
        return self

    def match(self, profile: EpochProfile | Mapping[str, float]) -> Match:
        return Match(cluster=None, score=0.0, config=None, reason=self.reason)

    def describe(self) -> str:
        return f"empty ground truth ({self.reason})"


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` if it is a number in [0, 1], else raise ConfigError."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold={threshold!r}: must be a number in [0, 1]") from None
    if not 0.0 <= t <= 1.0 or math.isnan(t):
        raise ConfigError(f"threshold={threshold!r}: must be between 0 and 1")
    return t


def rates_of(profile: EpochProfile | Mapping[str, float]) -> dict[str, float]:
    rates = profile.rates if isinstance(profile, EpochProfile) else profile
    out: dict[str, float] = {}
    for k, v in rates.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[str(k)] = f
    return out


def records_from_frame(df: pd.DataFrame, objective: str | None = None) -> list[GroundTruthRecord]:
    """Ground-truth records from :meth:`Store.groundtruth_records`'s DataFrame
    (columns ``rate.<event>``, ``value``; tags ``workload``, ``config``,
    ``objective``).  Rows with an unreadable config are skipped."""
    if df is None or df.empty:
        return []
    rate_cols = [c for c in df.columns if c.startswith(RATE_PREFIX)]
    out: list[GroundTruthRecord] = []
    for row in df.to_dict("records"):
        obj = str(row.get("objective") or "runtime")
        if objective is not None and obj != objective:
            continue
        try:
            config = SystemConfig.parse(str(row.get("config", "")))
        except ConfigError:
            continue
        rates = {}
        for c in rate_cols:
            v = row.get(c)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                rates[c[len(RATE_PREFIX):]] = float(v)
        value = row.get("value")
        workload = row.get("workload")
        probed = row.get("probed")  # absent before observations were kept: probed
        out.append(
            GroundTruthRecord(
                rates=rates,
                config=config,
                objective=obj,
                value=float(value) if value is not None else math.nan,
                workload="" if workload is None or workload != workload else str(workload),
                probed=probed is None or probed != probed or bool(probed),
            )
        )
    return out
