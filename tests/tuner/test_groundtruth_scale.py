"""A long history is judged on a sampled silhouette (O(n^2) otherwise)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from pipetune.groundtruth import model


def test_sampled_silhouette_agrees_with_the_full_one() -> None:
    rng = np.random.default_rng(0)
    n = model.SILHOUETTE_SAMPLE + 1500
    centres = rng.normal(0, 4, size=(3, 6))
    labels = np.arange(n) % 3
    X = centres[labels] + rng.normal(0, 1.0, size=(n, 6))
    full = float(silhouette_score(X, labels))
    sampled = model._silhouette(X, labels)
    assert sampled is not None
    assert sampled == pytest.approx(full, abs=0.03)
    assert model._silhouette(X, labels) == sampled  # fixed seed: same answer each fit
