"""Where the ranks compute: the decision (backend + device per rank) and what the CPU path records.

This host has no GPU.  The cpu branch of the decision runs for real; the cuda
branch runs with ``torch.cuda.is_available``/``device_count`` faked inside
the decision only (:func:`cuda_device_count`).  The NCCL/GPU *training* path
(``start_on``, ``place``, DDP ``device_ids``, stages on ``cuda:{rank}``,
``max_memory_allocated``) is NOT exercised by any test here; on a GPU machine
run ``python benchmarks/parallel.py --device cuda`` to check it.
"""

from __future__ import annotations

import logging
import multiprocessing

import pytest
import torch

from pipetune.cli import main
from pipetune.errors import NotSupportedError, UsageError
from pipetune.parallel import DevicePlan, ParallelConfig, resolve_device, train
from pipetune.parallel._runtime import place, start_on
from pipetune.parallel.device import cuda_device_count

LENET = {"max_train_samples": 64, "batch_size": 32, "dropout": 0.0}
no_gpu_here = pytest.mark.skipif(torch.cuda.is_available(),
                                 reason="asserts what a host without CUDA does")


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch):
    """Pretend torch sees ``n`` CUDA devices (decision only: nothing may run on them)."""

    def install(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return install


# -- the decision, for real ------------------------------------------------------------------


def test_cpu_is_gloo_on_cpu_for_every_rank() -> None:
    plan = resolve_device("cpu", 4)
    assert plan == DevicePlan("cpu")
    assert plan.backend == "gloo" and not plan.is_cuda
    assert [plan.device(r) for r in range(3)] == [torch.device("cpu")] * 3


def test_auto_on_this_host_follows_what_torch_sees() -> None:
    have = cuda_device_count()
    assert have == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for processes in (1, 2):
        expected = "cuda" if have >= processes else "cpu"
        assert resolve_device("auto", processes).kind == expected


@no_gpu_here
def test_cuda_without_gpus_is_a_usage_error_naming_how_many() -> None:
    with pytest.raises(UsageError, match=r"needs 2 CUDA devices \(one per process\) but this "
                                         r"host has 0$"):
        resolve_device("cuda", 2)
    with pytest.raises(UsageError, match="needs 1 CUDA device .*has 0"):
        resolve_device("cuda", 1)


def test_unknown_device_is_refused_everywhere() -> None:
    with pytest.raises(UsageError, match=r"unknown device 'tpu' \(known: auto, cpu, cuda\)"):
        resolve_device("tpu", 1)
    with pytest.raises(UsageError, match="unknown device 'tpu'"):
        ParallelConfig("ddp", 2, device="tpu")
    with pytest.raises(UsageError, match="device kind 'auto'"):
        DevicePlan("auto")  # a plan is resolved: never "auto"


# -- the cuda branch of the decision, with torch.cuda faked ----------------------------------


def test_enough_gpus_gives_nccl_and_one_device_per_rank(fake_gpus) -> None:
    fake_gpus(4)
    for requested in ("auto", "cuda"):
        plan = resolve_device(requested, 2)
        assert plan.kind == "cuda" and plan.backend == "nccl"
        assert [plan.device(r) for r in range(2)] == [torch.device("cuda:0"),
                                                     torch.device("cuda:1")]
    assert resolve_device("cuda", 4).is_cuda  # exactly one per process is enough
    assert resolve_device("cpu", 2) == DevicePlan("cpu")  # asked for cpu: cpu


def test_too_few_gpus(fake_gpus, caplog: pytest.LogCaptureFixture) -> None:
    fake_gpus(1)
    with pytest.raises(UsageError, match="needs 2 CUDA devices .* but this host has 1$"):
        resolve_device("cuda", 2)
    with caplog.at_level(logging.INFO, logger="pipetune.parallel.device"):
        assert resolve_device("auto", 2) == DevicePlan("cpu")
    assert "1 CUDA device(s) for 2 processes; training on cpu" in caplog.text
    assert resolve_device("auto", 1).is_cuda


def test_devices_without_a_usable_cuda_count_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    # A driver that enumerates devices torch cannot use (is_available False) has none.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert cuda_device_count() == 0
    assert resolve_device("auto", 2) == DevicePlan("cpu")


def test_the_plan_travels_to_spawned_workers() -> None:
    import pickle

    plan = DevicePlan("cuda")
    assert pickle.loads(pickle.dumps(plan)) == plan


# -- the same seam on the CPU path, for real ---------------------------------------------------


def test_start_on_and_place_on_cpu_leave_the_model_where_it_was() -> None:
    from workloads import get_workload

    wl = get_workload("lenet5-mnist")(LENET)
    params = list(wl.model.parameters())
    device = start_on(DevicePlan("cpu"), 1)
    assert device == torch.device("cpu")
    place(wl, wl.model, device)
    assert wl.device == device
    assert all(p is q for p, q in zip(params, wl.model.parameters(), strict=True))
    assert all(p.device.type == "cpu" for p in params)


def test_records_say_the_device_and_have_no_cuda_figure_on_cpu() -> None:
    (record,) = train("lenet5-mnist", LENET, parallel=ParallelConfig(device="cpu"),
                      measure_memory=True)
    assert record["device"] == "cpu"
    (part,) = record["partitions"]
    assert part["device"] == "cpu" and "cuda_max_allocated_mb" not in part
    (record,) = train("jacobi", {"size": 16, "iters_per_epoch": 2})
    assert record["device"] == "cpu"


@no_gpu_here
def test_train_refuses_cuda_before_any_process_starts() -> None:
    with pytest.raises(UsageError, match="needs 2 CUDA devices .*has 0"):
        train("lenet5-mnist", LENET, parallel=ParallelConfig("ddp", 2, device="cuda"))
    assert multiprocessing.active_children() == []
    with pytest.raises(NotSupportedError, match="device 'cuda' does not apply to workload "
                                                "'jacobi'"):
        train("jacobi", {}, parallel=ParallelConfig(device="cuda"))


@no_gpu_here
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--device", "cuda"], "needs 1 CUDA device (one per process) but this host has 0"),
        (["--parallel", "ddp", "--workers", "2", "--device", "cuda"],
         "needs 2 CUDA devices (one per process) but this host has 0"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_cli_device_errors_are_one_line_and_exit_2(argv: list[str], needle: str,
                                                   capsys) -> None:
    assert main(["train", "lenet5-mnist", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("pipetune train: error:")
