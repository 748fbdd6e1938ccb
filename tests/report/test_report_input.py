"""``pipetune report`` on bad input: one line, exit 2, nothing created.

Small stores written point by point (no Ray), as a user's own script or a
job that died early leaves them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipetune.cli import main
from pipetune.store import Point, open_store
from pipetune.types import SystemConfig


def _script_store(tmp_path: Path, job: str) -> str:
    """A store holding what a user's own Tune script writes without the
    callback: trial and epoch points, no ``job`` point."""
    url = f"sqlite:///{tmp_path / 'script.db'}"
    store = open_store(url, spool_root=tmp_path / "spool")
    store.write(
        Point(
            "trial",
            {"job": job, "trial": "t1", "mode": "pipetune"},
            {"status": "running", "hp.lr": 0.01},
            1_000_000_000,
        )
    )
    store.write(
        Point(
            "epoch",
            {
                "node": "n",
                "job": job,
                "trial": "t1",
                "epoch": "0",
                "phase": "profiling",
                "config": str(SystemConfig(1)),
            },
            {"duration_s": 1.5, "accuracy": 0.5},
            2_000_000_000,
        )
    )
    assert store.flush()
    store.close()
    return url


def test_unknown_job_names_the_jobs_a_script_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _script_store(tmp_path, "my-script-job")
    rc = main(["report", "no-such-job", "--store", url, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "empty store" not in err
    assert "my-script-job" in err
    assert not (tmp_path / "o").exists()


def test_out_that_cannot_be_written_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _script_store(tmp_path, "j")
    # A job with only script points still reports (PARTIAL): the fault is --out.
    for out in ("/proc/foo", str(tmp_path / "a-file")):
        (tmp_path / "a-file").write_text("in the way")
        rc = main(["report", "j", "--store", url, "--out", out])
        err = capsys.readouterr().err.strip()
        assert rc == 2, err
        assert len(err.splitlines()) == 1 and err.startswith("pipetune report: error: --out")
        assert "Traceback" not in err
    assert (tmp_path / "a-file").read_text() == "in the way"
    assert not Path("/proc/foo").exists()


def test_a_trial_is_reported_on_the_config_it_ran_not_the_one_it_asked(tmp_path: Path) -> None:
    """On a shared node a trial decides 2 cores and gets its 1-core share;
    it ends, every trial ended: a finished job, reported on what ran."""
    from pipetune.report.data import load_job
    from pipetune.types import Decision, DecisionKind, EpochResult, TrialRef

    store = open_store(f"sqlite:///{tmp_path / 's.db'}", spool_root=tmp_path / "spool")
    ref = TrialRef("shared", "t1", "n")
    tags = {"job": "shared", "trial": "t1", "mode": "pipetune", "workload": "w-1"}
    store.write(Point("trial", tags, {"status": "running"}, 1_000_000_000))
    store.write_decision(ref, Decision(DecisionKind.FALLBACK, SystemConfig(2), "shared", 0),
                         time_s=2.0)
    for e in range(2):
        store.write_epoch(ref, EpochResult(e, SystemConfig(1), 1.0, 10, None, None,
                                           {"accuracy": 0.5}), phase="settled", time_s=3.0 + e)
    store.write(Point("trial", tags, {"status": "done"}, 6_000_000_000))
    assert store.flush(10)
    job = load_job(store, "shared")
    store.close()
    assert (job.partial, job.mode, job.workload) == (False, "pipetune", "w-1")
    assert job.trials[0].config == "1c/-m/0g"
