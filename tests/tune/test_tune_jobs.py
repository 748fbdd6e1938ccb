"""Real Ray Tune jobs on a bundled workload, in each mode, into a real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipetune.config import Settings
from pipetune.errors import UsageError
from pipetune.store import open_store
from pipetune.tune.job import JobSpec, run_job, sample_trials
from pipetune.types import SystemSpace

pytestmark = pytest.mark.slow

SMALL = {"max_train_samples": 256}


def _settings(tmp_path: Path) -> Settings:
    return Settings.load({"home": str(tmp_path / "home")}, env={})


def test_modes_get_the_same_hyperparameters() -> None:
    from workloads import get_workload

    cls = get_workload("lenet5-mnist")
    space = SystemSpace.parse("cores=1,2")
    a = sample_trials(cls, JobSpec("lenet5-mnist", "v1", samples=4, space=space, seed=3))
    b = sample_trials(cls, JobSpec("lenet5-mnist", "v2", samples=4, space=space, seed=3))
    c = sample_trials(cls, JobSpec("lenet5-mnist", "v2", samples=4, space=space, seed=4))
    assert a == b
    assert a != c
    assert {t["cores"] for t in a} <= {1, 2}


def test_bad_job_specs_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="mode 'v3'"):
        JobSpec("lenet5-mnist", mode="v3")
    with pytest.raises(UsageError, match="scheduler 'pbt'"):
        JobSpec("lenet5-mnist", scheduler="pbt")


def test_unknown_workload_fails_before_ray(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no-such-workload"):
        run_job(JobSpec("no-such-workload", "v1"), _settings(tmp_path))


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_baseline_job_writes_epochs_and_job_facts(
    mode: str, tmp_path: Path, ray_session: None
) -> None:
    settings = _settings(tmp_path)
    space = SystemSpace.parse(["cores=1,2"])
    spec = JobSpec(
        "lenet5-mnist",
        mode,
        samples=2,
        epochs=2,
        space=space,
        job=f"t-{mode}",
        fixed_hparams=SMALL,
        scheduler="fifo",
    )
    result = run_job(spec, settings, verbose=0)
    assert len(result.trials) == 2
    assert all(t["error"] is None for t in result.trials)
    assert all(t["epochs"] == 2 for t in result.trials)
    store = open_store(settings.store, spool_root=settings.spool_dir)
    epochs = store.epochs(f"t-{mode}")
    jobs = store.query("job", {"job": f"t-{mode}"})
    power = store.power(settings.node)
    store.close()
    assert len(epochs) == 4
    # node power at 1 Hz while the job ran, labelled with its method
    assert len(power) >= 2 and set(power["source"]) == {"estimated"}
    assert set(epochs["energy_method"]) == {"estimated"} and (epochs["energy_j"] >= 0).all()
    assert set(epochs["trial"]) == {t["trial"] for t in result.trials}
    assert (epochs["seconds"] > 0).all()
    assert "metric.accuracy" in epochs.columns
    if mode == "v1":
        # every trial on the same default config: the space's largest
        assert set(epochs["config"]) == {"2c/-m/0g"}
    else:
        sampled = {
            str(t["cores"]) + "c/-m/0g"
            for t in sample_trials(__import__("workloads").get_workload("lenet5-mnist"), spec)
        }
        assert set(epochs["config"]) == sampled
    end = jobs[jobs["event"] == "end"].iloc[0]
    assert end["trials"] == 2 and end["failed"] == 0 and end["tuning_s"] > 0
    assert end["best_trial"] in {t["trial"] for t in result.trials}
    decisions = open_store(settings.store, spool_root=settings.spool_dir).decisions(f"t-{mode}")
    assert len(decisions) == 2


def test_job_into_a_real_influxdb(tmp_path: Path, ray_session: None, influx_url: str) -> None:
    settings = Settings.load({"home": str(tmp_path / "home"), "store": influx_url}, env={})
    spec = JobSpec(
        "lenet5-mnist",
        "v1",
        samples=2,
        epochs=2,
        job="t-influx",
        space=SystemSpace.parse("cores=1,2"),
        fixed_hparams=SMALL,
    )
    result = run_job(spec, settings, verbose=0)
    assert len(result.trials) == 2
    store = open_store(influx_url, spool_root=tmp_path / "spool")
    epochs, decisions = store.epochs("t-influx"), store.decisions("t-influx")
    store.close()
    assert len(epochs) == 4
    assert len(decisions) == 2  # one per trial: the baseline's fixed config (or why not)
    assert set(decisions["kind"]) <= {"fixed", "degraded"}
    assert set(decisions["config"]) == {"2c/-m/0g"}
