"""Every workload trains, evaluates, is deterministic, acts on windows and checkpoints."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from pipetune.errors import ConfigError, NotSupportedError
from workloads import get_workload, list_workloads
from workloads.base import TorchWorkload

#: Small settings so one epoch takes well under a second on a contended core.
SMALL: dict[str, dict[str, Any]] = {
    "lenet5-mnist": {"max_train_samples": 256, "batch_size": 32},
    "lenet5-fashion": {"max_train_samples": 256, "batch_size": 32},
    "deepcnn-mnist": {"max_train_samples": 64, "batch_size": 32, "width": 8},
    "cnn-news20": {"max_train_samples": 128, "vocab_size": 500, "seq_len": 30},
    "lstm-news20": {"max_train_samples": 128, "vocab_size": 500, "seq_len": 20},
    "jacobi": {"size": 64, "iters_per_epoch": 20},
    "bfs": {"nodes": 2000, "degree": 4, "traversals_per_epoch": 3},
    "kmeans": {"points": 2000, "dims": 4, "clusters": 5, "iters_per_epoch": 3},
}


def make(name: str, seed: int = 0, **extra: Any):
    return get_workload(name)({**SMALL[name], **extra}, seed=seed)


def test_small_settings_cover_every_registered_workload() -> None:
    assert set(SMALL) == set(list_workloads())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_workload_trains_one_epoch(name: str) -> None:
    wl = make(name)
    result = wl.train_epoch(1)
    assert set(result) >= {"loss", "steps", "samples"}
    assert result["steps"] >= 1 and result["samples"] >= result["steps"]
    assert math.isfinite(result["loss"])
    quality = wl.evaluate()
    assert wl.metric in quality and math.isfinite(quality[wl.metric])
    assert wl.data_source


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_losses_other_seed_other_losses(name: str) -> None:
    a, b, c = make(name, 1), make(name, 1), make(name, 2)
    la = [a.train_epoch(e)["loss"] for e in (1, 2)]
    lb = [b.train_epoch(e)["loss"] for e in (1, 2)]
    lc = [c.train_epoch(e)["loss"] for e in (1, 2)]
    assert la == lb
    assert la != lc


@pytest.mark.parametrize("name", ["lenet5-mnist", "jacobi", "kmeans"])
def test_on_window_is_called_every_window_steps(name: str) -> None:
    wl = make(name)
    seen: list[int] = []
    result = wl.train_epoch(1, on_window=seen.append, window_steps=2)
    assert seen == list(range(2, result["steps"] + 1, 2))
    with pytest.raises(ConfigError, match="window_steps"):
        wl.train_epoch(2, on_window=seen.append, window_steps=0)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_state_dict_resumes_exactly(name: str) -> None:
    a = make(name)
    a.train_epoch(1)
    state = a.state_dict()
    b = make(name)
    b.load_state_dict(state)
    assert a.train_epoch(2)["loss"] == pytest.approx(b.train_epoch(2)["loss"], rel=1e-6)


def test_lenet_learns_real_digits() -> None:
    wl = get_workload("lenet5-mnist")({"max_train_samples": 2000}, seed=0)
    accuracies = []
    for epoch in (1, 2):
        wl.train_epoch(epoch)
        accuracies.append(wl.evaluate()["accuracy"])
    assert accuracies[1] > accuracies[0]
    assert accuracies[1] > 0.6  # ten classes: chance is 0.1


def test_type_iii_jobs_converge() -> None:
    jacobi = make("jacobi")
    r = [jacobi.train_epoch(e)["loss"] for e in (1, 2, 3)]
    assert r[0] > r[1] > r[2] > 0
    kmeans = make("kmeans")
    inertia = [kmeans.train_epoch(e)["loss"] for e in (1, 2, 3)]
    assert inertia[0] >= inertia[1] >= inertia[2] > 0
    bfs = make("bfs")
    bfs.train_epoch(1)
    first = bfs.evaluate()
    for e in (2, 3, 4):
        bfs.train_epoch(e)
    assert 0 < first["reached_fraction"] <= 1.0 and first["mean_path_length"] > 1
    # The metric is the standard error of the running estimate over all traversals so far.
    lengths = bfs.path_lengths
    assert len(lengths) == 4 * SMALL["bfs"]["traversals_per_epoch"]
    expected = float(torch.tensor(lengths, dtype=torch.float64).std() / math.sqrt(len(lengths)))
    assert bfs.evaluate()["stderr"] == pytest.approx(expected)


def test_bfs_distances_are_correct_on_a_known_graph() -> None:
    bfs = make("bfs", nodes=5, degree=2)
    # A path 0-1-2-3-4 in CSR form (both directions).
    bfs.indptr = torch.tensor([0, 1, 3, 5, 7, 8]).numpy()
    bfs.indices = torch.tensor([1, 0, 2, 1, 3, 2, 4, 3]).numpy()

    class FixedSource:
        def integers(self, lo: int, hi: int) -> int:
            return 0

    bfs.rng = FixedSource()
    bfs._traverse()
    assert bfs.reached[-1] == 1.0
    assert bfs.path_lengths[-1] == pytest.approx((1 + 2 + 3 + 4) / 4)


@pytest.mark.parametrize("name", ["lenet5-mnist", "deepcnn-mnist", "cnn-news20", "lstm-news20"])
@pytest.mark.parametrize("n", [2, 3])
def test_partitions_cover_the_model_and_merge_back(name: str, n: int) -> None:
    wl: TorchWorkload = make(name)
    parts = wl.partitions(n)
    assert len(parts) == n and all(len(p) >= 1 for p in parts)
    names = [c for p in parts for c, _ in p.named_children()]
    assert names == [c for c, _ in wl.model.named_children()]
    merged: dict[str, torch.Tensor] = {}
    for p in parts:
        merged.update(p.state_dict())
    assert merged.keys() == wl.model.state_dict().keys()
    # Chained partitions compute what the whole model computes.
    x = wl.x_train[:4]
    wl.model.eval()
    out = x
    for p in parts:
        out = p(out)
    assert torch.allclose(out, wl.model(x))


def test_partitions_refuse_more_parts_than_layers_and_non_sequential_models() -> None:
    wl: TorchWorkload = make("lstm-news20")
    with pytest.raises(ConfigError, match="only 4 layers"):
        wl.partitions(5)
    wl.model = torch.nn.LSTM(3, 3)
    with pytest.raises(NotSupportedError, match="not an nn.Sequential"):
        wl.partitions(2)


def test_balanced_boundaries_minimise_the_slowest_stage() -> None:
    from workloads.base import balanced_boundaries

    assert balanced_boundaries([1, 1, 1, 1], 2) == [0, 2]
    assert balanced_boundaries([10, 1, 1, 1], 2) == [0, 1]
    assert balanced_boundaries([1, 1, 1, 10], 3)[-1] == 3  # the heavy layer stands alone
    assert balanced_boundaries([3, 3, 3], 3) == [0, 1, 2]
    assert balanced_boundaries([5], 1) == [0]


def test_default_split_follows_compute_not_parameters() -> None:
    # LeNet-5's parameters sit in its linear layers, its compute in the convolutions:
    # a parameter-balanced split would put both convolutions on the first stage.
    wl: TorchWorkload = make("lenet5-mnist")
    costs = wl.layer_costs()
    assert costs == wl.layer_costs()  # deterministic: every rank cuts the same way
    first, second = wl.partitions(2)
    assert "conv1" in dict(first.named_children())
    assert "conv2" in dict(second.named_children())
