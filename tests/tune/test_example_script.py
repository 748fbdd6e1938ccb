"""The user-style example runs as a user would run it, failing trial included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_example_with_a_crashing_trial(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "tune_digits.py"),
            "--samples",
            "1",
            "--epochs",
            "2",
            "--mode",
            "v1",
            "--crash-one",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PIPETUNE_HOME": str(tmp_path / "home"),
            "HOME": str(tmp_path),  # Tune's default ~/ray_results lands here, not in the real home
            "RAY_ADDRESS": "",
        },
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if "accuracy=" in ln]
    assert len(lines) == 2
    assert sum("error=yes" in ln for ln in lines) == 1  # the crash is reported, the job goes on
    assert "best accuracy" in r.stdout
