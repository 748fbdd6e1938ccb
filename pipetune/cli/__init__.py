"""The ``pipetune`` command.

Each subcommand is a module of this package that defines ``COMMAND`` (its
name), ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args, settings) -> int``.  Modules are found by name, so adding a
command touches no other file; they must import heavy things (torch, Ray)
inside ``run`` so that ``pipetune --help`` stays fast.

A :class:`~pipetune.errors.PipetuneError` ends a command with one line on
stderr and its exit code (2 for usage and configuration); a traceback means a
bug.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from pipetune import __version__
from pipetune.config import Settings
from pipetune.errors import PipetuneError

log = logging.getLogger("pipetune")


def _commands() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        name = getattr(module, "COMMAND", None)
        if name:
            found[name] = module
    return dict(sorted(found.items()))


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = argparse.ArgumentParser(
        prog="pipetune",
        description="Tune a deep-learning job's system parameters (cores, memory, GPUs) "
        "while its trials train.",
    )
    parser.add_argument("--version", action="version", version=f"pipetune {__version__}")
    parser.add_argument("--config", metavar="PATH", help="settings file (default ./pipetune.toml)")
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = _commands()
    for name, module in commands.items():
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(p)
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    flags = {
        k: getattr(args, k, None) for k in ("store", "log_level", "model", "socket", "interval_ms")
    }
    try:
        settings = Settings.load(flags, config_file=args.config)
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        return int(commands[args.command].run(args, settings) or 0)
    except PipetuneError as e:
        print(f"pipetune {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"pipetune {args.command}: interrupted", file=sys.stderr)
        return 130
