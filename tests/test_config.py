"""Settings and core types: bad values are refused with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipetune.config import Settings
from pipetune.errors import ConfigError
from pipetune.types import NodeInfo, SystemConfig, SystemSpace

REPO = Path(__file__).resolve().parents[1]


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "pipetune.toml"
    cfg.write_text('threshold = 0.5\ninterval_ms = 500\nobjective = "energy"\n')
    env = {"PIPETUNE_INTERVAL_MS": "250"}
    s = Settings.load({"objective": "edp"}, config_file=cfg, env=env)
    assert (s.threshold, s.interval_ms, s.objective) == (0.5, 250, "edp")


def test_pipetune_table_and_home_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text('[pipetune]\nhome = "%s"\n' % (tmp_path / "h"))
    s = Settings.load(config_file=cfg, env={})
    assert s.store == f"sqlite:///{tmp_path / 'h' / 'pipetune.db'}"
    assert s.model == str(tmp_path / "h" / "groundtruth.json")


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (
            {"threshold": 1.5},
            {},
            r"threshold=1.5: must be between 0.0 and 1.0 \(from --threshold\)",
        ),
        (
            {},
            {"PIPETUNE_INTERVAL_MS": "-3"},
            r"interval_ms=-3: must be > 0 \(from \$PIPETUNE_INTERVAL_MS\)",
        ),
        (
            {},
            {"PIPETUNE_INTERVAL_MS": "fast"},
            r"interval_ms='fast' \(from \$PIPETUNE_INTERVAL_MS\): must be int",
        ),
        ({"store": "postgres://x/y"}, {}, r"store='postgres://x/y': must start with sqlite://"),
        ({"objective": "speed"}, {}, r"objective='speed': must be one of runtime, energy"),
    ],
)
def test_bad_values_name_key_value_and_source(flags: dict, env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(flags, env=env)


def test_unreadable_and_unknown_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("threshold = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(config_file=bad, env={})
    unknown = tmp_path / "u.toml"
    unknown.write_text("treshold = 0.3")
    with pytest.raises(ConfigError, match="unknown setting 'treshold'"):
        Settings.load(config_file=unknown, env={})
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(config_file=tmp_path / "missing.toml", env={})


def test_system_config_and_space() -> None:
    assert str(SystemConfig(4, 8192)) == "4c/8192m/0g"
    assert SystemConfig.parse("2c/-m/1g") == SystemConfig(2, None, 1)
    with pytest.raises(ConfigError, match="cores=-1"):
        SystemConfig(-1)
    space = SystemSpace.parse(["cores=1,2", "memory=512,none"])
    assert len(space) == 4 and space.default == SystemConfig(2, None)
    node = NodeInfo(cpus=2, memory_mb=4096)
    space.validate(node)
    with pytest.raises(ConfigError, match="node has 2 CPUs, \\[4\\] do not fit"):
        SystemSpace.parse("cores=1,4").validate(node)
    with pytest.raises(ConfigError, match="node has 4096 MB"):
        SystemSpace.parse("memory_mb=8192").validate(node)
    with pytest.raises(ConfigError, match="unknown dimension 'disk'"):
        SystemSpace.parse("disk=1")
    with pytest.raises(ConfigError, match="not one of the space"):
        SystemSpace.parse(["cores=1", "default=2c"])


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipetune", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=120,
    )


def test_cli_bad_setting_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("threshold = [")
    r = _cli("--config", str(bad), "doctor")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "not valid TOML" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli("doctor", env={"PIPETUNE_THRESHOLD": "-1"})
    assert r.returncode == 2 and "threshold=-1.0" in r.stderr and "Traceback" not in r.stderr
    r = _cli("doctor", "--store", "ftp://x/y")
    assert r.returncode == 2 and "must start with sqlite://" in r.stderr


def test_cli_help_lists_commands() -> None:
    r = _cli("--help")
    assert r.returncode == 0 and "doctor" in r.stdout


def test_pipetune_home_that_is_a_file_is_one_line_exit_2(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for home, says in ((afile, "is a file, not a folder"),
                       (afile / "sub", f"{str(afile)!r} is a file")):
        for command in (["doctor"], ["report", "j"], ["groundtruth", "retrain"]):
            r = _cli(*command, env={"PIPETUNE_HOME": str(home)})
            assert r.returncode == 2, (command, r.stderr)
            assert r.stderr.count("\n") == 1 and says in r.stderr and "$PIPETUNE_HOME" in r.stderr
    assert afile.read_text() == "x"
