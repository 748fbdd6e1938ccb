"""Registry and hyperparameter handling of the workload interface."""

from __future__ import annotations

import pytest

from pipetune.errors import ConfigError, UsageError
from workloads import REGISTRY, Workload, get_workload, list_workloads
from workloads.base import TorchWorkload

PAPER_WORKLOADS = {"lenet5-mnist", "lenet5-fashion", "cnn-news20", "lstm-news20", "jacobi",
                   "bfs", "kmeans"}


def test_registry_holds_the_papers_workloads_with_their_types() -> None:
    names = list_workloads()
    assert set(names) >= PAPER_WORKLOADS
    assert names == sorted(names)
    kinds = {n: get_workload(n).kind for n in PAPER_WORKLOADS}
    assert kinds["lenet5-mnist"] == kinds["lenet5-fashion"] == "I"
    assert kinds["cnn-news20"] == kinds["lstm-news20"] == "II"
    assert kinds["jacobi"] == kinds["bfs"] == kinds["kmeans"] == "III"
    for name, cls in REGISTRY.items():
        assert cls.name == name
        assert issubclass(cls, Workload)
        assert cls.metric_mode in ("max", "min")


def test_unknown_workload_names_the_known_ones() -> None:
    with pytest.raises(UsageError) as e:
        get_workload("resnet")
    assert "'resnet'" in str(e.value)
    for name in PAPER_WORKLOADS:
        assert name in str(e.value)
    assert e.value.exit_code == 2


def test_dotted_path_loads_a_users_workload() -> None:
    assert get_workload("workloads.hpc:Jacobi") is REGISTRY["jacobi"]
    assert get_workload("workloads.hpc.KMeans") is REGISTRY["kmeans"]
    with pytest.raises(UsageError, match="cannot load"):
        get_workload("workloads.hpc:Nope")
    with pytest.raises(UsageError, match="not a Workload"):
        get_workload("workloads.base:cpu_count")


def test_unknown_hyperparameter_is_named() -> None:
    with pytest.raises(ConfigError) as e:
        get_workload("lenet5-mnist").resolve_hparams({"batch_sise": 3})
    assert "'batch_sise'" in str(e.value) and "batch_size" in str(e.value)


def test_string_values_are_converted_to_the_defaults_type() -> None:
    hp = get_workload("lenet5-mnist").resolve_hparams(
        {"batch_size": "16", "lr": "0.1", "optimizer": "adam", "dropout": 0}
    )
    assert hp["batch_size"] == 16 and isinstance(hp["batch_size"], int)
    assert hp["lr"] == pytest.approx(0.1) and isinstance(hp["lr"], float)
    assert isinstance(hp["dropout"], float)
    assert hp["momentum"] == get_workload("lenet5-mnist").hyperparameters["momentum"]


@pytest.mark.parametrize(
    ("hparams", "word"),
    [({"batch_size": 0}, "batch_size"), ({"batch_size": "x"}, "batch_size"),
     ({"lr": 0}, "lr"), ({"dropout": 1.0}, "dropout"), ({"optimizer": "rmsprop"}, "optimizer"),
     ({"batch_size": 2.5}, "batch_size"), ({"momentum": 1.5}, "momentum"),
     ({"max_train_samples": -1}, "max_train_samples")],
)
def test_bad_values_are_config_errors(hparams: dict, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        get_workload("lenet5-mnist").resolve_hparams(hparams)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_integer_size_must_be_positive(name: str) -> None:
    cls = get_workload(name)
    for key, default in cls.hyperparameters.items():
        if isinstance(default, int) and not isinstance(default, bool):
            low = 0 if key in cls.zero_allowed else 1
            with pytest.raises(ConfigError, match=key):
                cls.resolve_hparams({key: low - 1})
            assert cls.resolve_hparams({key: low})[key] == low


def test_type_iii_sizes_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="iters_per_epoch"):
        get_workload("jacobi").resolve_hparams({"iters_per_epoch": 0})
    with pytest.raises(ConfigError, match="clusters"):
        get_workload("kmeans")({"points": 10, "clusters": 20})


def test_batch_larger_than_the_data_is_refused() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        get_workload("lenet5-fashion")({"batch_size": 64, "max_train_samples": 10})


def test_dnn_workloads_are_torch_workloads_and_others_are_not() -> None:
    for name, cls in REGISTRY.items():
        assert cls.supports_parallel == issubclass(cls, TorchWorkload), name
        assert cls.supports_parallel == (cls.kind != "III"), name
