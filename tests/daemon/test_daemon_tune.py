"""A Ray Tune job whose trials find the node daemon and are placed by it."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_helpers import Daemons

from pipetune.config import Settings
from pipetune.tune.job import JobSpec, run_job
from pipetune.types import SystemSpace


@pytest.mark.slow
def test_v2_trials_go_through_the_daemon(
    daemons: Daemons, tmp_path: Path, ray_session: None
) -> None:
    daemon = daemons.cli()
    daemon.wait_ready()
    settings = Settings.load({"home": str(tmp_path / "home"), "socket": str(daemon.socket)}, env={})
    spec = JobSpec(
        "lenet5-mnist",
        "v2",
        samples=2,
        epochs=1,
        job="via-daemon",
        space=SystemSpace.parse("cores=1,2"),
        fixed_hparams={"max_train_samples": 128},
    )
    result = run_job(spec, settings, verbose=0)
    assert [t["error"] for t in result.trials] == [None, None]
    assert {t["how"] for t in result.trials} == {"v2"}
    # The daemon registered both trials (its log names them) and, once they
    # ended, holds none.
    log = daemon.output()
    for t in result.trials:
        assert f"trial {t['trial']} (job via-daemon, mode v2" in log, log[-3000:]
    assert daemon.client.trials() == []
