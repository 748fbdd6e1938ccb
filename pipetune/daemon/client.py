"""The trial's side of the node daemon.

- :class:`DaemonClient` — one method per endpoint, over the Unix socket;
  raises :class:`~pipetune.daemon.base.DaemonUnavailableError` when no daemon
  answers, and the daemon's own error type otherwise (``PrivilegeError`` for
  a refused PID, ``UnknownTrialError``, ``BadRequestError`` ...).
- :class:`DaemonController` — a drop-in :class:`~pipetune.control.Controller`
  whose calls the daemon carries out with its privileges and its node
  allocator.  The trial's SystemTuner (or fixed baseline) runs in the
  trial's process either way; only *who writes the limits* changes.
- :class:`DaemonRaplMeter` — RAPL joules the daemon reads for a trial that
  may not (root-only counters): an :class:`~pipetune.energy.EnergyMeter`.
- :func:`daemon_controller` — a :class:`DaemonController` when a daemon
  answers on the socket with a compatible API, else ``None`` (the trial then
  controls itself through the local controller).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipetune.config import Settings
from pipetune.control.base import Applied, Controller, TrialHandle, Usage
from pipetune.control.gpu import PowerLimitKnob
from pipetune.daemon.base import (
    API_PREFIX,
    API_VERSION,
    DaemonUnavailableError,
    UnknownTrialError,
    error_from_body,
)
from pipetune.energy.base import EnergyMeter, EnergyUnavailableError
from pipetune.errors import ControlError
from pipetune.types import SystemConfig

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

    def register(self, *, job: str, trial: str, pids: Sequence[int]) -> dict[str, Any]:
        """Open a trial's group; returns ``{trial, group, controller, ...}``."""
        return self.request("POST", "/trials", {"job": job, "trial": trial, "pids": list(pids)})

    def add_pids(self, trial_id: str, pids: Sequence[int]) -> dict[str, Any]:
        return self.request("POST", f"/trials/{_q(trial_id)}/pids", {"pids": list(pids)})

    def apply(self, trial_id: str, config: SystemConfig, *,
              cpu_quota: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"config": str(config)}
        if cpu_quota is not None:
            body["cpu_quota"] = cpu_quota
        return self.request("POST", f"/trials/{_q(trial_id)}/apply", body)

    def usage(self, trial_id: str) -> dict[str, Any]:
        return self.request("GET", f"/trials/{_q(trial_id)}/usage")

    def rebalance(self, trial_id: str) -> dict[str, Any]:
        return self.request("POST", f"/trials/{_q(trial_id)}/rebalance", {})

    def capacity(self, trial_id: str, cores: int) -> int:
        return int(self.request("GET", f"/trials/{_q(trial_id)}/capacity?cores={int(cores)}")
                   ["cores"])

    def speedup(self, trial_id: str, curve: Mapping[int, float]) -> dict[str, Any]:
        return self.request("POST", f"/trials/{_q(trial_id)}/speedup",
                            {"curve": {str(c): float(v) for c, v in curve.items()}})

    def close(self, trial_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/trials/{_q(trial_id)}")

    def energy(self) -> dict[str, Any]:
        return self.request("GET", "/energy")

    def claim_gpus(self, trial_id: str, gpus: Sequence[int]) -> dict[str, Any]:
        """Tell the daemon which GPUs (NVML indices) trial ``trial_id`` holds, so
        it may set their power limit (``POST /trials/ID/gpus``).

        Raises:
            NotSupportedError: a daemon without GPU power limits (404), or a
                node without NVML (501).
            TrialConflictError: another trial holds one of them.
            PrivilegeError: one of them runs another user's process.
        """
        return self._gpu_request(trial_id, "gpus", {"gpus": [int(g) for g in gpus]})

    def gpu_power(self, trial_id: str, index: int, watts: float | None = None) -> dict[str, Any]:
        """Set (``watts``) or read (None) the power limit of GPU ``index`` (NVML's
        numbering) that trial ``trial_id`` claimed (:meth:`claim_gpus`); answers
        ``{"index", "watts", "min_w", "max_w"}`` with what is in force.

        The daemon sets it through NVML as root and puts the limit the GPU had
        back when the trial closes.

        Raises:
            NotSupportedError: the daemon has no such endpoint (404 unknown path:
                a daemon of a version without GPU power limits), or its node has
                no NVML (501).
            PrivilegeError: a GPU the trial did not claim, or another user's trial.
            ControlInputError: watts outside what the GPU accepts.
        """
        body: dict[str, Any] = {"index": int(index)}
        if watts is not None:
            body["watts"] = float(watts)
        return self._gpu_request(trial_id, "gpu_power", body)

    def _gpu_request(self, trial_id: str, what: str, body: Mapping[str, Any]) -> Any:
        from pipetune.daemon.base import UnknownPathError
        from pipetune.errors import NotSupportedError

        try:
            return self.request("POST", f"/trials/{_q(trial_id)}/{what}", body)
        except UnknownPathError as e:
            raise NotSupportedError(
                "this pipetune daemon cannot set GPU power limits (no POST "
                f"/trials/ID/{what} endpoint); run the trial as root or update the daemon"
            ) from e


def _q(trial_id: str) -> str:
    return quote(trial_id, safe="")


class DaemonLostError(ControlError):
    """The node daemon stopped answering while it held a trial's group."""


class DaemonController(Controller):
    """A :class:`~pipetune.control.Controller` whose every call is carried out
    by the node daemon (module docstring): a drop-in for the local one.

    ``name`` is ``daemon:<the daemon's controller>`` (``daemon:cgroup-v1``),
    so a trial's results say who enforced its config.  A daemon that was
    restarted no longer knows the trial (it released its group at start):
    the next apply opens the trial again with the same processes.  A daemon
    that does not answer raises :class:`DaemonLostError`; the caller then
    degrades and reads back what still confines it.
    """

    def __init__(self, client: DaemonClient, *, job: str = "job",
                 remote: str = "unknown", energy: Sequence[str] = ()) -> None:
        super().__init__()
        self.client = client
        self.job = job
        self.remote = remote
        self.energy = tuple(energy)  # meter methods the daemon reads for trials
        self.name = f"daemon:{remote}"
        self._pids: dict[str, list[int]] = {}

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DaemonUnavailableError as e:
            raise DaemonLostError(f"daemon lost at {what}: {e}") from e

    def open_trial(self, trial_id: str, pids: Sequence[int]) -> TrialHandle:
        answer = self._call("open", self.client.register, job=self.job, trial=trial_id,
                            pids=list(pids))
        self._pids[trial_id] = list(pids)
        return TrialHandle(trial_id, self.name, str(answer.get("group") or trial_id))

    def add_pids(self, handle: TrialHandle, pids: Sequence[int]) -> None:
        self._call("add_pids", self.client.add_pids, handle.trial_id, list(pids))
        self._pids.setdefault(handle.trial_id, []).extend(pids)

    def apply(self, handle: TrialHandle, config: SystemConfig, *,
              cpus: Sequence[int] | None = None, cpu_quota: float | None = None) -> Applied:
        if cpus is not None:
            # The daemon's allocator owns the node's CPUs; a caller's pick
            # would bypass it.
            log.debug("trial %s: cpus %s ignored, the daemon allocates", handle.trial_id, cpus)
        try:
            answer = self._call("apply", self.client.apply, handle.trial_id, config,
                                cpu_quota=cpu_quota)
        except UnknownTrialError:
            log.warning("trial %s: the daemon no longer knows this trial (restarted?): "
                        "opening it again", handle.trial_id)
            self.open_trial(handle.trial_id, self._pids.get(handle.trial_id, []))
            answer = self._call("apply", self.client.apply, handle.trial_id, config,
                                cpu_quota=cpu_quota)
        return self._applied(handle, answer)

    def _applied(self, handle: TrialHandle, answer: Mapping[str, Any]) -> Applied:
        return Applied(
            trial_id=handle.trial_id, controller=self.name,
            config=SystemConfig.parse(str(answer["config"])),
            cpus=tuple(int(c) for c in answer.get("cpus") or ()),
            cpu_quota=answer.get("cpu_quota"), memory_mb=answer.get("memory_mb"),
            skipped=dict(answer.get("skipped") or {}),
        )

    def rebalance(self, handle: TrialHandle) -> Applied | None:
        """Apply the trial's share again if others moved it (see
        :meth:`~pipetune.control.AllocatingController.rebalance`)."""
        answer = self._call("rebalance", self.client.rebalance, handle.trial_id)
        applied = answer.get("applied")
        return self._applied(handle, applied) if applied else None

    def capacity(self, handle: TrialHandle, cores: int) -> int:
        return self._call("capacity", self.client.capacity, handle.trial_id, cores)

    def set_speedup(self, handle: TrialHandle, curve: Mapping[int, float]) -> None:
        self._call("speedup", self.client.speedup, handle.trial_id, curve)

    def usage(self, handle: TrialHandle) -> Usage:
        answer = self._call("usage", self.client.usage, handle.trial_id)
        known = {f.name for f in dataclasses.fields(Usage)}
        return Usage(**{k: v for k, v in answer.items() if k in known})

    def close_trial(self, handle: TrialHandle) -> None:
        with contextlib.suppress(UnknownTrialError):  # a restarted daemon released it
            self._call("close", self.client.close, handle.trial_id)
        self._pids.pop(handle.trial_id, None)

    def cleanup_stale(self) -> int:
        return 0  # the daemon cleans up its own groups at start and when trials die

    def describe(self) -> str:
        return f"{self.name} at {self.client.socket_path}"


class DaemonRaplMeter(EnergyMeter):
    """The node's RAPL joules, read by the daemon for a trial that may not
    read them itself (the counters are root-only): a drop-in
    :class:`~pipetune.energy.EnergyMeter`, so the trial's
    :class:`~pipetune.energy.TrialEnergy` attributes its share as usual.

    As the meter contract asks, :meth:`read_j` counts from construction,
    never goes back (a restarted daemon's count starts again at 0: the
    meter carries on from its last value) and never raises (a failed read
    keeps the last value, logged once).
    """

    method = "rapl"

    def __init__(self, client: DaemonClient) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._last_raw: float | None = None
        self._total_j = 0.0
        self._warned = False
        self.read_j()

    def _raw(self) -> float:
        answer = self.client.energy()
        for m in answer.get("meters") or []:
            if m.get("method") == "rapl" and m.get("joules") is not None:
                return float(m["joules"])
        raise EnergyUnavailableError("the daemon serves no RAPL reading")

    def read_j(self) -> float:
        with self._lock:
            try:
                raw = self._raw()
            except Exception as e:  # noqa: BLE001 - the contract: never raise, keep the last
                if not self._warned:
                    self._warned = True
                    log.warning("RAPL via the daemon unreadable (%s): energy kept at its "
                                "last value", e)
                return self._total_j
            if self._last_raw is not None:
                # A restarted daemon counts from 0 again: what it counted since is new.
                self._total_j += raw - self._last_raw if raw >= self._last_raw else raw
            self._last_raw = raw
            return self._total_j

    @property
    def description(self) -> str:
        return f"rapl via the daemon at {self.client.socket_path}"


def daemon_controller(
    settings: Settings | None = None,
    *,
    job: str = "job",
    socket_path: str | Path | None = None,
    timeout_s: float = 5.0,
    health_timeout_s: float = 2.0,
) -> DaemonController | None:
    """A :class:`DaemonController` when a daemon answers on the socket, else ``None``.

    The socket is ``socket_path``, else ``settings.socket`` (``$PIPETUNE_SOCKET``
    ...).  The daemon must answer health within ``health_timeout_s`` and speak
    this client's API version; a daemon that does not is logged and ignored.
    ``timeout_s`` then bounds each later request of the trial.
    """
    if socket_path is None:
        socket_path = (settings or Settings.load()).socket
    path = Path(socket_path)
    if not path.exists():
        log.debug("no daemon socket at %s: the trial controls itself", path)
        return None
    client = DaemonClient(path, timeout_s=timeout_s)
    try:
        health = client.health(timeout_s=health_timeout_s)
    except Exception as e:  # noqa: BLE001 - no usable daemon is a normal case
        log.info("daemon at %s not usable (%s): the trial controls itself", path, e)
        return None
    if not isinstance(health, dict) or health.get("api_version") != API_VERSION:
        got = health.get("api_version") if isinstance(health, dict) else None
        log.warning("daemon at %s speaks API v%s, this client v%d: ignored", path, got,
                    API_VERSION)
        return None
    remote = str(health.get("controller_kind") or "unknown")
    log.info("daemon at %s (pid %s) controls this trial via %s", path, health.get("pid"),
             health.get("controller"))
    return DaemonController(client, job=job, remote=remote,
                            energy=[str(m) for m in health.get("energy") or []])


class DaemonPowerLimit(PowerLimitKnob):
    """The GPU power-limit knob through the node daemon, for a trial that is not
    root (NVML refuses to set limits to others): the same interface as
    :class:`~pipetune.control.gpu.NvmlPowerLimit`, one trial's GPUs.

    The first use claims the trial's GPUs (:meth:`DaemonClient.claim_gpus`):
    the daemon sets limits only on GPUs a trial claimed, and the trial learns
    its GPUs after it registered.  Raises NotSupportedError on use when the
    daemon has no GPU power endpoint (see :meth:`DaemonClient.gpu_power`).
    """

    name = "daemon"

    def __init__(self, client: DaemonClient, trial_id: str, gpus: Sequence[int]) -> None:
        self.client = client
        self.trial_id = trial_id
        self.gpus = tuple(int(g) for g in gpus)
        self._claimed = False

    def _power(self, index: int, watts: float | None = None) -> dict[str, Any]:
        if not self._claimed:
            self.client.claim_gpus(self.trial_id, self.gpus)
            self._claimed = True
        return self.client.gpu_power(self.trial_id, index, watts)

    def count(self) -> int:
        return len(self.gpus)

    def get_w(self, index: int) -> float:
        return float(self._power(index)["watts"])

    def constraints_w(self, index: int) -> tuple[float, float]:
        answer = self._power(index)
        return float(answer["min_w"]), float(answer["max_w"])

    def set_w(self, index: int, watts: float) -> float:
        return float(self._power(index, watts)["watts"])
