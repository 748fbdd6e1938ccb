"""The node daemon (``pipetune daemon``) and its client (DESIGN §10, §13).

One daemon per node, run as root: the node's privileged controller.  Each
trial's SystemTuner runs in the trial's process and reaches the daemon
through :class:`DaemonController` (HTTP/JSON on a Unix socket); the daemon
applies configs with its controller and node allocator, so concurrent
trials get disjoint CPUs.

- :class:`Daemon` — the server (``pipetune.daemon.server``).
- :class:`DaemonClient`, :class:`DaemonController`, :func:`daemon_controller` —
  the trial's side (``pipetune.daemon.client``).
- Errors and the error -> HTTP status table (``pipetune.daemon.base``).
"""

from __future__ import annotations

from pipetune.daemon.base import (
    API_VERSION,
    ERROR_STATUS,
    BadRequestError,
    DaemonBusyError,
    DaemonError,
    DaemonUnavailableError,
    PeerCredentials,
    TrialConflictError,
    UnknownTrialError,
    http_status,
)
from pipetune.daemon.client import (
    DaemonClient,
    DaemonController,
    DaemonLostError,
    daemon_controller,
)
from pipetune.daemon.server import Daemon, HostedTrial

__all__ = [
    "API_VERSION",
    "ERROR_STATUS",
    "BadRequestError",
    "Daemon",
    "DaemonBusyError",
    "DaemonClient",
    "DaemonError",
    "DaemonController",
    "DaemonLostError",
    "DaemonUnavailableError",
    "HostedTrial",
    "PeerCredentials",
    "TrialConflictError",
    "UnknownTrialError",
    "http_status",
    "daemon_controller",
]
