"""Each strategy's losses equal the single-process reference; bad configs are refused.

Every distributed run starts real worker processes (spawn, gloo on
127.0.0.1), so the runs are few and tiny: 2 workers, 4-8 steps.

The comparisons train on the CPU.  On a machine with 2+ GPUs,
``PIPETUNE_TEST_DEVICE=cuda`` runs the same comparisons (reference included)
over NCCL with one GPU per rank; that has never run on this project's hosts,
and GPU kernels (TF32 convolutions) may need a looser ``RTOL``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from pipetune.errors import ConfigError, NotSupportedError, UsageError, WorkloadError
from pipetune.parallel import ParallelConfig, get_strategy, train
from pipetune.parallel._runtime import SavedActivations, free_port
from workloads.base import cpu_count

LENET = {"max_train_samples": 192, "batch_size": 32, "dropout": 0.0}
LSTM = {"max_train_samples": 64, "batch_size": 16, "dropout": 0.0, "vocab_size": 300,
        "seq_len": 12, "embed_dim": 16, "hidden_size": 16}
RTOL = 1e-4  # float sums in another order; a wrong gradient is off by far more

DEVICE = os.environ.get("PIPETUNE_TEST_DEVICE", "cpu")

needs_two_cores = pytest.mark.skipif(cpu_count() < 2, reason="needs 2 cores for 2 workers")


def run(workload: str, hparams: dict[str, Any], config: ParallelConfig,
        **kw: Any) -> list[dict[str, Any]]:
    config = dataclasses.replace(config, device=DEVICE)
    return train(workload, hparams, parallel=config, epochs=2, record_step_losses=True, **kw)


@pytest.fixture(scope="module")
def lenet_reference() -> list[dict[str, Any]]:
    return run("lenet5-mnist", LENET, ParallelConfig(), measure_memory=True)


def _assert_same_losses(got: list[dict[str, Any]], ref: list[dict[str, Any]]) -> None:
    assert [r["epoch"] for r in got] == [1, 2]
    for g, r in zip(got, ref, strict=True):
        assert g["steps"] == r["steps"] and g["samples"] == r["samples"]
        assert g["step_losses"] == pytest.approx(r["step_losses"], rel=RTOL)
        assert g["loss"] == pytest.approx(r["loss"], rel=RTOL)
        assert g["accuracy"] == pytest.approx(r["accuracy"], abs=0.011)  # at most one image


def test_reference_trains(lenet_reference: list[dict[str, Any]]) -> None:
    first, second = lenet_reference
    assert first["steps"] == 6 and len(first["step_losses"]) == 6
    assert second["loss"] < first["loss"]
    assert first["strategy"] == "none" and first["workers"] == 1
    assert first["device"] == DEVICE and first["partitions"][0]["device"] == (
        "cpu" if DEVICE == "cpu" else "cuda:0")
    assert len(first["partitions"]) == 1


@pytest.mark.slow
@needs_two_cores
@pytest.mark.parametrize(
    "config", [ParallelConfig("ddp", 2), ParallelConfig("mp", 2), ParallelConfig("gpipe", 2, 4)],
    ids=str,
)
def test_lenet_strategy_matches_reference(config: ParallelConfig,
                                          lenet_reference: list[dict[str, Any]]) -> None:
    got = run("lenet5-mnist", LENET, config, measure_memory=True)
    _assert_same_losses(got, lenet_reference)
    assert got[0]["strategy"] == config.strategy and got[0]["workers"] == 2
    parts = got[0]["partitions"]
    assert len(parts) == 2
    if got[0]["device"] == "cpu":  # every rank computes on the CPU, over gloo
        assert [p["device"] for p in parts] == ["cpu", "cpu"]
    else:  # one GPU per rank (not run on this project's hosts)
        assert [p["device"] for p in parts] == ["cuda:0", "cuda:1"]
    ref_params = lenet_reference[0]["partitions"][0]["params_mb"]
    if config.strategy == "ddp":  # every rank holds the whole model, half the activations
        assert all(p["params_mb"] == pytest.approx(ref_params) for p in parts)
        ref_act = lenet_reference[0]["partitions"][0]["activations_mb"]
        assert parts[0]["activations_mb"] == pytest.approx(ref_act / 2, rel=0.1)
    else:  # the partitions split the parameters between them
        assert sum(p["params_mb"] for p in parts) == pytest.approx(ref_params)
        assert all(0 < p["params_mb"] < ref_params for p in parts)
    for p in parts:
        assert p["grads_mb"] == pytest.approx(p["params_mb"])
        assert p["optimizer_mb"] == pytest.approx(p["params_mb"])  # SGD momentum: one buffer
    assert multiprocessing.active_children() == []


@pytest.mark.slow
@needs_two_cores
def test_lstm_pipeline_matches_reference() -> None:
    """An embedding stage (integer input) and an LSTM stage: another shape of model."""
    ref = run("lstm-news20", LSTM, ParallelConfig())
    got = run("lstm-news20", LSTM, ParallelConfig("gpipe", 2, 2))
    _assert_same_losses(got, ref)


def test_epoch_records_stream_as_they_end(lenet_reference: list[dict[str, Any]]) -> None:
    seen: list[int] = []
    train("lenet5-mnist", LENET, epochs=2, on_epoch=lambda r: seen.append(r["epoch"]))
    assert seen == [1, 2]


def test_non_dnn_workloads_run_with_none_only() -> None:
    records = train("jacobi", {"size": 32, "iters_per_epoch": 5}, epochs=2)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["residual"] < records[0]["residual"]
    for strategy in ("ddp", "mp", "gpipe"):
        with pytest.raises(NotSupportedError, match=f"'{strategy}' does not apply.*'jacobi'"):
            train("jacobi", {}, parallel=ParallelConfig(strategy, 1 if strategy == "ddp" else 2))


def test_bad_configs_are_refused_before_any_process_starts() -> None:
    with pytest.raises(UsageError, match="unknown parallel strategy 'zero'"):
        ParallelConfig("zero")
    with pytest.raises(UsageError, match="unknown parallel strategy"):
        get_strategy("zero")
    with pytest.raises(ConfigError, match="workers=0"):
        ParallelConfig("ddp", 0)
    with pytest.raises(ConfigError, match="chunks=0"):
        ParallelConfig("gpipe", 2, 0)
    too_many = cpu_count() + 1
    with pytest.raises(UsageError, match=f"workers={too_many} exceeds the {cpu_count()} cores"):
        train("lenet5-mnist", LENET, parallel=ParallelConfig("ddp", too_many))
    with pytest.raises(ConfigError, match="not divisible by workers"):
        train("lenet5-mnist", {**LENET, "batch_size": 31}, parallel=ParallelConfig("ddp", 2))
    with pytest.raises(ConfigError, match="not divisible by chunks"):
        train("lenet5-mnist", LENET, parallel=ParallelConfig("gpipe", 2, 3))
    with pytest.raises(ConfigError, match="at least 2"):
        train("lenet5-mnist", LENET, parallel=ParallelConfig("mp", 1))
    with pytest.raises(ConfigError, match="'none' runs one process"):
        train("lenet5-mnist", LENET, parallel=ParallelConfig("none", 2))
    with pytest.raises(ConfigError, match="'batch_sise'"):
        train("lenet5-mnist", {"batch_sise": 2})
    with pytest.raises(ConfigError, match="epochs=0"):
        train("lenet5-mnist", LENET, epochs=0)
    assert multiprocessing.active_children() == []


@needs_two_cores
def test_a_failing_worker_is_one_clear_error_and_leaves_no_process() -> None:
    # Only the workers build the workload, so this error is raised in them; the
    # parent must end them all and re-raise it as the same one-line error.
    with pytest.raises(ConfigError, match="larger than the 8 training samples"):
        train("lenet5-mnist", {**LENET, "max_train_samples": 8},
              parallel=ParallelConfig("ddp", 2))
    assert multiprocessing.active_children() == []


def test_saved_activations_counts_what_autograd_keeps() -> None:
    lin = torch.nn.Linear(10, 5)
    x = torch.randn(4, 10)
    with SavedActivations(lin.parameters()) as meter:
        out = torch.relu(lin(x))
    # Linear saves its input (4x10 floats; the weight is a parameter, not counted),
    # ReLU saves its output (4x5 floats).
    assert meter.bytes == 4 * 10 * 4 + 4 * 5 * 4
    out.sum().backward()
    assert lin.weight.grad is not None


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    assert 1024 <= port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises if the port were taken
        assert s.getsockname()[1] == port


@pytest.mark.slow
@needs_two_cores
def test_a_crash_in_a_worker_becomes_a_workload_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers inherit sys.path at spawn: make the fixture module importable in any import mode.
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    seen: list[int] = []
    with pytest.raises(WorkloadError, match=r"mp worker \d failed: RuntimeError: boom in epoch 2"):
        train("_parallel_fixtures:FailsInEpochTwo", LENET, parallel=ParallelConfig("mp", 2),
              epochs=3, on_epoch=lambda r: seen.append(r["epoch"]))
    assert seen == [1]  # the epoch that ended was reported before the failure
    assert multiprocessing.active_children() == []
