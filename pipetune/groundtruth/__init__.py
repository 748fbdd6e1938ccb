"""Ground truth: have we seen this workload before, and what config won?

- :mod:`.base` — :class:`GroundTruth` (``match``), :class:`Match`,
  :class:`GroundTruthRecord`, :class:`EmptyGroundTruth`.
- :mod:`.features` — :class:`FeatureScaler` (events both sides have, per
  CPU-second, log-scaled, standardised).
- :mod:`.model` — :class:`ClusterGroundTruth` (an estimator: ``fit``,
  ``match``) with its :class:`FitParams`; :func:`fit_groundtruth`.
- :mod:`.clusterers` — any scikit-learn clusterer by name.
- :mod:`.distance` — robust distances, spreads, :func:`similarity`.
- :mod:`.persist` — versioned JSON files, atomic writes, no pickle.
- :mod:`.retrain` — :func:`retrain`: store records → fitted model file.
"""

from pipetune.groundtruth.base import (
    EmptyGroundTruth,
    GroundTruth,
    GroundTruthRecord,
    Hint,
    Match,
    check_threshold,
    records_from_frame,
)
from pipetune.groundtruth.clusterers import make_clusterer
from pipetune.groundtruth.distance import similarity
from pipetune.groundtruth.features import FeatureScaler
from pipetune.groundtruth.model import (
    Cluster,
    ClusterGroundTruth,
    FitParams,
    cluster_labels,
    fit_groundtruth,
)
from pipetune.groundtruth.persist import (
    SCHEMA_VERSION,
    ModelFileError,
    check_overwritable,
    load_model,
    load_or_empty,
    save_model,
)
from pipetune.groundtruth.retrain import retrain

__all__ = [
    "SCHEMA_VERSION",
    "Cluster",
    "ClusterGroundTruth",
    "EmptyGroundTruth",
    "FeatureScaler",
    "FitParams",
    "GroundTruth",
    "GroundTruthRecord",
    "Hint",
    "Match",
    "ModelFileError",
    "check_overwritable",
    "check_threshold",
    "cluster_labels",
    "fit_groundtruth",
    "load_model",
    "load_or_empty",
    "make_clusterer",
    "records_from_frame",
    "retrain",
    "save_model",
    "similarity",
]
