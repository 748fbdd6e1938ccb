"""The daemon's HTTP layer: request parsing and validation, the routes of
API v2, JSON answers (the endpoints are listed in :mod:`pipetune.daemon.server`).

- :func:`body_field`, :func:`body_pids`, :func:`check_trial_id`,
  :func:`body_config`, :func:`body_quota`, :func:`body_gpus` — a request body's fields, checked;
  a bad one is a :class:`~pipetune.daemon.base.BadRequestError` (400).
- :class:`UnixHTTPServer`, :class:`RequestHandler` — ``http.server`` over the
  Unix socket; each request's caller comes from ``SO_PEERCRED``; errors map
  to statuses through :data:`~pipetune.daemon.base.ERROR_STATUS`.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import math
import socketserver
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from pipetune import __version__
from pipetune.daemon.base import (
    API_PREFIX,
    BadRequestError,
    MethodNotAllowedError,
    PayloadTooLargeError,
    PeerCredentials,
    UnknownPathError,
    http_status,
    peer_credentials,
)
from pipetune.errors import ConfigError, PipetuneError
from pipetune.types import SystemConfig

if TYPE_CHECKING:
    from pipetune.daemon.server import Daemon

log = logging.getLogger("pipetune.daemon.server")

MAX_BODY_BYTES = 1 << 20
MAX_TRIAL_ID_CHARS = 200


# -- request parsing ----------------------------------------------------------


def body_field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *,
           required: bool = True, default: Any = None) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise BadRequestError(f"field {name!r} is required")
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise BadRequestError(f"field {name!r}: expected {_kind_name(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise BadRequestError(f"field {name!r}: expected {_kind_name(kinds)}, got {value!r}")
    return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", bool: "true/false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def body_pids(body: Mapping[str, Any]) -> list[int]:
    pids = body_field(body, "pids", list)
    if not pids:
        raise BadRequestError("field 'pids': needs at least one pid")
    for p in pids:
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise BadRequestError(f"field 'pids': {p!r} is not a positive integer")
    return list(dict.fromkeys(pids))


def body_gpus(body: Mapping[str, Any]) -> list[int]:
    """The ``gpus`` field: distinct NVML indices >= 0 (may be empty: none held)."""
    gpus = body_field(body, "gpus", list)
    for g in gpus:
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise BadRequestError(f"field 'gpus': {g!r} is not a GPU index >= 0")
    if len(set(gpus)) != len(gpus):
        raise BadRequestError(f"field 'gpus': {gpus} repeats an index")
    return list(gpus)


def check_trial_id(value: Any, what: str = "field 'trial'") -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequestError(f"{what}: must be a non-empty string")
    if len(value) > MAX_TRIAL_ID_CHARS or "/" in value or "\x00" in value:
        raise BadRequestError(f"{what} {value[:40]!r}: at most {MAX_TRIAL_ID_CHARS} "
                              "characters, no '/'")
    return value


def body_config(body: Mapping[str, Any]) -> SystemConfig:
    value = body_field(body, "config", (str, dict))
    try:
        return SystemConfig.parse(value) if isinstance(value, str) else \
            SystemConfig.from_dict(value)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise BadRequestError(f"field 'config': {value!r} is not a system config ({e})") \
            from None


def body_quota(body: Mapping[str, Any]) -> float | None:
    quota = body_field(body, "cpu_quota", (int, float), required=False)
    if quota is None:
        return None
    if not math.isfinite(float(quota)) or quota <= 0:
        raise BadRequestError(f"field 'cpu_quota': {quota!r} must be a finite number > 0")
    return float(quota)


# -- HTTP -------------------------------------------------------------------------


class UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    # Every trial of the node may end an epoch at the same moment.
    request_queue_size = 128
    daemon_ref: Daemon


class RequestHandler(http.server.BaseHTTPRequestHandler):
    """Routes ``/v2/...`` to the :class:`Daemon`; errors become JSON bodies
    with the status from :data:`~pipetune.daemon.base.ERROR_STATUS`."""

    server: UnixHTTPServer
    server_version = f"pipetune-daemon/{__version__}"
    timeout = 30  # a client that stops sending must not hold a thread forever

    def address_string(self) -> str:  # Unix sockets have no client address
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("http: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        daemon = self.server.daemon_ref
        self._consumed = False
        try:
            caller = peer_credentials(self.request)
            status, payload = self._route(daemon, caller, method)
        except Exception as e:  # noqa: BLE001 - every error becomes one JSON answer
            status = http_status(e)
            if status >= 500 and not isinstance(e, PipetuneError):
                log.exception("daemon: %s %s failed", method, self.path)
            payload = {"error": str(e) or type(e).__name__, "type": type(e).__name__}
        if not self._consumed:
            # A body no endpoint read (an error answered first, an endpoint
            # that takes none) is drained: closing on unread data resets the
            # connection, and the client sees a broken pipe, not the answer.
            with contextlib.suppress(Exception):
                self._body()
        self._send(status, payload)

    def _body(self) -> dict[str, Any]:
        self._consumed = True
        length_text = self.headers.get("Content-Length")
        if not length_text:
            return {}
        try:
            length = int(length_text)
        except ValueError:
            raise BadRequestError(f"Content-Length {length_text!r} is not a number") from None
        if length < 0:
            raise BadRequestError(f"Content-Length {length} is negative")
        if length > MAX_BODY_BYTES:
            raise PayloadTooLargeError(f"body of {length} bytes: at most {MAX_BODY_BYTES}")
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as e:
            raise BadRequestError(f"body is not valid JSON: {e}") from None
        except RecursionError:
            raise BadRequestError("body is nested too deeply") from None
        if not isinstance(body, dict):
            raise BadRequestError(f"body must be a JSON object, got {type(body).__name__}")
        return body

    def _route(self, daemon: Daemon, caller: PeerCredentials,
               method: str) -> tuple[int, Any]:
        path = urlsplit(self.path).path.rstrip("/")
        if not path.startswith(API_PREFIX + "/") and path != API_PREFIX:
            raise UnknownPathError(f"no endpoint {path or '/'}: paths start with {API_PREFIX}/")
        parts = [unquote(p) for p in path[len(API_PREFIX) + 1 :].split("/")] if \
            path != API_PREFIX else []

        def allow(*methods: str) -> None:
            if method not in methods:
                raise MethodNotAllowedError(f"{method} {path}: allowed {', '.join(methods)}")

        if parts == ["health"]:
            allow("GET")
            return 200, daemon.health()
        if parts == ["energy"]:
            allow("GET")
            return 200, daemon.energy()
        if parts == ["trials"]:
            allow("GET", "POST")
            if method == "GET":
                return 200, {"trials": daemon.list_trials(caller)}
            return 201, daemon.register(caller, self._body())
        if len(parts) == 2 and parts[0] == "trials":
            allow("GET", "DELETE")
            if method == "GET":
                return 200, daemon.trial(caller, parts[1])
            return 200, daemon.close_trial(caller, parts[1])
        if len(parts) == 3 and parts[0] == "trials":
            if parts[2] == "usage":
                allow("GET")
                return 200, daemon.usage(caller, parts[1])
            if parts[2] == "capacity":
                allow("GET")
                return 200, daemon.capacity(caller, parts[1], parse_qs(urlsplit(self.path).query))
            if parts[2] == "rebalance":
                allow("POST")
                return 200, daemon.rebalance(caller, parts[1])
            actions = {"pids": daemon.add_pids, "apply": daemon.apply, "speedup": daemon.speedup,
                       "gpus": daemon.claim_gpus, "gpu_power": daemon.gpu_power}
            action = actions.get(parts[2])
            if action is not None:
                allow("POST")
                return 200, action(caller, parts[1], self._body())
        raise UnknownPathError(f"no endpoint {path}")

    def _send(self, status: int, payload: Any) -> None:
        data = (json.dumps(payload, default=str) + "\n").encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError as e:  # the client went away: nothing to tell it
            log.debug("daemon: answer not sent: %s", e)
