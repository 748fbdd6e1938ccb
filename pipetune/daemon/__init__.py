"""The node daemon (``pipetune daemon``) and its client (DESIGN §10, §13).

One daemon per node, run as root, hosts the system policy of every trial on
the node and applies their configs with its controller and node allocator;
trials talk to it over HTTP/JSON on a Unix socket.

- :class:`Daemon` — the server (``pipetune.daemon.server``).
- :class:`DaemonClient`, :class:`DaemonPolicy`, :func:`policy_for_trial` —
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
from pipetune.daemon.client import DaemonClient, DaemonPolicy, policy_for_trial
from pipetune.daemon.server import Daemon, HostedTrial

__all__ = [
    "API_VERSION",
    "ERROR_STATUS",
    "BadRequestError",
    "Daemon",
    "DaemonBusyError",
    "DaemonClient",
    "DaemonError",
    "DaemonPolicy",
    "DaemonUnavailableError",
    "HostedTrial",
    "PeerCredentials",
    "TrialConflictError",
    "UnknownTrialError",
    "http_status",
    "policy_for_trial",
]
