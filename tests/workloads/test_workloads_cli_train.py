"""`pipetune train`: per-epoch output, JSON, and one-line errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipetune.cli import main
from pipetune.cli.train import parse_sets
from pipetune.errors import UsageError

SMALL = ["--set", "max_train_samples=256", "--set", "batch_size=32"]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def test_json_lists_the_epochs_with_metric_and_seconds(capsys) -> None:
    assert main(["train", "lenet5-mnist", "--epochs", "2", "--json", *SMALL]) == 0
    out, err = capsys.readouterr()
    epochs = json.loads(out)
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert e["seconds"] > 0 and 0 <= e["accuracy"] <= 1 and e["loss"] > 0
        assert e["steps"] == 8 and e["strategy"] == "none"
    assert epochs[1]["loss"] < epochs[0]["loss"]
    assert "data: " in err  # which data was used is always said


def test_plain_output_is_one_line_per_epoch(capsys) -> None:
    assert main(["train", "jacobi", "--epochs", "2", "--set", "size=32",
                 "--set", "iters_per_epoch=4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch   1  loss ") and " residual " in lines[0]


def test_list_shows_every_workload(capsys) -> None:
    assert main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("lenet5-mnist", "lstm-news20", "bfs"):
        assert name in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["nope"], "unknown workload 'nope'"),
        (["lenet5-mnist", "--parallel", "zero"], "unknown parallel strategy 'zero'"),
        (["lenet5-mnist", "--set", "color=red"], "takes no hyperparameter 'color'"),
        (["lenet5-mnist", "--set", "batch_size=0"], "batch_size=0: must be >= 1"),
        (["lenet5-mnist", "--parallel", "ddp", "--workers", "99"], "workers=99 exceeds"),
        (["lenet5-mnist", "--set", "lr"], "expected KEY=VALUE"),
        ([], "name a WORKLOAD"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], needle: str, capsys) -> None:
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("pipetune train: error:")


def test_a_strategy_that_does_not_apply_says_so(capsys) -> None:
    assert main(["train", "kmeans", "--parallel", "gpipe", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "'gpipe' does not apply to workload 'kmeans'" in err


def test_parse_sets() -> None:
    assert parse_sets(["a=1", " b = x=y "]) == {"a": "1", "b": "x=y"}
    with pytest.raises(UsageError):
        parse_sets(["=3"])
