"""What the node daemon and its clients share: the API version, the errors,
the one table that maps an error to an HTTP status, and who owns a process.

- :data:`API_VERSION` — the ``/v1`` in every path; a client refuses a daemon
  that speaks another version.
- Errors: :class:`DaemonError` (root), :class:`DaemonUnavailableError` (no
  daemon answers), :class:`DaemonBusyError` (another daemon already answers on
  the socket), :class:`BadRequestError` (malformed JSON, missing or mistyped
  field), :class:`UnknownTrialError`, :class:`TrialConflictError`.
- :func:`http_status` — error -> HTTP status, from :data:`ERROR_STATUS`;
  :func:`error_from_body` — the client's inverse.
- :func:`peer_credentials` — the caller's pid/uid/gid from ``SO_PEERCRED``;
  :func:`process_uids`, :func:`check_owner` — a
  caller may only register or control processes it owns (root may do all);
  liveness and start ticks of a process are :mod:`pipetune.procs`'s.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipetune.errors import (
    ConfigError,
    ControlError,
    NotSupportedError,
    PipetuneError,
    PrivilegeError,
)

#: Version of the HTTP API (the ``/v1`` prefix).  Bump on incompatible change.
API_VERSION = 2
API_PREFIX = f"/v{API_VERSION}"


class DaemonError(PipetuneError):
    """The daemon refused or failed a request (status and type attached)."""

    def __init__(self, message: str, *, status: int = 500, type_name: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.type_name = type_name or type(self).__name__


class DaemonUnavailableError(DaemonError, ConnectionError):
    """No daemon answers on the socket (absent, refused, timed out, died)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=0, type_name="DaemonUnavailableError")


class DaemonBusyError(ConfigError):
    """Another daemon already answers on the socket: refuse to start (exit 2)."""


class BadRequestError(ConfigError):
    """A request the caller got wrong: malformed JSON, a missing or mistyped
    field, an unknown path."""


class UnknownTrialError(PipetuneError, LookupError):
    """No trial with this id is registered with the daemon."""


class TrialConflictError(PipetuneError):
    """The trial is already registered (or the request conflicts with its state)."""


class UnknownPathError(BadRequestError):
    """No endpoint has this path."""


class MethodNotAllowedError(BadRequestError):
    """The path exists but not for this HTTP method."""


class PayloadTooLargeError(BadRequestError):
    """The request body exceeds what the daemon reads."""


def _control_input_error() -> tuple[type[BaseException], ...]:
    # ControlInputError (a ControlError that is the caller's fault, e.g. more
    # cores than the node has) lives in pipetune.control; map it to 400 when
    # that module is present.
    try:
        from pipetune.control import ControlInputError
    except ImportError:
        return ()
    return (ControlInputError,)


#: The one table: the first entry the error is an instance of wins, so more
#: specific types come first (PrivilegeError is a ControlError).
ERROR_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (UnknownPathError, 404),
    (MethodNotAllowedError, 405),
    (PayloadTooLargeError, 413),
    (BadRequestError, 400),
    (PrivilegeError, 403),
    (UnknownTrialError, 404),
    (TrialConflictError, 409),
    *((t, 400) for t in _control_input_error()),
    (ConfigError, 400),
    # A knob this node lacks (no NVML for GPU power limits): not the caller's
    # fault, and not a failure of the daemon either.
    (NotSupportedError, 501),
    (ControlError, 500),
    (PipetuneError, 500),
)


def http_status(error: BaseException) -> int:
    """HTTP status of ``error`` per :data:`ERROR_STATUS` (500 for anything else)."""
    for error_type, status in ERROR_STATUS:
        if isinstance(error, error_type):
            return status
    return 500


#: Error types the client raises again by name, so callers catch what they
#: know (a refused PID is a ``PrivilegeError`` on both sides of the socket).
_CLIENT_TYPES: dict[str, type[PipetuneError]] = {
    "BadRequestError": BadRequestError,
    "UnknownPathError": UnknownPathError,
    "MethodNotAllowedError": MethodNotAllowedError,
    "PayloadTooLargeError": PayloadTooLargeError,
    "PrivilegeError": PrivilegeError,
    "UnknownTrialError": UnknownTrialError,
    "TrialConflictError": TrialConflictError,
    "ConfigError": ConfigError,
    "UsageError": ConfigError,
    "ControlInputError": next(iter(_control_input_error()), ConfigError),  # type: ignore[dict-item]
    "ControlError": ControlError,
    "NotSupportedError": NotSupportedError,
}


def error_from_body(status: int, body: Mapping[str, Any] | None) -> PipetuneError:
    """The error a client raises for a non-2xx answer ``{"error", "type"}``."""
    body = body or {}
    message = str(body.get("error") or f"HTTP {status}")
    type_name = str(body.get("type") or "")
    cls = _CLIENT_TYPES.get(type_name)
    if cls is None:
        return DaemonError(message, status=status, type_name=type_name)
    err = cls(message)
    err.status = status  # type: ignore[attr-defined]
    return err


@dataclass(frozen=True)
class PeerCredentials:
    """Who is on the other end of a Unix socket, as the kernel saw it at connect."""

    pid: int
    uid: int
    gid: int

    @property
    def root(self) -> bool:
        return self.uid == 0


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """``SO_PEERCRED`` of a connected Unix socket (Linux)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(pid, uid, gid)


def process_uids(pid: int, *, proc_root: Path = Path("/proc")) -> tuple[int, int, int, int] | None:
    """(real, effective, saved, filesystem) uid of ``pid``; ``None`` when gone."""
    try:
        text = (proc_root / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    for line in text.splitlines():
        if line.startswith("Uid:"):
            parts = line.split()[1:5]
            if len(parts) == 4:
                return tuple(int(p) for p in parts)  # type: ignore[return-value]
    return None


def check_owner(caller: PeerCredentials, pid: int, *, proc_root: Path = Path("/proc")) -> None:
    """Raise unless ``caller`` may control process ``pid``.

    Root may control anything.  Anyone else must own the process with every
    uid it has (real, effective, saved, filesystem): a set-uid program run by
    the caller still counts as someone else's, like ptrace's rule.

    Raises:
        BadRequestError: ``pid`` is not a positive integer or does not exist.
        PrivilegeError: the caller does not own it.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
        raise BadRequestError(f"pid {pid!r}: must be a positive integer")
    uids = process_uids(pid, proc_root=proc_root)
    if uids is None:
        raise BadRequestError(f"pid {pid}: no such process")
    if caller.root:
        return
    if any(u != caller.uid for u in uids):
        raise PrivilegeError(
            f"pid {pid} belongs to uid {uids[0]} (effective {uids[1]}); "
            f"caller uid {caller.uid} may only register its own processes"
        )
