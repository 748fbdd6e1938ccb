"""The ground truth as an estimator: ``ClusterGroundTruth(params).fit(records)``
(issue 14, item 4).  The model's answers are tested in
test_groundtruth_model.py through :func:`fit_groundtruth`, which is this."""

from __future__ import annotations

import dataclasses

import pytest
from test_groundtruth_model import workloads

from pipetune.errors import ConfigError, GroundTruthError
from pipetune.groundtruth import (
    ClusterGroundTruth,
    EmptyGroundTruth,
    FitParams,
    GroundTruth,
    fit_groundtruth,
)


def test_fit_returns_the_model_and_equals_fit_groundtruth() -> None:
    recs = workloads()
    model = ClusterGroundTruth(k="auto", clusterer="kmeans")
    assert model.fit(recs) is model
    assert model.to_dict() == fit_groundtruth(recs).to_dict()
    assert ClusterGroundTruth(k=2).fit(recs).to_dict() == fit_groundtruth(recs, k=2).to_dict()


def test_an_unfitted_model_says_so_instead_of_answering() -> None:
    model = ClusterGroundTruth()
    assert model.n_clusters == 0 and "not fitted" in model.describe()
    with pytest.raises(GroundTruthError, match="not fitted"):
        model.match(workloads()[0].rates)
    with pytest.raises(GroundTruthError, match="not fitted"):
        model.to_dict()


def test_fitting_again_starts_from_the_same_parameters() -> None:
    """``objective=None`` means "the records' own": a second fit on another
    objective's history is not held to the first one's."""
    runtime = workloads()
    energy = [dataclasses.replace(r, objective="energy") for r in workloads(n_workloads=2)]
    model = ClusterGroundTruth()
    assert model.fit(runtime).objective == "runtime" and model.n_clusters == 4
    assert model.fit(energy).objective == "energy" and model.n_clusters == 2
    assert model.params == FitParams()


def test_parameters_are_checked_by_fit_not_by_the_constructor() -> None:
    model = ClusterGroundTruth(k="many")  # scikit-learn: __init__ only stores
    with pytest.raises(ConfigError, match="k='many'"):
        model.fit(workloads())
    assert FitParams(k=" AUTO ").checked().k == "auto"
    assert FitParams(k="4").checked().k == 4
    with pytest.raises(ConfigError, match="unknown"):
        FitParams(clusterer="nosuch").checked()


def test_the_interface_has_fit_and_the_empty_model_learns_nothing() -> None:
    assert "fit" in GroundTruth.__abstractmethods__
    empty = EmptyGroundTruth("no history")
    assert empty.fit(workloads()) is empty
    assert empty.match(workloads()[0].rates).score == 0.0
