"""Run the node daemon: one per node, as root.

It is the privileged controller of every pipetune trial on this node: each
trial's tuner (or fixed baseline) runs in the trial and asks the daemon to
apply its configs (cgroups, CPU affinity), on disjoint CPUs for concurrent
trials.  Trials find it through its Unix socket; ``curl --unix-socket SOCKET
http://localhost/v2/health`` shows what it can do.

SIGTERM or SIGINT stops it gracefully: every trial's limits are removed
before it exits.  It refuses to start (exit 2) when another daemon answers on
the socket, and cleans up what a daemon that died left behind.
"""

from __future__ import annotations

import argparse
import dataclasses

from pipetune.config import CONTROLLERS, Settings
from pipetune.errors import ConfigError

COMMAND = "daemon"
HELP = "run the node daemon that applies trials' system configs (one per node, root)"


def _mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 0660") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r}: permission bits must be 000..777")
    return mode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", metavar="PATH",
                        help="Unix socket to listen on (default /run/pipetune/daemon.sock "
                             "as root)")
    parser.add_argument("--store", metavar="URL", help="store the trials' policies write to")
    parser.add_argument("--model", metavar="PATH",
                        help="ground-truth model file (watched: a change bumps model_version "
                             "in /v2/health)")
    parser.add_argument("--group", metavar="NAME",
                        help="group owning the socket: its members may use the daemon")
    parser.add_argument("--socket-mode", metavar="OCTAL", type=_mode, default=0o660,
                        help="permission bits of the socket (default 0660; 0666 lets every "
                             "local user register their own processes)")
    parser.add_argument("--controller", choices=CONTROLLERS,
                        help="how configs are applied (default: the configured one, 'auto')")
    parser.add_argument("--reap-interval-s", metavar="S", type=float, default=1.0,
                        help="how often trials whose processes are gone are dropped "
                             "(default 1)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipetune.daemon import Daemon

    if args.reap_interval_s <= 0:
        raise ConfigError(f"--reap-interval-s {args.reap_interval_s}: must be > 0")
    if args.controller:
        settings = dataclasses.replace(settings, controller=args.controller)
    daemon = Daemon(settings, socket_mode=args.socket_mode, group=args.group,
                    reap_interval_s=args.reap_interval_s)
    daemon.run()
    return 0
