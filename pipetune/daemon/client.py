"""The trial's side of the node daemon.

- :class:`DaemonClient` — one method per endpoint, over the Unix socket;
  raises :class:`~pipetune.daemon.base.DaemonUnavailableError` when no daemon
  answers, and the daemon's own error type otherwise (``PrivilegeError`` for
  a refused PID, ``UnknownTrialError``, ``BadRequestError`` ...).
- :class:`DaemonPolicy` — a drop-in :class:`~pipetune.policy.SystemPolicy`
  that forwards to the daemon.  It never raises into training: if the daemon
  dies mid-trial it stops asking, keeps the last config and threads, and says
  so (phase ``degraded``).
- :func:`policy_for_trial` — a :class:`DaemonPolicy` when a daemon answers
  on the socket with a compatible API, else ``None`` (the caller then runs the
  policy in-process).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipetune.config import Settings
from pipetune.daemon.base import (
    API_PREFIX,
    API_VERSION,
    DaemonError,
    DaemonUnavailableError,
    error_from_body,
)
from pipetune.policy import SystemPolicy
from pipetune.types import EpochResult, SystemConfig, SystemSpace, TrialRef

log = logging.getLogger(__name__)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        # With a timeout the socket is non-blocking inside, and a Unix-socket
        # connect to a full listen backlog fails at once with EAGAIN instead
        # of waiting: retry until the timeout, so a burst of trials ending an
        # epoch together is not mistaken for a dead daemon.
        deadline = time.monotonic() + (self.timeout or 5.0)
        pause_s = 0.002
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self._path)
                self.sock = sock
                return
            except BlockingIOError:
                sock.close()
                if time.monotonic() + pause_s > deadline:
                    raise TimeoutError(f"listen backlog of {self._path} stayed full") from None
                time.sleep(pause_s)
                pause_s = min(pause_s * 2, 0.05)
            except BaseException:
                sock.close()
                raise


class DaemonClient:
    """Talks to the daemon on ``socket_path``; one connection per request.

    ``timeout_s`` bounds every request (connect + answer), so a hung daemon
    costs a trial at most that long per call.
    """

    def __init__(self, socket_path: str | Path, *, timeout_s: float = 5.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None,
                *, timeout_s: float | None = None) -> Any:
        """One request; the decoded JSON answer.

        Raises:
            DaemonUnavailableError: no socket, refused, timed out, or the
                connection broke before an answer.
            PipetuneError: the daemon's error (type kept where known).
        """
        conn = _UnixConnection(self.socket_path, timeout_s or self.timeout_s)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, API_PREFIX + path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            status = resp.status
        except FileNotFoundError as e:
            raise DaemonUnavailableError(f"no daemon socket at {self.socket_path}") from e
        except ConnectionRefusedError as e:
            raise DaemonUnavailableError(
                f"daemon socket {self.socket_path}: connection refused (no daemon running)"
            ) from e
        except TimeoutError as e:
            raise DaemonUnavailableError(
                f"daemon at {self.socket_path}: no answer within {conn.timeout} s"
            ) from e
        except PermissionError as e:
            raise DaemonUnavailableError(
                f"daemon socket {self.socket_path}: permission denied (ask for its group)"
            ) from e
        except (OSError, http.client.HTTPException) as e:
            raise DaemonUnavailableError(
                f"daemon at {self.socket_path}: connection failed ({type(e).__name__}: {e})"
            ) from e
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw.strip() else None
        except ValueError:
            payload = {"error": raw[:200].decode(errors="replace"), "type": "DaemonError"}
        if status >= 400:
            raise error_from_body(status, payload if isinstance(payload, dict) else None)
        return payload

    # -- endpoints -------------------------------------------------------------

    def health(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        return self.request("GET", "/health", timeout_s=timeout_s)

    def trials(self) -> list[dict[str, Any]]:
        return self.request("GET", "/trials")["trials"]

    def trial(self, trial_id: str) -> dict[str, Any]:
        return self.request("GET", f"/trials/{_q(trial_id)}")

    def register(
        self,
        *,
        job: str,
        trial: str,
        pids: Sequence[int],
        mode: str = "pipetune",
        space: SystemSpace | Mapping[str, Any] | str | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Register a trial; returns ``{trial, config, threads, phase, reason, cpus}``."""
        body: dict[str, Any] = {"job": job, "trial": trial, "pids": list(pids), "mode": mode}
        if space is not None:
            body["space"] = space.to_dict() if isinstance(space, SystemSpace) else space
        if values:
            body["values"] = _jsonable(values)
        return self.request("POST", "/trials", body)

    def add_pids(self, trial_id: str, pids: Sequence[int]) -> dict[str, Any]:
        return self.request("POST", f"/trials/{_q(trial_id)}/pids", {"pids": list(pids)})

    def epoch_start(self, trial_id: str, epoch: int) -> dict[str, Any]:
        return self.request("POST", f"/trials/{_q(trial_id)}/epoch_start", {"epoch": epoch})

    def epoch_end(self, trial_id: str, result: EpochResult) -> dict[str, Any]:
        body = {
            "epoch": result.epoch,
            "config": str(result.config),
            "seconds": result.seconds,
            "steps": result.steps,
            "energy_j": result.energy_j,
            "energy_method": result.energy_method,
            "metrics": dict(result.metrics),
        }
        return self.request("POST", f"/trials/{_q(trial_id)}/epoch_end", body)

    def close(self, trial_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/trials/{_q(trial_id)}")


def _q(trial_id: str) -> str:
    return quote(trial_id, safe="")


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    # A Tune config may hold objects (search-space samplers, callables); only
    # plain values travel, which is all make_policy reads (cores, memory_mb, gpus).
    out = {}
    for k, v in values.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[str(k)] = v
    return out


class DaemonPolicy(SystemPolicy):
    """A trial's system policy hosted by the node daemon (see module docstring).

    Until the daemon answers, and after it stops answering, the config is the
    space's default (or the last config the daemon gave) and training is
    left as it is.
    """

    writes_epochs = False  # the session writes the trial's epochs to the store

    def __init__(
        self,
        client: DaemonClient,
        ref: TrialRef,
        *,
        mode: str,
        space: SystemSpace,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.ref = ref
        self.mode = mode
        self.space = space
        self.values = dict(values or {})
        self._config: SystemConfig = space.default or SystemConfig(1)
        self._threads: int | None = None
        self._registered = False
        self._dead = False
        self.phase = "starting"
        self.reason = f"daemon at {client.socket_path}"
        self.cpus: list[int] | None = None

    def _take(self, answer: Mapping[str, Any]) -> None:
        try:
            self._config = SystemConfig.parse(str(answer["config"]))
            self._threads = max(1, int(answer.get("threads") or self._config.cores))
        except (KeyError, TypeError, ValueError) as e:
            log.warning("trial %s: daemon answer not understood (%s): %r",
                        self.ref.trial, e, dict(answer))
            return
        self.phase = str(answer.get("phase") or self.phase)
        self.reason = str(answer.get("reason") or "")
        self.cpus = answer.get("cpus")

    def _degrade(self, what: str, error: BaseException) -> None:
        # Whatever went wrong, stop asking: a half-answering daemon is worse
        # for a trial than none, and the daemon's reaper closes the trial.
        self._dead = True
        if isinstance(error, DaemonUnavailableError):
            self.reason = (f"daemon lost at {what} ({error}); training continues untouched "
                           f"on {self._config}")
        else:
            self.reason = f"daemon refused {what}: {error}; training continues untouched"
        self.phase = "degraded"
        log.warning("trial %s: %s", self.ref.trial, self.reason)

    def _call(self, what: str, fn: Any, *args: Any) -> None:
        if self._dead or not self._registered:
            return
        try:
            self._take(fn(*args))
        except Exception as e:  # noqa: BLE001 - never raise into training
            self._degrade(what, e)

    def start(self, pids: list[int]) -> None:
        if self._registered or self._dead:
            return
        try:
            answer = self.client.register(
                job=self.ref.job, trial=self.ref.trial, pids=pids, mode=self.mode,
                space=self.space, values=self.values,
            )
        except Exception as e:  # noqa: BLE001
            self._degrade("start", e)
            return
        self._registered = True
        self._take(answer)

    def add_pids(self, pids: list[int]) -> None:
        """More processes of this trial (data-loader workers, DDP ranks)."""
        self._call("add_pids", self.client.add_pids, self.ref.trial, pids)

    def epoch_start(self, epoch: int) -> None:
        self._call("epoch_start", self.client.epoch_start, self.ref.trial, epoch)

    def epoch_end(self, result: EpochResult) -> None:
        self._call("epoch_end", self.client.epoch_end, self.ref.trial, result)

    def config(self) -> SystemConfig:
        return self._config

    def threads(self) -> int:
        return self._threads if self._threads is not None else self._config.cores

    def close(self) -> None:
        if self._registered and not self._dead:
            try:
                self.client.close(self.ref.trial)
            except Exception as e:  # noqa: BLE001 - the daemon's reaper closes it anyway
                log.info("trial %s: daemon close failed: %s", self.ref.trial, e)
        self._registered = False


def policy_for_trial(
    ref: TrialRef,
    *,
    mode: str,
    space: SystemSpace,
    values: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
    socket_path: str | Path | None = None,
    timeout_s: float = 5.0,
    health_timeout_s: float = 2.0,
) -> DaemonPolicy | None:
    """A :class:`DaemonPolicy` when a daemon answers on the socket, else ``None``.

    The socket is ``socket_path``, else ``settings.socket`` (``$PIPETUNE_SOCKET``
    ...).  The daemon must answer health within ``health_timeout_s`` and speak
    this client's API version; a daemon that does not is logged and ignored.
    ``timeout_s`` then bounds each later request of the trial.
    """
    if socket_path is None:
        socket_path = (settings or Settings.load()).socket
    path = Path(socket_path)
    if not path.exists():
        log.debug("no daemon socket at %s: system policy runs in-process", path)
        return None
    client = DaemonClient(path, timeout_s=timeout_s)
    try:
        health = client.health(timeout_s=health_timeout_s)
    except DaemonError as e:
        log.info("daemon at %s not usable (%s): system policy runs in-process", path, e)
        return None
    except Exception as e:  # noqa: BLE001
        log.info("daemon at %s not usable (%s): system policy runs in-process", path, e)
        return None
    if not isinstance(health, dict) or health.get("api_version") != API_VERSION:
        got = health.get("api_version") if isinstance(health, dict) else None
        log.warning("daemon at %s speaks API v%s, this client v%d: ignored", path, got,
                    API_VERSION)
        return None
    if mode not in health.get("modes", [mode]):
        log.warning("daemon at %s does not offer mode %s: ignored", path, mode)
        return None
    log.info("trial %s: system policy hosted by the daemon at %s (pid %s, controller %s)",
             ref.trial, path, health.get("pid"), health.get("controller"))
    return DaemonPolicy(client, ref, mode=mode, space=space, values=values)

