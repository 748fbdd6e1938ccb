"""The system tuner per stage in a real stage job (``pipetune tune --stages
--mode pipetune``): a child stage resumed from its parent is decided once
from the parent (a decision naming the parent stage, no profiling epoch, no
probe), a child whose batch size changes at the branch point profiles.

Four trials of lenet5-mnist share epochs 0-2 and branch at epoch 3 (two
decay rates x batch size kept or doubled), one trial at a time so the first
trial's tuner has the whole node to probe and settles by epoch 2 (a 4-epoch
trial's plan leaves the winner's epoch).  Whichever trial trains the prefix,
the other three resume from it: at least one keeps batch size 32, at least
one doubles it; the first trial, when its own schedule doubles the batch
size at epoch 3, re-profiles that epoch.  The controller is the dry run: what is checked is who
decided what, and a trial's own affinity controller on this host degraded
the first trial when it asked for 2 cores after confining itself to 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipetune.config import Settings
from pipetune.store import open_store
from pipetune.tune.job import JobSpec, run_job
from pipetune.types import SystemSpace

pytestmark = pytest.mark.slow

EPOCHS = 4
GRID = ("lr=step:0.05/rate=0.5,0.2/at=3", "batch_size=batch:32/factor=1,2/at=3")


def test_children_are_decided_from_their_parent_unless_their_batch_size_changes(
    tmp_path: Path, ray_session: None
) -> None:
    settings = Settings.load({"home": str(tmp_path / "home"), "controller": "dry-run"},
                             env={})
    spec = JobSpec("lenet5-mnist", "pipetune", epochs=EPOCHS, job="stg-tuner",
                   space=SystemSpace.parse(["cores=1,2"]), concurrent=1,
                   fixed_hparams={"max_train_samples": 256}, schedules=GRID, stages=True)
    result = run_job(spec, settings, verbose=0)
    assert all(t["error"] is None for t in result.trials)
    assert result.stages is not None and result.stages["epochs_trained"] == 3 + 4

    batch_at_3: dict[str, int] = {}  # Tune trial id -> its batch size in epoch 3
    for results in (settings.home / "ray_results" / spec.job).glob("*/result.json"):
        for line in results.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if "trial_id" in row and "config" in row:
                factor = row["config"]["trial"]["batch_size"]["factor"]
                batch_at_3[row["trial_id"]] = int(32 * factor)

    store = open_store(settings.store)
    try:
        store.flush()
        decisions = store.query("decision", {"job": spec.job})
        epochs = store.query("epoch", {"job": spec.job})
        stage_points = store.query("stage", {})
    finally:
        store.close()
    # Every trained epoch keeps the system facts its trial had at its end.
    assert len(stage_points) == 7
    facts = [json.loads(s) for s in stage_points["system"]]
    assert all(f["config"] and f["phase"] for f in facts)

    trained = epochs.groupby("trial")["epoch"].apply(lambda e: sorted(int(x) for x in e))
    prefix = [t for t, e in trained.items() if e == [0, 1, 2, 3]]
    children = [t for t, e in trained.items() if e == [3]]
    assert len(prefix) == 1 and len(children) == 3, dict(trained)

    by_trial = {t: d for t, d in decisions.groupby("trial")}
    parent_named = {t for t in children
                    if by_trial.get(t) is not None
                    and by_trial[t]["reason"].str.startswith("parent stage").any()}
    profiled = {t for t in children
                if (epochs[epochs["trial"] == t]["phase"] == "profiling").any()}
    # A child either took its parent's config (and did not profile) or profiled.
    assert parent_named and profiled and parent_named.isdisjoint(profiled), (
        parent_named, profiled, decisions[["trial", "kind", "reason"]].to_dict("records"))
    assert parent_named | profiled == set(children)
    for t in parent_named:
        kinds = set(by_trial[t]["kind"])
        assert "probe" not in kinds and "matched" in kinds
    # The children that kept batch size 32 are those decided from the parent.
    assert {t for t in children if batch_at_3[t] == 32} == parent_named
    assert {t for t in children if batch_at_3[t] == 64} == profiled
    # The trial that trained the prefix re-profiles epoch 3 when its own
    # schedule doubles the batch size there, and not otherwise.
    (first,) = prefix
    phase_3 = epochs[(epochs["trial"] == first) & (epochs["epoch"].astype(int) == 3)]["phase"]
    assert (list(phase_3) == ["profiling"]) == (batch_at_3[first] == 64), list(phase_3)


def test_a_trial_whose_own_schedule_changes_the_batch_size_reprofiles_there(
    tmp_path: Path, ray_session: None
) -> None:
    settings = Settings.load({"home": str(tmp_path / "home"), "controller": "dry-run"},
                             env={})
    spec = JobSpec("lenet5-mnist", "pipetune", epochs=EPOCHS, job="stg-reprofile",
                   space=SystemSpace.parse(["cores=1,2"]), concurrent=1,
                   fixed_hparams={"max_train_samples": 256},
                   schedules=("batch_size=batch:32/factor=2/at=3",), stages=True)
    result = run_job(spec, settings, verbose=0)
    assert all(t["error"] is None for t in result.trials)
    store = open_store(settings.store)
    try:
        store.flush()
        epochs = store.query("epoch", {"job": spec.job})
    finally:
        store.close()
    phases = {int(e): p for e, p in zip(epochs["epoch"], epochs["phase"], strict=True)}
    # settled by epoch 2 (profile at 0, probes at 1 and 2), profiled again at 3
    assert phases[2] == "probing" and phases[3] == "profiling", phases
