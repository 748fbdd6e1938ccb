"""Offline retraining: every ground-truth record in a store → a model file.

The function behind ``pipetune groundtruth retrain``, usable from the daemon
or a script: read the records of one objective, fit, write atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipetune.groundtruth.base import records_from_frame
from pipetune.groundtruth.model import ClusterGroundTruth, fit_groundtruth
from pipetune.groundtruth.persist import check_overwritable, save_model

log = logging.getLogger(__name__)


def retrain(
    store: Any,
    out: str | Path | None = None,
    *,
    objective: str = "runtime",
    k: int | str = "auto",
    clusterer: str = "kmeans",
    seed: int = 0,
    force: bool = False,
) -> ClusterGroundTruth:
    """Refit the ground truth from ``store.groundtruth_records(objective)``
    and, when ``out`` is given, write it there atomically.

    A file at ``out`` that cannot be read as a model (truncated, binary, a
    newer schema) is never replaced unless ``force``: it is checked before
    anything is fitted.

    Raises:
        ModelFileError: ``out`` holds a file that is not a readable model.
        GroundTruthError: no records, nothing in common, cannot write.
        ConfigError: bad ``k`` or ``clusterer``.
    """
    if out is not None and not force:
        check_overwritable(out)
    records = records_from_frame(store.groundtruth_records(objective), objective)
    model = fit_groundtruth(records, k=k, clusterer=clusterer, objective=objective, seed=seed)
    if out is not None:
        path = save_model(model, out)
        log.info("wrote ground truth (%d clusters, %d records) to %s", model.n_clusters,
                 model.n_records, path)
    return model
