"""Stage jobs through ``pipetune tune --stages`` (run_job), one store: reuse
across jobs (``--reuse``) and the stage section of ``pipetune report``.

Job A trains a grid of 2 step decays; job B widens it to 4 (A's 2 plus 2
with another decay rate) with ``--reuse`` and must train only the stages A
did not, with A's trials' per-epoch numbers equal to A's; job C is B
without ``--reuse`` and trains its whole tree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipetune.config import Settings
from pipetune.stages import StageTree, plan_for
from pipetune.stages.flags import schedule_grid
from pipetune.tune.job import JobResult, JobSpec, run_job
from pipetune.types import SystemSpace

pytestmark = pytest.mark.slow

EPOCHS = 3
SMALL = {"max_train_samples": 256, "batch_size": 32}
GRID_A = "lr=step:0.05/rate=0.5/at=1,2"  # 2 trials
GRID_B = "lr=step:0.05/rate=0.5,0.2/at=1,2"  # 4 trials, A's 2 among them


def _spec(job: str, grid: str, *, reuse: bool) -> JobSpec:
    return JobSpec(
        "lenet5-mnist", "v1", epochs=EPOCHS, space=SystemSpace.parse(["cores=1"]), job=job,
        fixed_hparams=SMALL, schedules=(grid,), stages=True, reuse=reuse,
    )


def _unique_epochs(grid: str) -> int:
    tree = StageTree()
    for t in schedule_grid([grid]):
        tree.add(plan_for({**SMALL, **t}, EPOCHS))
    return tree.unique_epochs()


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory, ray_session: None
         ) -> Iterator[tuple[Settings, dict[str, JobResult]]]:
    home = tmp_path_factory.mktemp("stage-jobs")
    settings = Settings.load({"home": str(home)}, env={})
    out = {
        "A": run_job(_spec("stg-A", GRID_A, reuse=True), settings, verbose=0),
        "B": run_job(_spec("stg-B", GRID_B, reuse=True), settings, verbose=0),
        "C": run_job(_spec("stg-C", GRID_B, reuse=False), settings, verbose=0),
    }
    yield settings, out


def _per_epoch(settings: Settings, job: str) -> dict[str, list[dict[str, Any]]]:
    """Every trial's per-epoch results as Tune recorded them, by its lr schedule."""
    out: dict[str, list[dict[str, Any]]] = {}
    for params in (settings.home / "ray_results" / job).glob("*/params.json"):
        lr = json.dumps(json.loads(params.read_text())["trial"]["lr"], sort_keys=True)
        lines = (params.parent / "result.json").read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        out[lr] = sorted(rows, key=lambda r: r["epoch"])
    return out


def test_a_widened_grid_with_reuse_trains_only_the_new_stages(
    jobs: tuple[Settings, dict[str, JobResult]],
) -> None:
    settings, results = jobs
    for r in results.values():
        assert all(t["error"] is None for t in r.trials)
    a, b, c = (results[k].stages for k in "ABC")
    assert a is not None and b is not None and c is not None
    assert a["epochs_trained"] == _unique_epochs(GRID_A) == 5
    # B: its tree less what A trained (A checkpointed every epoch: --reuse).
    assert b["epochs_trained"] == _unique_epochs(GRID_B) - _unique_epochs(GRID_A) == 3
    assert b["epochs_reused"] == 2 * EPOCHS + 1 + 2  # A's 2 trials; a shared epoch 0 and 0..1
    assert c["epochs_trained"] == _unique_epochs(GRID_B) == 8 and c["epochs_reused"] == 0

    per_a, per_b, per_c = (_per_epoch(settings, j) for j in ("stg-A", "stg-B", "stg-C"))
    assert len(per_a) == 2 and len(per_b) == len(per_c) == 4 and set(per_a) < set(per_b)
    for lr, rows in per_a.items():
        assert [r["epoch"] for r in per_b[lr]] == list(range(EPOCHS))
        for ra, rb, rc in zip(rows, per_b[lr], per_c[lr], strict=True):
            for key in ("loss", "accuracy", "test_loss"):
                assert rb[key] == pytest.approx(ra[key], rel=1e-6), (lr, ra["epoch"], key)
                assert rc[key] == pytest.approx(ra[key], rel=1e-6), (lr, ra["epoch"], key)
        assert all(r["pt_stage_replayed"] for r in per_b[lr])  # nothing of A's trained again
    # B's new trials (trained partly from A's checkpoints) equal C's (trained afresh).
    for lr in set(per_b) - set(per_a):
        for rb, rc in zip(per_b[lr], per_c[lr], strict=True):
            assert rb["loss"] == pytest.approx(rc["loss"], rel=1e-6), (lr, rb["epoch"])


def test_report_shows_the_stage_tree_and_the_compute_saved(
    jobs: tuple[Settings, dict[str, JobResult]], tmp_path: Path
) -> None:
    from PIL import Image

    from pipetune.report import build_report
    from pipetune.store import open_store

    settings, results = jobs
    store = open_store(settings.store, spool_root=tmp_path / "spool")
    try:
        path, reports = build_report(store, ["stg-B", "stg-C"], tmp_path / "out")
    finally:
        store.close()
    for report, key in zip(reports, "BC", strict=True):
        figures = results[key].stages
        s = report.stages
        assert s is not None and figures is not None
        assert s.epochs_trained == figures["epochs_trained"]
        assert s.epochs_replayed == figures["epochs_replayed"]
        assert s.epochs_reused == figures["epochs_reused"]
        assert s.epochs_reported == figures["epochs_reported"]
        assert s.epochs_saved == figures["epochs_reported"] - figures["epochs_trained"]
        assert s.grid_epochs == figures["tree_trial_epochs"] == 4 * EPOCHS
        assert s.unique_epochs == figures["tree_unique_epochs"]
        assert s.nodes == figures["tree_nodes"] == len(s.tree)
        assert s.cpu_s == pytest.approx(figures["cpu_s"])
        assert s.cpu_s_trial_based == pytest.approx(figures["cpu_s_trial_based"])
        # Every Tune trial of the job is served by the node its schedule ends at.
        served = sorted(t for row in s.tree for t in row["tune_ending"])
        assert served == sorted(t["trial"] for t in results[key].trials)
        marks = "".join(row["epoch_marks"] for row in s.tree)  # t trained, r reused
        assert (marks.count("t"), marks.count("r")) == (
            (3, 5) if key == "B" else (8, 0))
    assert reports[0].stages is not None and reports[0].stages.reuse
    text = path.read_text()
    for i in (1, 2):
        png = tmp_path / "out" / f"stage_tree_{i}.png"
        assert png.is_file() and Image.open(png).size[0] > 300
        assert f"stage_tree_{i}.png" in text
    b = reports[0].stages
    assert f"trained {b.epochs_trained} epochs where trial-based" in text
    assert f"{b.epochs_saved} epochs saved" in text
