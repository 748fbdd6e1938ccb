"""The clustering ground-truth model: an estimator that fits and matches.

- :class:`ClusterGroundTruth` — built with its :class:`FitParams`,
  ``.fit(records)`` learns in four steps: features and their weights
  (:mod:`.features`), the run-to-run noise, the choice of k and the groups
  (any scikit-learn clusterer by name, :mod:`.clusterers`; ``k="auto"``,
  see below), and per cluster a calibrated radius and its best known
  config.  ``.match(profile)`` is nearest-centroid matching with a
  similarity score calibrated per cluster (:func:`.distance.similarity`).
- :func:`fit_groundtruth` — the same as one call.

Why not raw k-means with a fixed k: on a host without a PMU, profiles of
different workloads sit close in a few features and far in others, and the
contention-driven figures (context switches, wake-ups, CPU utilisation) vary
as much between two runs of one workload as between workloads.  So:

- features per CPU-second, log-scaled, in units of each feature's
  run-to-run (within-workload) noise where the records name their workload
  (:meth:`FeatureScaler.fit`), floored so no feature counts finer than ~28 %,
  and weighted by how well each separates the named workloads (ANOVA F):
  the load-driven rates then count for nothing instead of drowning the few
  figures that tell workloads apart;
- without names, distances leave out each comparison's worst ~20 % of
  features (:func:`robust_sq_distance`): one flaky counter cannot decide a
  match (with learned weights the flaky counters already weigh ~0, and
  trimming would drop the heavily weighted ones);
- ``k="auto"``: with named, repeated workloads the smallest k whose clusters
  are no wider than the least repeatable workload's own runs; otherwise the
  best silhouette (one cluster when there is no real structure); then
  clusters that overlap (centroids closer than the sum of their radii)
  merged: the score could not tell them apart anyway;
- the match judged in units of the matched cluster's own spread, corrected
  for its size and shrunk toward the pooled spread (:func:`similarity`),
  never tighter than runs of one workload scatter.
- a profile taken at a core count the history never saw (``proc.cpus``: a
  packed trial on one CPU, a history profiled alone on two) is compared on
  the features that do not move with the cores, against radii fitted on
  those alone (``Cluster.radius_other_cores``): a quiet history then
  recognises 22/24 packed runs instead of 9/24.

Measured on this VM's recorded profiles of the bundled workloads
(``benchmarks/groundtruth_ari.py``): without the weights, ``k="auto"`` found
one cluster and every unseen workload matched a neighbour; with them, 7
type-pure clusters (LeNet-5 on MNIST and on its offline stand-in together),
every held-out run's nearest cluster its own workload.

Whatever clusterer found the groups, the model keeps only centroids, radii
and configs, so it is saved as JSON and matched the same way.  Measured on
this VM: ``benchmarks/groundtruth_ari.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipetune.errors import ConfigError, GroundTruthError
from pipetune.groundtruth.base import GroundTruth, GroundTruthRecord, Hint, Match, rates_of
from pipetune.groundtruth.clusterers import (
    CLUSTERER_ALIASES,
    cluster_records,
    known_clusterers,
    make_clusterer,
    resolve_clusterer,
    takes_k,
)
from pipetune.groundtruth.distance import (
    SCORE_AT_TWO_RADII,
    own_spread,
    robust_sq_distance,
    run_noise2,
    similarity,
    trimmed_count,
)
from pipetune.groundtruth.features import CPUS_EVENT, FeatureScaler
from pipetune.types import EpochProfile, SystemConfig

# Re-exported: callers and tests know these names from this module.
__all__ = [
    "CLUSTERER_ALIASES", "SCORE_AT_TWO_RADII", "SILHOUETTE_SAMPLE", "Cluster",
    "ClusterGroundTruth", "FitParams", "cluster_labels", "fit_groundtruth", "known_clusterers",
    "make_clusterer", "own_spread", "robust_sq_distance", "similarity", "takes_k",
    "trimmed_count",
]

log = logging.getLogger(__name__)

#: Prior weight (in records) of the pooled spread when a cluster's own is estimated.
PRIOR_RECORDS = 2.0
#: Below this silhouette, the history has no real cluster structure: k = 1.
MIN_SILHOUETTE = 0.25
#: ``k=auto`` with named workloads: a cluster may be this many times as wide
#: (RMS) as its least repeatable member's runs before it is split further.
TIGHT = 1.0


#: Records the silhouette is computed on at most: it is O(n^2) in time, so a
#: long history is judged on a fixed-seed sample (benchmarks/costs.py: a fit of
#: 10^4 records took 11 s with the full silhouette on this 2-core VM).
SILHOUETTE_SAMPLE = 2000


def _silhouette(X: np.ndarray, labels: np.ndarray) -> float | None:
    from sklearn.metrics import silhouette_score

    keep = labels >= 0
    n_labels = len(set(labels[keep].tolist()))
    if n_labels < 2 or n_labels >= keep.sum():
        return None
    n = int(keep.sum())
    if n > SILHOUETTE_SAMPLE:
        return float(silhouette_score(X[keep], labels[keep], sample_size=SILHOUETTE_SAMPLE,
                                      random_state=0))
    return float(silhouette_score(X[keep], labels[keep]))


@dataclass(frozen=True)
class Cluster:
    """One group of past workloads: where it is, how spread, what won there."""

    centroid: tuple[float, ...]
    radius: float
    size: int
    config: SystemConfig | None
    value: float = math.nan  # mean objective value of the members that won with ``config``
    votes: Mapping[str, int] = field(default_factory=dict)
    workloads: Mapping[str, int] = field(default_factory=dict)
    #: The radius on the features that do not move with the core count
    #: (:attr:`FeatureScaler.core_sensitive` left out), calibrated the same
    #: way: what a profile taken at a core count the history never saw is
    #: judged by.  NaN: not fitted (older files; no ``proc.cpus`` in the history).
    radius_other_cores: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "centroid": list(self.centroid),
            "radius": self.radius,
            "size": self.size,
            "config": None if self.config is None else str(self.config),
            "value": None if math.isnan(self.value) else self.value,
            "votes": dict(self.votes),
            "workloads": dict(self.workloads),
            "radius_other_cores": (None if math.isnan(self.radius_other_cores)
                                   else self.radius_other_cores),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cluster:
        cfg = d.get("config")
        value = d.get("value")
        return cls(
            centroid=tuple(float(x) for x in d["centroid"]),
            radius=float(d["radius"]),
            size=int(d["size"]),
            config=None if cfg is None else SystemConfig.parse(str(cfg)),
            value=math.nan if value is None else float(value),
            votes={str(k): int(v) for k, v in dict(d.get("votes", {})).items()},
            workloads={str(k): int(v) for k, v in dict(d.get("workloads", {})).items()},
            radius_other_cores=(math.nan if d.get("radius_other_cores") is None
                                else float(d["radius_other_cores"])),
        )


@dataclass(frozen=True)
class FitParams:
    """How :meth:`ClusterGroundTruth.fit` fits: the hyperparameters, kept
    apart from what a fit learns (scikit-learn's rule), so that fitting
    again on a longer history starts from the same choices.

    Attributes:
        k: number of clusters, or ``"auto"`` (:func:`_choose_k`).
        clusterer: ``"kmeans"`` or any scikit-learn clusterer name.
        objective: which records to use; None: the one all records share.
        seed: the clusterer's random state.
        min_std: floor of a feature's standard deviation (log units).
        noise_log: run-to-run noise of a rate (log units, 0.25 ≈ 28 %, what
            contention on a shared node does to context switches); floors
            each cluster's radius so a cluster of one record can still
            match.  Used only when the history cannot show the noise itself:
            with two or more named workloads run more than once, their
            measured scatter is the floor and sets ``k="auto"``.
        max_k: the largest k ``"auto"`` tries.
        use_workloads: scale and weight features by the records' workload
            names (:meth:`FeatureScaler.fit`); the clustering never sees them.
    """

    k: int | str = "auto"
    clusterer: str = "kmeans"
    objective: str | None = None
    seed: int = 0
    min_std: float = 0.25
    noise_log: float = 0.25
    max_k: int = 10
    use_workloads: bool = True

    def checked(self) -> FitParams:
        """These parameters with ``k`` normalised (``"4"`` -> 4, ``"AUTO"`` ->
        ``"auto"``).  Raises ConfigError for a bad ``k`` or an unknown
        clusterer, before any record is looked at."""
        k = self.k
        if isinstance(k, str):
            if k.strip().lower() != "auto":
                try:
                    k = int(k)
                except ValueError:
                    raise ConfigError(f"k={k!r}: must be a positive integer or 'auto'") from None
            else:
                k = "auto"
        if not isinstance(k, str) and (isinstance(k, bool) or int(k) < 1):
            raise ConfigError(f"k={k!r}: must be a positive integer or 'auto'")
        resolve_clusterer(self.clusterer)
        return dataclasses.replace(self, k=k)


class ClusterGroundTruth(GroundTruth):
    """The clustering ground truth, an estimator in scikit-learn's manner:
    built with its hyperparameters (:class:`FitParams`), then :meth:`fit`
    on records returns it fitted; :meth:`match` answers from what it
    learned.  A model read from a file (:meth:`from_dict`) is fitted too.

    Fitted attributes keep the names model files, reports and tests use
    (``scaler``, ``clusters``, ``objective``, ``silhouette``, ``n_records``,
    ``trim``), not scikit-learn's trailing underscore.  A fitted model is
    read-only: ``match`` may run in any number of threads.
    """

    def __init__(self, *, min_shared: float = 0.5, **params: Any) -> None:
        """``params``: the fields of :class:`FitParams`; ``min_shared``: the
        share of the model's features a profile must have to be matched."""
        self.params = FitParams(**params)
        self.min_shared = min_shared
        self.clusterer = self.params.clusterer
        # What fit() learns (or from_dict() reads); empty until then.
        self.scaler: FeatureScaler | None = None
        self.clusters: tuple[Cluster, ...] = ()
        self.objective = self.params.objective or "runtime"
        self.silhouette: float | None = None
        self.n_records = 0
        self.trim = True
        self._centroids = np.empty((0, 0))

    # -- fitting ----------------------------------------------------------------------

    def fit(self, records: Sequence[GroundTruthRecord]) -> ClusterGroundTruth:
        """Learn the clusters of ``records``, in the steps the module docstring
        gives the reasons for, and return this model.

        Raises:
            GroundTruthError: no records of the objective, several objectives
                and none chosen, the clusterer failed.
            ConfigError: unknown clusterer; ``k`` not a positive integer,
                larger than the records, or given to a clusterer that finds k.
        """
        p = self.params.checked()
        recs, objective = _records_of(records, p.objective)
        if not isinstance(p.k, str) and p.k > len(recs):
            raise ConfigError(f"k={p.k}: larger than the {len(recs)} records")
        names = [r.workload for r in recs]
        # 1. Features and their weights: per CPU-second, log-scaled, in units of
        #    run-to-run noise, weighted by how well they separate the workloads.
        scaler = FeatureScaler.fit([r.rates for r in recs], min_std=p.min_std,
                                   labels=names if p.use_workloads else None)
        X = scaler.transform_many([r.rates for r in recs])
        trim = not scaler.weight  # learned weights replace trimming (robust_sq_distance)
        # 2. How far runs of one workload scatter, where the history shows it:
        #    it sets k (auto) and the smallest radius a cluster may have.
        noise = run_noise2(X, names, trim) if p.use_workloads else None
        floor = math.sqrt(noise[0]) if noise is not None else float(
            np.sqrt(((p.noise_log * scaler.weights / np.asarray(scaler.std)) ** 2).sum()))
        # 3. The choice of k, and the groups.
        groups, sil = _group(X, p, None if noise is None else noise[1], floor, trim)
        # 4. Per group, its radius and its best known config.
        own = [own_spread(X, idx, trim) for idx in groups]
        pooled = _pooled_spread(own)
        clusters = [
            _cluster(centroid, _radius(s2, n, pooled, floor), [recs[i] for i in idx])
            for (centroid, s2, n), idx in zip(own, groups, strict=True)
        ]
        # 5. The same radii on the features that do not move with the cores,
        #    for profiles taken at a core count the history never saw.
        if scaler.core_sensitive:
            inv = ~np.isin(np.asarray(scaler.events), np.asarray(scaler.core_sensitive))
            if inv.any():
                Xi = X[:, inv]
                noise_i = run_noise2(Xi, names, trim) if p.use_workloads else None
                w2 = scaler.weights ** 2
                floor_i = (math.sqrt(noise_i[0]) if noise_i is not None
                           else floor * math.sqrt(w2[inv].sum() / max(w2.sum(), 1e-12)))
                own_i = [own_spread(Xi, idx, trim) for idx in groups]
                pooled_i = _pooled_spread(own_i)
                clusters = [
                    dataclasses.replace(c, radius_other_cores=_radius(s2, n, pooled_i, floor_i))
                    for c, (_, s2, n) in zip(clusters, own_i, strict=True)
                ]
        self._set_fitted(scaler, clusters, objective=objective, silhouette=sil,
                         n_records=len(recs), trim=trim)
        log.info("fitted %s", self.describe().splitlines()[0])
        return self

    def _set_fitted(self, scaler: FeatureScaler, clusters: Sequence[Cluster], *,
                    objective: str, silhouette: float | None, n_records: int,
                    trim: bool) -> None:
        if not clusters:
            raise GroundTruthError("a ground-truth model needs at least one cluster")
        dim = len(scaler.events)
        for c in clusters:
            if len(c.centroid) != dim:
                raise GroundTruthError(
                    f"cluster centroid has {len(c.centroid)} values for {dim} features"
                )
        self.scaler = scaler
        self.clusters = tuple(clusters)
        self.objective = objective
        self.silhouette = silhouette
        self.n_records = n_records
        self.trim = trim
        self._centroids = np.array([c.centroid for c in clusters], dtype=float)

    # -- matching ---------------------------------------------------------------------

    @property
    def n_clusters(self) -> int:
        return len(self.clusters)

    def _fitted(self) -> FeatureScaler:
        if self.scaler is None:
            raise GroundTruthError("this ground-truth model is not fitted: call fit(records)")
        return self.scaler

    def match(self, profile: EpochProfile | Mapping[str, float]) -> Match:
        """The nearest cluster of ``profile``.  Raises GroundTruthError if not fitted."""
        rates = rates_of(profile)
        scaler = self._fitted()
        z, mask = scaler.transform(rates)
        dim = len(mask)
        used = int(mask.sum())
        # A profile taken at a core count the history never saw is compared on
        # the features that do not move with it, against radii fitted on
        # those alone (the transform already left the others out).
        full = np.ones(dim, dtype=bool)
        other = (bool(scaler.core_sensitive) and scaler.other_cores(rates)
                 and all(math.isfinite(c.radius_other_cores) for c in self.clusters))
        if other:
            full = ~np.isin(np.asarray(scaler.events), np.asarray(scaler.core_sensitive))
        comparable = int(full.sum())
        if used == 0 or used < self.min_shared * comparable:
            return Match(
                cluster=None, score=0.0, config=None, events_used=used,
                reason=f"profile shares {used} of the model's {comparable} features "
                f"(needs {math.ceil(self.min_shared * comparable)}); were its events different?",
            )
        diff = (self._centroids - z)[:, mask]
        # Compare on the shared features, scaled up to the dimension the radii
        # were fitted on (all features, or the core-invariant ones) so they apply.
        dist = np.sqrt(robust_sq_distance(diff, self.trim) * (comparable / used))
        i = int(np.argmin(dist))
        c = self.clusters[i]
        radius = c.radius_other_cores if other else c.radius
        score = similarity(float(dist[i]), radius)
        reason = (
            f"nearest cluster {i} at {dist[i]:.2f} (radius {radius:.2f}), score {score:.2f}"
            + (", on the features that do not move with the cores (profiled at "
               f"{rates.get(CPUS_EVENT, 0):g} CPUs, the history at "
               f"{'/'.join(f'{x:g}' for x in scaler.fit_cpus)})" if other else "")
        )
        if c.config is None:
            reason += "; cluster has no known config"
        return Match(
            cluster=i, score=score, config=c.config, distance=float(dist[i]),
            radius=radius, events_used=used, reason=reason, workloads=dict(c.workloads),
        )

    def hint(self, workload: str) -> Hint | None:
        """The cluster holding most of ``workload``'s records (base class)."""
        if not workload or not self.clusters:
            return None
        counts = [int(c.workloads.get(workload, 0)) for c in self.clusters]
        total = sum(counts)
        i = max(range(len(counts)), key=counts.__getitem__)
        cfg = self.clusters[i].config
        if total == 0 or 2 * counts[i] <= total or cfg is None:
            return None
        return Hint(workload, i, cfg, counts[i], total)

    def describe(self) -> str:
        if self.scaler is None:
            return f"ground truth ({self.clusterer}), not fitted"
        sil = "n/a" if self.silhouette is None else f"{self.silhouette:.3f}"
        lines = [
            f"ground truth: {self.n_clusters} clusters from {self.n_records} records "
            f"({self.clusterer}, objective {self.objective}, silhouette {sil}, "
            f"{len(self.scaler.events)} features"
            f"{', per CPU-second of ' + self.scaler.cpu_event if self.scaler.cpu_event else ''})",
        ]
        for i, c in enumerate(self.clusters):
            wl = ", ".join(f"{k}×{v}" for k, v in sorted(c.workloads.items())) or "-"
            val = "" if math.isnan(c.value) else f" ({self.objective} {c.value:.4g})"
            lines.append(
                f"  cluster {i}: {c.size} records, radius {c.radius:.2f}, "
                f"best {c.config if c.config else '-'}{val}; workloads {wl}"
            )
        return "\n".join(lines)

    # -- persistence (see pipetune.groundtruth.persist for files) ----------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "clusterer": self.clusterer,
            "silhouette": self.silhouette,
            "n_records": self.n_records,
            "min_shared": self.min_shared,
            "trim": self.trim,
            "features": self._fitted().to_dict(),
            "clusters": [c.to_dict() for c in self.clusters],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClusterGroundTruth:
        """A fitted model from :meth:`to_dict`'s form (a model file's body)."""
        sil = d.get("silhouette")
        objective = str(d.get("objective", "runtime"))
        model = cls(objective=objective, clusterer=str(d.get("clusterer", "kmeans")),
                    min_shared=float(d.get("min_shared", 0.5)))
        model._set_fitted(
            FeatureScaler.from_dict(d["features"]),
            [Cluster.from_dict(c) for c in d["clusters"]],
            objective=objective,
            silhouette=None if sil is None else float(sil),
            n_records=int(d.get("n_records", 0)),
            trim=bool(d.get("trim", True)),  # older files: trimmed
        )
        return model



def _choose_k(
    X: np.ndarray, clusterer: str, seed: int, max_k: int,
    noise2: np.ndarray | None = None, trim: bool = True,
) -> tuple[np.ndarray, float | None]:
    """Labels for k chosen from the data; the silhouette of the choice.

    With the run-to-run noise known (``noise2``: per record, the expected
    squared distance of a new run of its workload from that workload's
    centroid), k is the smallest whose every cluster is as tight as its own
    members allow: RMS radius at most :data:`TIGHT` times the noise radius
    of its least repeatable workload.  So the history is split until no
    cluster holds workloads further apart than their own runs scatter.
    Silhouette cannot do this: it prefers the coarsest split whose halves are
    far apart (single-threaded jobs against multi-threaded ones) over one
    that separates the workloads.

    Without it, the k in 2..max_k with the best silhouette; one cluster when
    even that shows no real structure.
    """
    n = len(X)
    if n <= 2:
        # Too few to judge structure: each record is its own cluster; the
        # radius floor decides what still counts as the same workload.
        return np.arange(n), None
    if noise2 is not None:
        labels = np.zeros(n, dtype=int)
        for k in range(1, min(max_k, n) + 1):
            labels = labels if k == 1 else cluster_records(clusterer, k, X, seed)
            excess = max(
                own_spread(X, idx, trim)[1] / (TIGHT**2 * max(float(noise2[idx].max()), 1e-12))
                for idx in (np.where(labels == lab)[0] for lab in set(labels.tolist()))
            )
            log.debug("k=%d widest cluster at %.3g of its limit", k, math.sqrt(excess))
            if excess <= 1.0:
                break
        return labels, _silhouette(X, labels)
    best: tuple[float, np.ndarray] | None = None
    for k in range(2, min(max_k, n - 1) + 1):
        labels = cluster_records(clusterer, k, X, seed)
        s = _silhouette(X, labels)
        log.debug("k=%d silhouette=%s", k, s)
        if s is not None and (best is None or s > best[0] + 1e-9):
            best = (s, labels)
    if best is None or best[0] < MIN_SILHOUETTE:
        return np.zeros(n, dtype=int), None if best is None else best[0]
    return best[1], best[0]


def _merge_overlapping(
    X: np.ndarray, groups: list[np.ndarray], floor: float, trim: bool = True
) -> list[np.ndarray]:
    """Merge clusters whose centroids are closer than the sum of their radii.

    Silhouette happily splits one noisy workload in two; such halves overlap
    (their centroids sit well inside each other's spread), while different
    workloads do not.  Two clusters the similarity score could not tell apart
    are one cluster.
    """
    groups = list(groups)
    while len(groups) > 1:
        stats = [own_spread(X, idx, trim) for idx in groups]
        radii = [max(math.sqrt(s2), floor) for _, s2, _ in stats]
        best: tuple[float, int, int] | None = None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                d = float(np.sqrt(robust_sq_distance(stats[i][0] - stats[j][0], trim)[0]))
                overlap = d / (radii[i] + radii[j])
                if overlap < 1.0 and (best is None or overlap < best[0]):
                    best = (overlap, i, j)
        if best is None:
            break
        _, i, j = best
        groups[i] = np.concatenate([groups[i], groups[j]])
        del groups[j]
    return groups


def _records_of(
    records: Sequence[GroundTruthRecord], objective: str | None
) -> tuple[list[GroundTruthRecord], str]:
    """The records a fit learns from: those of ``objective`` (None: the one
    every record shares) that have rates; and that objective."""
    if objective is None:
        objectives = {r.objective for r in records}
        if len(objectives) > 1:
            raise GroundTruthError(
                f"records have several objectives ({', '.join(sorted(objectives))}): choose one"
            )
        objective = objectives.pop() if objectives else "runtime"
    recs = [r for r in records if r.objective == objective and r.rates]
    if not recs:
        raise GroundTruthError(
            f"no ground-truth records for objective {objective!r}: run some trials "
            "(each one that probes writes a record) before retraining"
        )
    return recs, objective


def _group(
    X: np.ndarray, p: FitParams, noise2: np.ndarray | None, floor: float, trim: bool
) -> tuple[list[np.ndarray], float | None]:
    """The records' groups (row indices of ``X``) and their silhouette.

    ``k="auto"``: k chosen from the data (:func:`_choose_k`; a clusterer that
    finds k itself is left to it), then groups that overlap merged
    (:func:`_merge_overlapping`).  A number: that many clusters.
    """
    if isinstance(p.k, str):
        if takes_k(p.clusterer):
            labels, sil = _choose_k(X, p.clusterer, p.seed, p.max_k, noise2, trim)
        else:
            labels = cluster_records(p.clusterer, None, X, p.seed)
            sil = _silhouette(X, labels)
    else:
        labels = (np.zeros(len(X), dtype=int) if p.k == 1
                  else cluster_records(p.clusterer, p.k, X, p.seed))
        sil = _silhouette(X, labels)
    # Noise points (label -1 of DBSCAN-like clusterers) become clusters of
    # their own: they are real workloads we have seen once.
    labels = labels.copy()
    next_label = int(labels.max()) + 1 if len(labels) else 0
    for i in np.where(labels < 0)[0]:
        labels[i] = next_label
        next_label += 1
    groups = [np.where(labels == lab)[0] for lab in sorted(set(labels.tolist()))]
    if isinstance(p.k, str):
        groups = _merge_overlapping(X, groups, floor, trim)
        if sil is not None:
            merged = np.empty(len(X), dtype=int)
            for lab, idx in enumerate(groups):
                merged[idx] = lab
            sil = _silhouette(X, merged)
    return groups, sil


def _pooled_spread(own: Sequence[tuple[np.ndarray, float, int]]) -> float:
    """The expected squared distance of a new member, pooled over the groups
    of more than one record (0 when there are none)."""
    multi = [(s2, n) for _, s2, n in own if n > 1]
    return sum(s2 * n for s2, n in multi) / sum(n for _, n in multi) if multi else 0.0


def _radius(s2: float, n: int, pooled: float, floor: float) -> float:
    """A cluster's radius: its own spread shrunk toward the pooled one (a
    small cluster's own is a poor estimate), never below ``floor``."""
    r2 = (n * s2 + PRIOR_RECORDS * pooled) / (n + PRIOR_RECORDS) if n > 1 else pooled
    return max(math.sqrt(r2), floor)


def _cluster(centroid: np.ndarray, radius: float,
             members: Sequence[GroundTruthRecord]) -> Cluster:
    """A cluster and its best known config: the config most of its probe
    winners chose, ties broken by their mean objective value (lower wins).

    Only probe winners vote; a cluster of observations alone has no known
    config (a trial matched to it probes, with no hint)."""
    voters = [r for r in members if r.probed]
    votes = Counter(str(r.config) for r in voters)
    values: dict[str, list[float]] = {}
    for r in voters:
        if math.isfinite(r.value):
            values.setdefault(str(r.config), []).append(r.value)

    def rank(cfg: str) -> tuple[int, float]:
        vals = values.get(cfg)
        return (votes[cfg], -(sum(vals) / len(vals)) if vals else -math.inf)

    best = max(votes, key=rank) if votes else None
    best_vals = values.get(best, []) if best else []
    return Cluster(
        centroid=tuple(float(x) for x in centroid),
        radius=radius,
        size=len(members),
        config=SystemConfig.parse(best) if best else None,
        value=sum(best_vals) / len(best_vals) if best_vals else math.nan,
        votes=dict(votes),
        workloads=dict(Counter(r.workload for r in members if r.workload)),
    )


def fit_groundtruth(
    records: Sequence[GroundTruthRecord],
    *,
    k: int | str = "auto",
    clusterer: str = "kmeans",
    objective: str | None = None,
    seed: int = 0,
    min_std: float = 0.25,
    noise_log: float = 0.25,
    max_k: int = 10,
    use_workloads: bool = True,
) -> ClusterGroundTruth:
    """A model fitted on past trials' records: ``ClusterGroundTruth(...).fit(records)``
    (the arguments are :class:`FitParams`'s; raises what :meth:`~ClusterGroundTruth.fit`
    raises)."""
    return ClusterGroundTruth(
        k=k, clusterer=clusterer, objective=objective, seed=seed, min_std=min_std,
        noise_log=noise_log, max_k=max_k, use_workloads=use_workloads,
    ).fit(records)


def cluster_labels(model: ClusterGroundTruth, records: Sequence[GroundTruthRecord]) -> list[int]:
    """Nearest cluster of each record (for reports and the ARI benchmark)."""
    return [
        -1 if (m := model.match(r.rates)).cluster is None else int(m.cluster) for r in records
    ]
