"""A stage job under Tune's HyperBand: trials paused at its rungs, resumed
from their Tune checkpoints, stopped at others — through ``pipetune tune
--stages --scheduler hyperband`` (run_job), against the same grid run
trial-based under FIFO in the same Ray session.

What must hold: no trial fails; a trial never reports an epoch twice or
skips one (a paused trial resumes where it stopped, a stage trained by
another trial is replayed once); every epoch a trial reported equals the
same trial's epoch in the trial-based run (same thread count: one core);
and the stage job trains no epoch twice (at most its tree's unique epochs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipetune.config import Settings
from pipetune.stages import StageTree, plan_for
from pipetune.stages.flags import schedule_grid
from pipetune.tune.job import JobSpec, run_job
from pipetune.types import SystemSpace

pytestmark = pytest.mark.slow

EPOCHS = 4
SMALL = {"max_train_samples": 256, "batch_size": 32}
GRID = "lr=step:0.05,0.02/rate=0.5,0.2/at=2"  # 4 trials, 2 shared prefixes


def _spec(job: str, *, stages: bool, scheduler: str) -> JobSpec:
    return JobSpec(
        "lenet5-mnist", "v1", epochs=EPOCHS, space=SystemSpace.parse(["cores=1"]), job=job,
        fixed_hparams=SMALL, schedules=(GRID,), stages=stages, scheduler=scheduler,
    )


def _per_epoch(settings: Settings, job: str) -> dict[str, list[dict[str, Any]]]:
    """Every trial's results as Tune recorded them (in order), by its lr schedule."""
    out: dict[str, list[dict[str, Any]]] = {}
    for params in (settings.home / "ray_results" / job).glob("*/params.json"):
        lr = json.dumps(json.loads(params.read_text())["trial"]["lr"], sort_keys=True)
        lines = (params.parent / "result.json").read_text().splitlines()
        out[lr] = [json.loads(line) for line in lines if line.strip()]
    return out


@pytest.mark.xfail(strict=False, reason=(
    "known open bug, timing-dependent: a trial HyperBand pauses around a replayed epoch "
    "can show an epoch twice or miss one in Tune's result log (CI saw [0, 0, 1, 2] before "
    "replays carried a Tune checkpoint and [1, 2] after); it passes in most runs"))
def test_a_stage_job_under_hyperband_equals_its_trial_based_run(
    tmp_path: Path, ray_session: None
) -> None:
    settings = Settings.load({"home": str(tmp_path / "home")}, env={})
    staged = run_job(_spec("hb-stage", stages=True, scheduler="hyperband"), settings, verbose=0)
    alone = run_job(_spec("hb-trial", stages=False, scheduler="fifo"), settings, verbose=0)

    assert all(t["error"] is None for t in staged.trials + alone.trials)
    tree = StageTree()
    for t in schedule_grid([GRID]):
        tree.add(plan_for({**SMALL, **t}, EPOCHS))
    figures = staged.stages
    assert figures is not None
    assert 0 < figures["epochs_trained"] <= tree.unique_epochs() < 4 * EPOCHS

    got, want = _per_epoch(settings, "hb-stage"), _per_epoch(settings, "hb-trial")
    assert set(got) == set(want) and len(got) == 4
    finished = 0
    for lr, rows in got.items():
        epochs = [r["epoch"] for r in rows]
        # In order, each once, from epoch 0: a pause and its resume lose or
        # repeat nothing, whether the epoch was trained or replayed.
        assert epochs == list(range(len(epochs))), (lr, epochs)
        finished += len(epochs) == EPOCHS
        for r in rows:
            ref = want[lr][r["epoch"]]
            for key in ("loss", "accuracy", "test_loss"):
                assert r[key] == pytest.approx(ref[key], rel=1e-6), (lr, r["epoch"], key)
    # HyperBand let at least one trial run to max_t and stopped at least one
    # early (so the scheduler did act on this job).
    assert 1 <= finished < len(got), [len(rows) for rows in got.values()]
