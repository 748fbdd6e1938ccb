"""Tune trials that train with a parallel strategy: one boundary per epoch, ranks
under the trial's cgroup, threads per rank following the trial's cores."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from pipetune.config import Settings
from pipetune.errors import ConfigError, UsageError
from pipetune.parallel import ParallelConfig
from pipetune.store import open_store
from pipetune.tune.job import JobSpec, run_job
from pipetune.tune.session import TrialSession, ranks_in_trial_cgroup
from pipetune.types import SystemSpace, TrialRef

HP = {"batch_size": 64, "max_train_samples": 512, "lr": 0.05}


def _train_in(session: TrialSession, epochs: int) -> list[dict[str, Any]]:
    """``train_parallel`` inside ``session`` (started), as a wrapped trial runs it."""
    from pipetune.tune import session as session_module
    from pipetune.tune.parallel import train_parallel

    session_module.set_current(session)
    try:
        return train_parallel("lenet5-mnist", HP, epochs=epochs)
    finally:
        session_module.set_current(None)
        session.close()


def test_cli_parallel_flags_that_do_not_fit_are_refused_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipetune.cli import main

    assert main(["tune", "lenet5-mnist", "--parallel", "auto", "--chunks", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--chunks with --parallel auto" in err[0]
    assert main(["tune", "lenet5-mnist", "--workers", "2"]) == 2
    assert main(["tune", "lenet5-mnist", "--space", "parallel=none,ddp"]) == 2


def test_space_takes_parallel_and_workers_additively() -> None:
    space = SystemSpace.parse(["cores=1,2", "parallel=none,gpipe", "workers=1,2"])
    assert space.parallel == ("none", "gpipe") and space.workers == (1, 2)
    assert len(space) == 2  # the tuner's grid is unchanged: cores x memory x gpus
    assert SystemSpace().parallel == ("none",) and SystemSpace().workers == (1,)
    with pytest.raises(ConfigError, match="unknown"):
        SystemSpace(parallel=("zero",))
    with pytest.raises(ConfigError, match="workers"):
        SystemSpace(workers=(0,))


def test_a_strategy_that_does_not_fit_a_trial_fails_before_ray(tmp_path: Path) -> None:
    settings = Settings.load({"home": str(tmp_path / "home")}, env={})
    spec = JobSpec("lenet5-mnist", samples=1, epochs=1, parallel=ParallelConfig("ddp", 3),
                   fixed_hparams={"batch_size": 64})
    with pytest.raises(ConfigError, match="not divisible by workers=3"):
        run_job(spec, settings, verbose=0)
    with pytest.raises(UsageError, match="--stages"):
        JobSpec("lenet5-mnist", parallel=ParallelConfig("ddp", 2), stages=True)


class TwoThenOne:
    """A policy that holds 2 cores for epoch 0 and 1 core after (no tuner, no cgroup)."""

    phase = "fixed"
    reason = "test"
    controller_name = "dry-run"
    writes_to_store = False
    learned = False

    def __init__(self) -> None:
        from pipetune.types import SystemConfig

        self._config = SystemConfig(2)

    def bind(self, **_: Any) -> None: ...
    def start(self, pids: list[int]) -> None: ...
    def epoch_start(self, epoch: int) -> None: ...
    def rebalance(self) -> None: ...
    def wait_decision(self, timeout_s: float) -> bool: return True
    def applied_cpus(self) -> None: return None
    def reassert(self) -> None: ...
    def close(self) -> None: ...
    def threads(self) -> int: return self._config.cores

    def epoch_end(self, result: Any) -> None:
        from pipetune.types import SystemConfig

        self._config = SystemConfig(1)

    def config(self) -> Any:
        return self._config


def test_one_boundary_per_epoch_and_rank_threads_follow_at_the_next_one() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")

    seen: list[dict[str, Any]] = []
    session = TrialSession(TrialRef("job", "t-threads", "node"), TwoThenOne(),
                           report_fn=lambda out, **_: seen.append(out),
                           parallel=ParallelConfig("none")).start()
    records = _train_in(session, epochs=3)
    assert len(seen) == len(records) == 3  # one session boundary per epoch
    assert [r["epoch"] for r in seen] == [0, 1, 2]
    # 2 cores in epoch 0 -> 2 threads; the 1-core decision at its end is in force
    # in the rank from epoch 1 on (sent at the boundary, before it trained on).
    assert [r["pt_rank0_threads"] for r in seen] == [2, 1, 1]
    assert {r["pt_parallel"] for r in seen} == {"none"} and {r["pt_workers"] for r in seen} == {1}
    assert all(r["pt_rank0_rss_peak_mb"] > 0 for r in seen)
    # the heaviest rank's peak (the memory objective's figure); one rank here
    assert all(r["pt_rss_peak_per_rank_mb"] == r["pt_rank0_rss_peak_mb"] for r in seen)
    assert all(r["pt_ranks_in_trial_cgroup"] for r in seen)


def test_cgroup_check_tells_a_process_elsewhere() -> None:
    assert ranks_in_trial_cgroup([os.getpid()])
    assert not ranks_in_trial_cgroup([2 ** 22 + 7])  # no such process


@pytest.mark.slow
def test_gpipe_job_ranks_share_the_trial_cgroup_and_the_store_names_the_strategy(
    tmp_path: Path, ray_session: None
) -> None:
    settings = Settings.load({"home": str(tmp_path / "home")}, env={})
    spec = JobSpec("lenet5-mnist", samples=1, epochs=2, job="t-gpipe",
                   parallel=ParallelConfig("gpipe", workers=2, chunks=2),
                   fixed_hparams={"max_train_samples": 512, "batch_size": 64},
                   space=SystemSpace.parse(["cores=1,2"]))
    result = run_job(spec, settings, verbose=0)
    (trial,) = result.trials
    assert trial["error"] is None and trial["epochs"] == 2
    assert trial["parallel"] == "gpipe" and trial["workers"] == 2
    for h in trial["history"]:
        assert h["pt_parallel"] == "gpipe" and h["pt_workers"] == 2
        # the fixed strategy is part of every config the tuner decided
        assert h["pt_config"].endswith("/gpipe")
        # Both ranks' /proc/PID/cgroup read during the trial equal the trial process's.
        assert h["pt_ranks_in_trial_cgroup"] is True
        assert h["pt_rank0_rss_peak_mb"] > 0 and h["pt_rank1_rss_peak_mb"] > 0
        assert h["pt_rank0_energy_j"] >= 0 and h["pt_rank1_energy_j"] >= 0
        if h["pt_controller"].startswith("cgroup"):
            # ...and that cgroup is the trial's own, not the job's.
            assert h["pt_ranks_cgroup"].rstrip("/").split("/")[-1] != ""
            assert "pipetune" in h["pt_ranks_cgroup"]
    store = open_store(settings.store, spool_root=settings.spool_dir)
    epochs = store.epochs("t-gpipe")
    trials = store.query("trial", {"job": "t-gpipe"})
    store.close()
    assert len(epochs) == 2 and (epochs["metric.strategy.gpipe"] == 2).all()
    assert (epochs["metric.workers"] == 2).all()
    assert set(trials["parallel"]) == {"gpipe"}


def test_a_restart_asked_of_the_session_runs_at_the_next_boundary() -> None:
    from pipetune.policy import FixedPolicy
    from pipetune.types import SystemConfig

    seen: list[dict[str, Any]] = []
    policy = FixedPolicy(SystemConfig(2), trial_id="t-restart", controller="dry-run")
    session = TrialSession(TrialRef("job", "t-restart", "node"), policy,
                           parallel=ParallelConfig("none"))

    def report_fn(out: dict[str, Any], **_: Any) -> None:
        seen.append(out)
        if out["epoch"] == 0:  # whoever chooses strategies asks; the group follows
            session.request_parallel(ParallelConfig("ddp", 2))

    session._report_fn = report_fn
    session.start()
    records = _train_in(session, epochs=2)
    assert [(r["pt_parallel"], r["pt_workers"]) for r in seen] == [("none", 1), ("ddp", 2)]
    assert "pt_restart_s" not in seen[0] and seen[1]["pt_restart_s"] > 0
    assert [r["strategy"] for r in records] == ["none", "ddp"]
    assert session.history[1].metrics["restart_s"] > 0
    assert session.history[1].metrics["strategy.ddp"] == 2


def test_auto_keeps_the_strategies_that_fit_every_trial() -> None:
    from pipetune.tune.job import auto_strategies
    from workloads import get_workload

    cls = get_workload("lenet5-mnist")
    spec = JobSpec("lenet5-mnist", parallel=ParallelConfig("none"), parallel_auto=2)
    assert auto_strategies(cls, spec, [{"batch_size": 64}]) == ("none", "ddp", "mp", "gpipe")
    # 3 ranks do not divide a batch of 64: ddp is left out
    spec3 = JobSpec("lenet5-mnist", parallel=ParallelConfig("none"), parallel_auto=3)
    assert "ddp" not in auto_strategies(cls, spec3, [{"batch_size": 64}])


class FollowPolicy:
    """A policy whose config in force names a strategy, as the tuner's does."""

    phase = "probing"
    reason = "test"
    controller_name = "dry-run"
    writes_to_store = False

    def __init__(self) -> None:
        from pipetune.types import SystemConfig

        self.cfg = SystemConfig(2)

    def config(self) -> Any:
        return self.cfg

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: 1 if name == "threads" else None


def test_the_session_restarts_the_group_when_the_tuners_strategy_changes() -> None:
    from pipetune.types import SystemConfig

    policy = FollowPolicy()
    session = TrialSession(TrialRef("job", "t-follow", "node"), policy,  # type: ignore[arg-type]
                           parallel=ParallelConfig("none"), strategies=("none", "ddp"),
                           strategy_workers=2)
    policy.cfg = SystemConfig(2, parallel="ddp")
    session.report({"epoch": 0})
    restart = session.take_restart()
    assert restart == ParallelConfig("ddp", 2)
    session.report({"epoch": 1})  # the strategy is in force: no second restart
    assert session.take_restart() is None
    fixed = TrialSession(TrialRef("job", "t-fixed", "node"), policy,  # type: ignore[arg-type]
                         parallel=ParallelConfig("gpipe", 2, chunks=2))
    fixed.report({"epoch": 0})  # a fixed strategy is never changed by the config
    assert fixed.take_restart() is None


@pytest.mark.slow
def test_auto_job_probes_strategies_and_its_decisions_name_the_chosen_one(
    tmp_path: Path, ray_session: None
) -> None:
    # 4 epochs: the profile, two one-epoch probes (the strategy in force and
    # one other: 4 strategies do not fit), the winner.
    settings = Settings.load({"home": str(tmp_path / "home")}, env={})
    spec = JobSpec("lenet5-mnist", samples=1, epochs=4, job="t-auto",
                   parallel=ParallelConfig("none"), parallel_auto=2,
                   fixed_hparams={"max_train_samples": 512, "batch_size": 64})
    result = run_job(spec, settings, verbose=0)
    (trial,) = result.trials
    assert trial["error"] is None and trial["epochs"] == 4
    strategies = [h["pt_parallel"] for h in trial["history"]]
    assert strategies[:2] == ["none", "none"] and strategies[2] != "none"  # as probed
    assert strategies[2] in ("ddp", "mp", "gpipe")
    store = open_store(settings.store, spool_root=settings.spool_dir)
    decisions = store.query("decision", {"job": "t-auto"})
    store.close()
    settled = decisions[decisions["kind"] == "settled"]
    assert len(settled) == 1
    chosen = settled["parallel"].iloc[0]
    assert chosen in ("none", "ddp", "mp", "gpipe") and chosen == strategies[3]
    probes = decisions[decisions["kind"] == "probe"]
    assert list(probes["parallel"]) == ["none", strategies[2]]


@pytest.mark.slow
def test_hyperband_job_with_a_strategy_keeps_it_and_resumes_paused_trials(
    tmp_path: Path, ray_session: None
) -> None:
    """``pipetune tune lenet5-mnist --parallel ddp --workers 2 --scheduler
    hyperband --samples 5 --epochs 4 --set max_train_samples=256``: every
    result of every trial names the strategy and both ranks, and a trial
    HyperBand pauses comes back in a new trial process (so a new worker
    group) that resumes from its checkpoint: its epochs go on from where
    they stopped; the groups' own checkpoints go with the job (a stopped
    trial never cleans up after itself).  (``--samples 2 --epochs 2`` pauses nothing: HyperBand's
    first bracket runs every trial to ``max_t``; with 4 epochs the 3rd to
    5th trials form a bracket that stops at epoch 1 and promotes one.)
    About 2 minutes on 2 cores."""
    settings = Settings.load({"home": str(tmp_path / "home")}, env={})
    spec = JobSpec("lenet5-mnist", samples=5, epochs=4, job="t-hb", scheduler="hyperband",
                   parallel=ParallelConfig("ddp", workers=2),
                   fixed_hparams={"max_train_samples": 256})
    result = run_job(spec, settings, verbose=0)
    assert len(result.trials) == 5
    for trial in result.trials:
        assert trial["error"] is None, trial["error"]
        assert trial["parallel"] == "ddp" and trial["workers"] == 2
        history = trial["history"]
        assert history and all(h["pt_parallel"] == "ddp" and h["pt_workers"] == 2
                               for h in history)
        assert [h["epoch"] for h in history] == list(range(len(history)))
        assert all(h["pt_rank0_rss_peak_mb"] > 0 and h["pt_rank1_rss_peak_mb"] > 0
                   for h in history)
    # Tune's own log of each trial: the process that reported each epoch.
    resumed = []
    for progress in (settings.home / "ray_results" / "t-hb").glob("*/progress.csv"):
        with open(progress) as fh:
            rows = list(csv.DictReader(fh))
        for before, after in zip(rows, rows[1:], strict=False):
            if before["pid"] != after["pid"]:  # paused, then started again
                resumed.append((int(before["epoch"]), int(after["epoch"])))
    assert resumed and all(after == before + 1 for before, after in resumed), resumed
    # The stopped and paused trials' group checkpoints went with the job.
    assert not list(Path(tempfile.gettempdir()).glob("pipetune-groups-t-hb-*"))


@pytest.mark.parametrize("none_here", [True, False])
def test_a_trial_starts_in_the_strategy_its_tuner_names_and_none_trains_where_it_should(
    none_here: bool,
) -> None:
    """An auto trial whose tuner names ddp at its start (a hint, a match)
    trains ddp from its first epoch — no restart; the tuner then names none,
    which trains in the trial process itself, or (under the memory
    objective: ``none_here=False``) as one child process."""
    from pipetune.policy import FixedPolicy
    from pipetune.types import SystemConfig

    policy = FixedPolicy(SystemConfig(2, parallel="ddp"), trial_id="t-start",
                         controller="dry-run")

    def epoch_end(result: Any) -> None:
        policy._config = SystemConfig(2)  # the tuner's decision at the boundary names none

    policy.epoch_end = epoch_end  # type: ignore[method-assign]
    session = TrialSession(TrialRef("job", "t-start", "node"), policy,
                           report_fn=lambda out, **_: None,
                           parallel=ParallelConfig("none"), strategies=("none", "ddp"),
                           strategy_workers=2, none_here=none_here).start()
    records = _train_in(session, epochs=2)
    assert [r["strategy"] for r in records] == ["ddp", "none"]
    assert "restart_s" not in records[0] and records[1]["restart_s"] > 0
    here = {x["pid"] for x in records[1]["ranks"]} == {os.getpid()}
    assert here is none_here
