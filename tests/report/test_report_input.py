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
