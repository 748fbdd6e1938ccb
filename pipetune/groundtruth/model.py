"""The clustering ground-truth model: fit, match, similarity.

- :func:`fit_groundtruth` — records → :class:`ClusterGroundTruth`: features
  (:mod:`.features`), any scikit-learn clusterer by name (k-means by
  default), ``k`` from the data (``"auto"``, see below), and per
  cluster a calibrated radius and its best known config.
- :class:`ClusterGroundTruth` — nearest-centroid matching with a similarity
  score calibrated per cluster (:func:`similarity`).

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

import importlib
import inspect
import logging
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from pipetune.errors import ConfigError, GroundTruthError
from pipetune.groundtruth.base import GroundTruth, GroundTruthRecord, Match, rates_of
from pipetune.groundtruth.features import FeatureScaler
from pipetune.types import EpochProfile, SystemConfig

log = logging.getLogger(__name__)

#: Short names accepted for ``clusterer``; any class name of
#: ``sklearn.cluster`` (or ``GaussianMixture``) works too, case-insensitive.
CLUSTERER_ALIASES: dict[str, str] = {
    "kmeans": "sklearn.cluster.KMeans",
    "k-means": "sklearn.cluster.KMeans",
    "minibatchkmeans": "sklearn.cluster.MiniBatchKMeans",
    "agglomerative": "sklearn.cluster.AgglomerativeClustering",
    "ward": "sklearn.cluster.AgglomerativeClustering",
    "spectral": "sklearn.cluster.SpectralClustering",
    "birch": "sklearn.cluster.Birch",
    "gmm": "sklearn.mixture.GaussianMixture",
    "gaussianmixture": "sklearn.mixture.GaussianMixture",
    "dbscan": "sklearn.cluster.DBSCAN",
    "hdbscan": "sklearn.cluster.HDBSCAN",
    "meanshift": "sklearn.cluster.MeanShift",
    "affinitypropagation": "sklearn.cluster.AffinityPropagation",
}

#: Similarity is this value at two cluster radii (and 1 at the centroid).
SCORE_AT_TWO_RADII = 0.8
#: Prior weight (in records) of the pooled spread when a cluster's own is estimated.
PRIOR_RECORDS = 2.0
#: Below this silhouette, the history has no real cluster structure: k = 1.
MIN_SILHOUETTE = 0.25
#: ``k=auto`` with named workloads: a cluster may be this many times as wide
#: (RMS) as its least repeatable member's runs before it is split further.
TIGHT = 1.0


def trimmed_count(dim: int) -> int:
    """Features left out of a distance: the worst ~20 % (at least one from 5 on).

    20 %, not 10 %: a trial's first epoch may read its data and libraries
    from disk or from the page cache, and that moves a whole family of I/O
    figures at once (bytes read, page-cache adds, block requests, major
    faults: six of this host's 32) by orders of magnitude between two trials
    of one workload (measured in a real Tune job: 945 kB/s vs 0.7 kB/s read).
    """
    return dim // 5 if dim >= 10 else (1 if dim >= 5 else 0)


def robust_sq_distance(diff: np.ndarray, trim: bool = True) -> np.ndarray:
    """Squared distances of the rows of ``diff`` with each row's worst
    :func:`trimmed_count` features left out, scaled back to the full dimension.

    Why: one flaky counter (page faults of an allocator that just changed its
    mmap threshold, context switches on a busy node) can differ 10x between two
    runs of the same workload and would alone decide the distance.  Different
    workloads differ in many features, so leaving out the worst one or two does
    not make them similar.

    ``trim=False`` (plain squared distance) for learned feature weights: they
    already silence the flaky counters, and the features trimming would drop
    are then the heavily weighted ones that separate workloads.
    """
    diff = np.atleast_2d(diff)
    dim = diff.shape[1]
    t = trimmed_count(dim) if trim else 0
    sq = diff**2
    if t:
        sq = np.sort(sq, axis=1)[:, : dim - t]
    return sq.sum(axis=1) * (dim / max(dim - t, 1))


def similarity(distance: float, radius: float) -> float:
    """Score in [0, 1]: 1 at the centroid, ~0.95 at one radius, 0.8 at two,
    0.41 at four.  ``radius`` is the cluster's calibrated spread (the RMS
    distance a new member is expected at), so the same distance means more
    in a tight cluster than in a loose one."""
    if not math.isfinite(distance):
        return 0.0
    if radius <= 0 or not math.isfinite(radius):
        return 1.0 if distance == 0 else 0.0
    return float(SCORE_AT_TWO_RADII ** ((distance / (2.0 * radius)) ** 2))


def _labels_samples(cls: type) -> bool:
    """Whether ``cls`` is a clusterer that gives each *record* a label:
    ``fit_predict`` or ``predict``.  Biclusterers (rows and columns at once)
    and ``FeatureAgglomeration`` (groups features) have neither; a property
    that raises (``FeatureAgglomeration.fit_predict``) does not count."""
    return any(callable(getattr(cls, m, None)) for m in ("fit_predict", "predict"))


def known_clusterers() -> list[str]:
    """Every ``clusterer`` name that :func:`fit_groundtruth` can use: the
    aliases and the lower-case class names of ``sklearn.cluster`` and
    ``sklearn.mixture`` that label records (no functions such as
    ``estimate_bandwidth``, no biclusterers)."""
    import sklearn.cluster
    import sklearn.mixture

    names = set(CLUSTERER_ALIASES)
    for module in (sklearn.cluster, sklearn.mixture):
        for attr in module.__all__:
            obj = getattr(module, attr, None)
            if inspect.isclass(obj) and hasattr(obj, "fit") and _labels_samples(obj):
                names.add(attr.lower())
    return sorted(names)


def _resolve_clusterer(name: str) -> type:
    key = name.strip().lower()
    target = CLUSTERER_ALIASES.get(key)
    if target is not None:
        module, _, cls = target.rpartition(".")
        return getattr(importlib.import_module(module), cls)
    import sklearn.cluster
    import sklearn.mixture

    for module in (sklearn.cluster, sklearn.mixture):
        for attr in dir(module):
            obj = getattr(module, attr)
            if attr.lower() == key and inspect.isclass(obj) and hasattr(obj, "fit"):
                if not _labels_samples(obj):
                    raise ConfigError(
                        f"clusterer {name!r}: {attr} does not give each record a cluster "
                        f"(no fit_predict or predict); use one of: {', '.join(known_clusterers())}"
                    )
                return obj
    raise ConfigError(f"clusterer {name!r}: unknown (known: {', '.join(known_clusterers())})")


def make_clusterer(name: str, k: int | None, seed: int = 0) -> Any:
    """A scikit-learn estimator for ``name`` with ``k`` clusters where it takes one.

    Raises:
        ConfigError: unknown name, or ``k`` given to a clusterer that finds k itself.
    """
    cls = _resolve_clusterer(name)
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    count_param = next((p for p in ("n_clusters", "n_components") if p in params), None)
    if k is not None:
        if count_param is None:
            raise ConfigError(
                f"clusterer {name!r} finds the number of clusters itself: use --k auto"
            )
        kwargs[count_param] = int(k)
    if "random_state" in params:
        kwargs["random_state"] = seed
    if "n_init" in params and cls.__name__ in ("KMeans", "MiniBatchKMeans"):
        kwargs["n_init"] = 10  # restarts: one bad seed must not split a workload
    elif "n_init" in params and cls.__name__ == "GaussianMixture":
        kwargs["n_init"] = 3
    return cls(**kwargs)


def takes_k(name: str) -> bool:
    params = inspect.signature(_resolve_clusterer(name)).parameters
    return "n_clusters" in params or "n_components" in params


def _labels(name: str, k: int | None, X: np.ndarray, seed: int) -> np.ndarray:
    est = make_clusterer(name, k, seed)
    try:
        # Ground-truth histories are small: BLAS/OpenMP threads only cost
        # here (15x slower on a busy 2-core node), so fit single-threaded.
        with threadpool_limits(1), warnings.catch_warnings():
            # Scanning k asks some clusterers for more clusters than the data
            # has; they warn and return fewer, which the silhouette then judges.
            warnings.simplefilter("ignore", category=UserWarning)
            labels = est.fit_predict(X) if hasattr(est, "fit_predict") else est.fit(X).predict(X)
    except ValueError as e:
        raise GroundTruthError(f"clusterer {name!r} could not fit {len(X)} records: {e}") from e
    return np.asarray(labels, dtype=int)


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "centroid": list(self.centroid),
            "radius": self.radius,
            "size": self.size,
            "config": None if self.config is None else str(self.config),
            "value": None if math.isnan(self.value) else self.value,
            "votes": dict(self.votes),
            "workloads": dict(self.workloads),
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
        )


class ClusterGroundTruth(GroundTruth):
    """A fitted clustering model: scaler + clusters (see module docstring)."""

    def __init__(
        self,
        scaler: FeatureScaler,
        clusters: Sequence[Cluster],
        *,
        objective: str = "runtime",
        clusterer: str = "kmeans",
        silhouette: float | None = None,
        n_records: int = 0,
        min_shared: float = 0.5,
        trim: bool = True,
    ) -> None:
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
        self.clusterer = clusterer
        self.silhouette = silhouette
        self.n_records = n_records
        self.min_shared = min_shared
        self.trim = trim
        self._centroids = np.array([c.centroid for c in clusters], dtype=float)

    @property
    def n_clusters(self) -> int:
        return len(self.clusters)

    def match(self, profile: EpochProfile | Mapping[str, float]) -> Match:
        rates = rates_of(profile)
        z, mask = self.scaler.transform(rates)
        dim = len(mask)
        used = int(mask.sum())
        if used == 0 or used < self.min_shared * dim:
            return Match(
                cluster=None, score=0.0, config=None, events_used=used,
                reason=f"profile shares {used} of the model's {dim} features "
                f"(needs {math.ceil(self.min_shared * dim)}); were its events different?",
            )
        diff = (self._centroids - z)[:, mask]
        # Compare on the shared features, scaled up to the full dimension so
        # the radii (fitted on all features) still apply.
        dist = np.sqrt(robust_sq_distance(diff, self.trim) * (dim / used))
        i = int(np.argmin(dist))
        c = self.clusters[i]
        score = similarity(float(dist[i]), c.radius)
        reason = (
            f"nearest cluster {i} at {dist[i]:.2f} (radius {c.radius:.2f}), score {score:.2f}"
        )
        if c.config is None:
            reason += "; cluster has no known config"
        return Match(
            cluster=i, score=score, config=c.config, distance=float(dist[i]),
            radius=c.radius, events_used=used, reason=reason, workloads=dict(c.workloads),
        )

    def describe(self) -> str:
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
            "features": self.scaler.to_dict(),
            "clusters": [c.to_dict() for c in self.clusters],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClusterGroundTruth:
        sil = d.get("silhouette")
        return cls(
            FeatureScaler.from_dict(d["features"]),
            [Cluster.from_dict(c) for c in d["clusters"]],
            objective=str(d.get("objective", "runtime")),
            clusterer=str(d.get("clusterer", "kmeans")),
            silhouette=None if sil is None else float(sil),
            n_records=int(d.get("n_records", 0)),
            min_shared=float(d.get("min_shared", 0.5)),
            trim=bool(d.get("trim", True)),  # older files: trimmed
        )


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
            labels = labels if k == 1 else _labels(clusterer, k, X, seed)
            excess = max(
                _own_spread(X, idx, trim)[1] / (TIGHT**2 * max(float(noise2[idx].max()), 1e-12))
                for idx in (np.where(labels == lab)[0] for lab in set(labels.tolist()))
            )
            log.debug("k=%d widest cluster at %.3g of its limit", k, math.sqrt(excess))
            if excess <= 1.0:
                break
        return labels, _silhouette(X, labels)
    best: tuple[float, np.ndarray] | None = None
    for k in range(2, min(max_k, n - 1) + 1):
        labels = _labels(clusterer, k, X, seed)
        s = _silhouette(X, labels)
        log.debug("k=%d silhouette=%s", k, s)
        if s is not None and (best is None or s > best[0] + 1e-9):
            best = (s, labels)
    if best is None or best[0] < MIN_SILHOUETTE:
        return np.zeros(n, dtype=int), None if best is None else best[0]
    return best[1], best[0]


def _run_noise2(
    X: np.ndarray, workloads: Sequence[str], trim: bool = True
) -> tuple[float, np.ndarray] | None:
    """How far a new run lands from its own workload's centroid, from the
    named workloads with repeated runs: (pooled expected squared distance,
    per record its workload's own — the pooled one where the workload has a
    single run or no name).  None with fewer than two repeated workloads (no
    honest estimate)."""
    groups: dict[str, list[int]] = {}
    for i, w in enumerate(workloads):
        if w:
            groups.setdefault(w, []).append(i)
    own = {w: _own_spread(X, np.asarray(idx), trim) for w, idx in groups.items() if len(idx) > 1}
    if len(own) < 2:
        return None
    pooled = sum(s2 * n for _, s2, n in own.values()) / sum(n for _, _, n in own.values())
    per_record = np.array([own[w][1] if w in own else pooled for w in workloads])
    return pooled, per_record


def _own_spread(
    X: np.ndarray, idx: np.ndarray, trim: bool = True
) -> tuple[np.ndarray, float, int]:
    """(centroid, expected squared distance of a *new* member, size)."""
    centroid = X[idx].mean(axis=0)
    n = len(idx)
    if n < 2:
        return centroid, 0.0, n
    ss = float(robust_sq_distance(X[idx] - centroid, trim).mean())
    # A member's distance to a centroid fitted on it underestimates a new
    # member's: E|new-mean|^2 / E|member-mean|^2 = (n+1)/(n-1).
    return centroid, ss * (n + 1) / (n - 1), n


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
        stats = [_own_spread(X, idx, trim) for idx in groups]
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
    """Fit a model on past trials' records.

    Args:
        records: the (profile, winner, value) records; only those of
            ``objective`` are used.
        k: number of clusters, or ``"auto"`` (silhouette over 2..``max_k``).
        clusterer: ``"kmeans"`` or any scikit-learn clusterer name.
        objective: which records to use; default: the one all records share.
        min_std: floor of a feature's standard deviation (log units).
        use_workloads: scale features by their within-workload spread where
            records name their workload (see :meth:`FeatureScaler.fit`); the
            clustering itself never sees the names.
        noise_log: run-to-run noise of a rate (log units, 0.25 ≈ 28 %, what
            contention on a shared node does to context switches); floors each
            cluster's radius so a cluster of one record can still match.  Used
            only when the history cannot show the noise itself: with two or
            more named workloads run more than once, their measured scatter
            is the floor and sets ``k="auto"`` (:func:`_choose_k`).

    Raises:
        GroundTruthError: empty history, no common events, clustering failed.
        ConfigError: unknown clusterer; ``k`` not a positive integer, larger
            than the records, or given to a clusterer that finds k itself.
    """
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
    _resolve_clusterer(clusterer)  # unknown names fail before anything else
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
    if not isinstance(k, str) and k > len(recs):
        raise ConfigError(f"k={k}: larger than the {len(recs)} records")

    names = [r.workload for r in recs]
    labels = names if use_workloads else None
    scaler = FeatureScaler.fit([r.rates for r in recs], min_std=min_std, labels=labels)
    X = scaler.transform_many([r.rates for r in recs])
    # How far runs of one workload scatter, where the history shows it: it
    # sets k (auto) and the smallest radius a cluster may have.
    trim = not scaler.weight  # learned weights replace trimming (robust_sq_distance)
    noise = _run_noise2(X, names, trim) if use_workloads else None
    if isinstance(k, str):
        if takes_k(clusterer):
            labels, sil = _choose_k(X, clusterer, seed, max_k,
                                    None if noise is None else noise[1], trim)
        else:
            labels = _labels(clusterer, None, X, seed)
            sil = _silhouette(X, labels)
    else:
        labels = np.zeros(len(X), dtype=int) if k == 1 else _labels(clusterer, k, X, seed)
        sil = _silhouette(X, labels)

    # Noise points (label -1 of DBSCAN-like clusterers) become clusters of
    # their own: they are real workloads we have seen once.
    labels = labels.copy()
    next_label = int(labels.max()) + 1 if len(labels) else 0
    for i in np.where(labels < 0)[0]:
        labels[i] = next_label
        next_label += 1
    groups = [np.where(labels == lab)[0] for lab in sorted(set(labels.tolist()))]

    if noise is not None:
        floor = math.sqrt(noise[0])
    else:
        floor = float(np.sqrt(((noise_log * scaler.weights / np.asarray(scaler.std)) ** 2).sum()))
    if isinstance(k, str):
        groups = _merge_overlapping(X, groups, floor, trim)
        if sil is not None:
            merged = np.empty(len(X), dtype=int)
            for lab, idx in enumerate(groups):
                merged[idx] = lab
            sil = _silhouette(X, merged)
    own = [_own_spread(X, idx, trim) for idx in groups]
    multi = [(s2, n) for _, s2, n in own if n > 1]
    pooled = sum(s2 * n for s2, n in multi) / sum(n for _, n in multi) if multi else 0.0

    clusters = []
    for (centroid, s2, n), idx in zip(own, groups, strict=True):
        r2 = (n * s2 + PRIOR_RECORDS * pooled) / (n + PRIOR_RECORDS) if n > 1 else pooled
        radius = max(math.sqrt(r2), floor)
        members = [recs[i] for i in idx]
        # Only probe winners vote; a cluster of observations alone has no
        # known config (a trial matched to it probes, with no hint).
        voters = [r for r in members if r.probed]
        votes = Counter(str(r.config) for r in voters)
        values: dict[str, list[float]] = {}
        for r in voters:
            if math.isfinite(r.value):
                values.setdefault(str(r.config), []).append(r.value)

        def rank(cfg: str, values: dict[str, list[float]] = values,
                 votes: Counter[str] = votes) -> tuple[int, float]:
            vals = values.get(cfg)
            return (votes[cfg], -(sum(vals) / len(vals)) if vals else -math.inf)

        best = max(votes, key=rank) if votes else None
        best_vals = values.get(best, []) if best else []
        clusters.append(
            Cluster(
                centroid=tuple(float(x) for x in centroid),
                radius=radius,
                size=n,
                config=SystemConfig.parse(best) if best else None,
                value=sum(best_vals) / len(best_vals) if best_vals else math.nan,
                votes=dict(votes),
                workloads=dict(Counter(r.workload for r in members if r.workload)),
            )
        )
    model = ClusterGroundTruth(
        scaler, clusters, objective=objective, clusterer=clusterer, silhouette=sil,
        n_records=len(recs), trim=trim,
    )
    log.info("fitted %s", model.describe().splitlines()[0])
    return model


def cluster_labels(model: ClusterGroundTruth, records: Sequence[GroundTruthRecord]) -> list[int]:
    """Nearest cluster of each record (for reports and the ARI benchmark)."""
    return [
        -1 if (m := model.match(r.rates)).cluster is None else int(m.cluster) for r in records
    ]
