"""Ground truth: have we seen this workload before, and what config won?

- :mod:`.base` — :class:`GroundTruth` (``match``), :class:`Match`,
  :class:`GroundTruthRecord`, :class:`EmptyGroundTruth`.
- :mod:`.features` — :class:`FeatureScaler` (events both sides have, per
  CPU-second, log-scaled, standardised).
- :mod:`.model` — :func:`fit_groundtruth`, :class:`ClusterGroundTruth`,
  :func:`similarity`, any scikit-learn clusterer by name.
- :mod:`.persist` — versioned JSON files, atomic writes, no pickle.
- :mod:`.retrain` — :func:`retrain`: store records → fitted model file.
"""

from pipetune.groundtruth.base import (
    EmptyGroundTruth,
    GroundTruth,
    GroundTruthRecord,
    Match,
    check_threshold,
    records_from_frame,
)
from pipetune.groundtruth.features import FeatureScaler
from pipetune.groundtruth.model import (
    Cluster,
    ClusterGroundTruth,
    cluster_labels,
    fit_groundtruth,
    make_clusterer,
    similarity,
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
    "GroundTruth",
    "GroundTruthRecord",
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
