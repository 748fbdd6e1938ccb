"""docker/: the images cannot be built here (no Docker), so check what can
be: the compose file parses, what it builds exists, and every command line
it runs is accepted by the program it names."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipetune.cli import build_parser
from pipetune.config import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _command_lines(service: dict[str, Any]) -> list[list[str]]:
    """The argv(s) a service runs: entrypoint + command, with ``sh -c``
    scripts split at ``&``/``&&``/``;`` and ``exec`` dropped."""
    entry = service.get("entrypoint") or []
    command = service.get("command") or []
    entry = shlex.split(entry) if isinstance(entry, str) else list(entry)
    command = shlex.split(command) if isinstance(command, str) else list(command)
    if entry[:2] == ["/bin/sh", "-c"] or entry[:2] == ["sh", "-c"]:
        script = " ".join(command)
        return [[w for w in shlex.split(part) if w != "exec"]
                for part in re.split(r"&&|&|;", script) if part.strip()]
    return [entry + command]


def _dockerfile_entrypoint() -> list[str]:
    text = (DOCKER / "Dockerfile").read_text()
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert m, "Dockerfile has no exec-form ENTRYPOINT"
    return yaml.safe_load(m.group(1))


def test_compose_has_influx_ray_head_and_a_worker_with_the_daemon(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert {"influxdb", "ray-head", "worker"} <= set(services)
    assert services["influxdb"]["image"].startswith("influxdb:1.")
    worker = [argv[:2] for argv in _command_lines(services["worker"])]
    assert ["pipetune", "daemon"] in worker
    assert ["ray", "start"] in worker
    assert _command_lines(services["ray-head"])[0][:3] == ["ray", "start", "--head"]


def test_what_compose_builds_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        context = (DOCKER / build["context"]).resolve()
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (context / src).exists(), f"{name}: COPY source {src} missing"


def test_image_entry_point_is_the_daemon() -> None:
    assert _dockerfile_entrypoint() == ["pipetune", "daemon"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["pipetune"] == "pipetune.cli:main"
    # The image's default command is accepted by `pipetune daemon`.
    text = (DOCKER / "Dockerfile").read_text()
    cmd = yaml.safe_load(re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M).group(1))
    args = build_parser()[0].parse_args(["daemon", *cmd])
    assert args.command == "daemon" and args.socket == "/run/pipetune/daemon.sock"


def test_every_command_line_is_accepted(compose: dict[str, Any]) -> None:
    from ray.scripts.scripts import cli as ray_cli

    parser, commands = build_parser()
    seen = set()
    for name, service in compose["services"].items():
        if "image" in service and not service.get("build") and not service.get("entrypoint"):
            continue  # a stock image's own entry point (influxdb)
        for argv in _command_lines(service):
            if argv[0] == "pipetune":
                assert argv[1] in commands, f"{name}: no pipetune command {argv[1]!r}"
                args = parser.parse_args(argv[1:])  # argparse exits on a bad flag
                if getattr(args, "store", None):
                    Settings(store=args.store)  # a store URL the settings accept
            elif argv[0] == "ray":
                command = ray_cli.commands.get(argv[1])
                assert command is not None, f"{name}: no ray command {argv[1]!r}"
                command.make_context(argv[1], argv[2:])  # click raises on a bad option
            else:
                raise AssertionError(f"{name}: runs {argv[0]!r}, which this test does not know")
            seen.add(tuple(argv[:2]))
    assert {("pipetune", "daemon"), ("ray", "start")} <= seen


def test_store_urls_in_the_environment_are_valid(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        if "PIPETUNE_STORE" in env:
            settings = Settings.load(env={"PIPETUNE_STORE": env["PIPETUNE_STORE"]})
            assert settings.store.startswith("influxdb://influxdb:8086/"), name
