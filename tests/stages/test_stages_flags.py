"""The --schedule syntax, workloads taking schedules, and the CLI's one-line errors."""

from __future__ import annotations

import pytest

from pipetune.cli import main
from pipetune.errors import ConfigError
from pipetune.stages import StepDecay, parse
from pipetune.stages.flags import parse_schedule_flag, schedule_grid


def test_step_flag_is_a_grid_with_one_list_per_change_point() -> None:
    key, values = parse_schedule_flag("lr=step:0.1,0.05/rate=0.1,0.2/at=2,3,4/at=6,8,10")
    assert key == "lr" and len(values) == 36
    assert parse(values[0]) == StepDecay(0.1, 0.1, (2, 6))
    # Change points that are not ascending are left out.
    _, values = parse_schedule_flag("lr=step:0.1/rate=0.5/at=2,4/at=3,5")
    assert [v["at"] for v in values] == [[2, 3], [2, 5], [4, 5]]


def test_grid_of_two_flags_is_their_product() -> None:
    grid = schedule_grid(["lr=step:0.1/rate=0.5/at=2,3", "batch_size=batch:32/factor=2/at=1"])
    assert len(grid) == 2 and all(g["batch_size"]["schedule"] == "batch" for g in grid)
    assert schedule_grid(["lr=const:0.1,0.2"])[1]["lr"] == {"schedule": "constant", "value": 0.2}


@pytest.mark.parametrize(
    ("flag", "words"),
    [
        ("lr", "expected KEY=step"),
        ("lr=cosine:0.1", "expected KEY=step"),
        ("lr=step:0.1/at=2", "needs /rate"),
        ("lr=step:0.1/rate=0.5/at=two", "comma-separated integers"),
        ("lr=step:0.1/rate=0.5/at=2/decay=3", "unexpected 'decay=3'"),
        ("lr=step:0.1/rate=-1/at=2", "must be > 0"),
        ("batch_size=batch:32.5/factor=2/at=2", "integers"),
        ("lr=step:0.1/rate=0.5/at=4/at=2", "ascending"),
    ],
)
def test_bad_flags_raise_one_config_error(flag: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        schedule_grid([flag])


def test_cli_bad_schedule_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tune", "lenet5-mnist", "--stages", "--schedule", "lr=step:0.1/rate=x/at=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "rate" in err and "Traceback" not in err


def test_cli_reuse_without_stages_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["tune", "lenet5-mnist", "--reuse", "--schedule", "lr=const:0.1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "--stages" in err and "Traceback" not in err


def test_workload_schedule_is_exact_per_epoch_and_resumes_like_a_straight_run() -> None:
    import torch

    from workloads import get_workload

    torch.set_num_threads(1)
    cls = get_workload("lenet5-mnist")
    hp = {"max_train_samples": 128, "batch_size": {"schedule": "batch", "initial": 16,
                                                   "factor": 2, "at": [2]},
          "lr": {"schedule": "step", "initial": 0.05, "rate": 0.5, "at": [1, 3]}}
    straight = cls(hp, seed=3)
    losses, lrs, steps = [], [], []
    for epoch in range(4):
        r = straight.train_epoch(epoch)
        losses.append(r["loss"])
        lrs.append(straight.optimizer.param_groups[0]["lr"])
        steps.append(r["steps"])
    assert lrs == [0.05, 0.025, 0.025, 0.0125]
    assert steps == [8, 8, 4, 4]
    first = cls(hp, seed=3)
    for epoch in range(2):
        first.train_epoch(epoch)
    resumed = cls(hp, seed=3)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.train_epoch(e)["loss"] for e in (2, 3)] == losses[2:]
    with pytest.raises(ConfigError, match="cannot be a schedule"):
        cls({"momentum": {"schedule": "constant", "value": 0.9}})
