"""Any scikit-learn clusterer, by name, as the ground truth's grouping step.

- :func:`make_clusterer` — the estimator for a name (``"kmeans"``, an alias
  of :data:`CLUSTERER_ALIASES`, or any class of ``sklearn.cluster`` /
  ``sklearn.mixture`` that labels records), with ``k`` where it takes one;
- :func:`cluster_records` — the labels it gives a feature matrix;
- :func:`known_clusterers`, :func:`takes_k`, :func:`resolve_clusterer` —
  what the CLI lists and what ``k="auto"`` needs to know.

Split from :mod:`.model` so that the model's ``fit`` reads as its steps;
whatever clusterer found the groups, the model keeps only centroids, radii
and configs.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from pipetune.errors import ConfigError, GroundTruthError

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


def _labels_samples(cls: type) -> bool:
    """Whether ``cls`` is a clusterer that gives each *record* a label:
    ``fit_predict`` or ``predict``.  Biclusterers (rows and columns at once)
    and ``FeatureAgglomeration`` (groups features) have neither; a property
    that raises (``FeatureAgglomeration.fit_predict``) does not count."""
    return any(callable(getattr(cls, m, None)) for m in ("fit_predict", "predict"))


def known_clusterers() -> list[str]:
    """Every ``clusterer`` name that :meth:`ClusterGroundTruth.fit` can use: the
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


def resolve_clusterer(name: str) -> type:
    """The estimator class ``name`` stands for (case-insensitive).

    Raises:
        ConfigError: unknown, or a class that does not label records.
    """
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
    cls = resolve_clusterer(name)
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
    """Whether the clusterer is told its number of clusters (``n_clusters`` or
    ``n_components``) rather than finding it: only those can scan ``k``."""
    params = inspect.signature(resolve_clusterer(name)).parameters
    return "n_clusters" in params or "n_components" in params


def cluster_records(name: str, k: int | None, X: np.ndarray, seed: int) -> np.ndarray:
    """The cluster label of each row of ``X`` by clusterer ``name`` (``-1``:
    noise, for DBSCAN-like ones).

    Raises:
        ConfigError: see :func:`make_clusterer`.
        GroundTruthError: the clusterer could not fit these records.
    """
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
