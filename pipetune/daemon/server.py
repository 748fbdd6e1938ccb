"""The node daemon: one per node, run as root, the node's privileged controller.

Every trial's SystemTuner runs in the trial's own process, beside its
training loop, on both paths; the daemon is where a trial's *controller*
lives when the trial may not write cgroups itself (Zeus's daemon-backed GPU
class beside its local one).  It decides nothing: it opens a trial's group,
applies the configs the trial's tuner asks for on CPUs from the one node
allocator (so concurrent trials get disjoint cpusets), reads usage, and
cleans up after trials and after a daemon that died.

- :class:`Daemon` — the state (one :class:`HostedTrial` per open trial, the
  controller, the node allocator) and the operations behind the endpoints;
  also usable without HTTP.
- :class:`HostedTrial` — one trial: its owner, processes, group and what is
  in force.
- The HTTP/JSON API over a Unix socket (``curl --unix-socket PATH
  http://localhost/v2/health``)::

      GET    /v2/health                      version, uptime, controller, capabilities
      GET    /v2/energy                      node joules of meters only root may read (RAPL)
      GET    /v2/trials                      the caller's trials (root: all)
      POST   /v2/trials                      {job, trial, pids} -> open the trial's group
      GET    /v2/trials/<id>
      POST   /v2/trials/<id>/pids            {pids}: more processes (DDP ranks ...)
      POST   /v2/trials/<id>/apply           {config, cpu_quota?} -> what is in force
      GET    /v2/trials/<id>/usage           CPU seconds, memory peak, OOM kills ...
      POST   /v2/trials/<id>/rebalance       apply its share again if others moved it
      GET    /v2/trials/<id>/capacity?cores=N  cores it would get now
      POST   /v2/trials/<id>/speedup         {curve: {cores: speed}} from its probes
      DELETE /v2/trials/<id>                 processes back, group removed

The caller's identity comes from ``SO_PEERCRED``: a caller may only register
and limit processes it owns (root may do all), checked again at every apply.

Stale state: the daemon records its trials (pids, their start times and
original CPU affinity) in ``<socket>.state.json``.  A daemon that starts
after one that died removes the stale socket, asks the controller to remove
groups left by dead owners (``cleanup_stale``: the live trials of the dead
daemon are released at once, never left confined), and gives the recorded
processes that still run their original affinity back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import http.server
import json
import logging
import math
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from pipetune import __version__
from pipetune.config import Settings
from pipetune.daemon.base import (
    API_PREFIX,
    API_VERSION,
    BadRequestError,
    DaemonBusyError,
    MethodNotAllowedError,
    PayloadTooLargeError,
    PeerCredentials,
    TrialConflictError,
    UnknownPathError,
    UnknownTrialError,
    check_owner,
    http_status,
    peer_credentials,
)
from pipetune.errors import ConfigError, ControlError, PipetuneError, PrivilegeError
from pipetune.procs import pid_alive, process_start_ticks, with_descendants
from pipetune.types import SystemConfig, TrialRef

if TYPE_CHECKING:
    from pipetune.control import Applied

log = logging.getLogger(__name__)

STATE_SCHEMA_VERSION = 1
MAX_BODY_BYTES = 1 << 20
MAX_TRIAL_ID_CHARS = 200
#: Trials one non-root user may hold open at once (a trial is a cgroup and
#: CPUs of the node: a bound, so one caller cannot exhaust them).
MAX_TRIALS_PER_CALLER = 64


class MissingController:
    """Stands in for a controller this host or install cannot provide: every
    use raises :class:`ControlError` saying why, so trials run untouched
    (phase ``degraded``) instead of the daemon refusing to start."""

    name = "unavailable"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise ControlError(f"no controller: {self.reason}")

    open_trial = add_pids = apply = usage = close_trial = _fail

    def cleanup_stale(self) -> int:
        return 0

    def describe(self) -> str:
        return f"unavailable ({self.reason})"


def _detect_control(kind: str) -> tuple[Any, Any]:
    """(controller, node allocator) for ``kind``; a :class:`MissingController`
    and no allocator when pipetune.control cannot give one."""
    try:
        from pipetune.control import AllocatingController, NodeAllocator, detect_controller
    except ImportError as e:
        reason = f"pipetune.control is not installed ({e})"
        log.warning("daemon: %s; trials will run untouched", reason)
        return MissingController(reason), None
    try:
        controller = detect_controller(kind)
    except PipetuneError as e:
        log.warning("daemon: controller %r unusable (%s); trials will run untouched", kind, e)
        return MissingController(str(e)), None
    try:
        allowed = controller.allowed_cpus()
    except Exception:  # noqa: BLE001 - fall back to every CPU the daemon may use
        allowed = sorted(os.sched_getaffinity(0))
    allocator = NodeAllocator(allowed)
    return AllocatingController(controller, allocator), allocator


def _privileged_meters() -> list[Any]:
    """RAPL when this host has it (the daemon, as root, may read it; the
    trials may not): what ``/v2/energy`` serves.  Empty otherwise."""
    try:
        from pipetune.energy import RaplMeter, rapl_available

        if rapl_available() is True:
            return [RaplMeter()]
    except Exception as e:  # noqa: BLE001 - energy is a figure, the daemon runs without
        log.info("daemon: no RAPL to serve: %s", e)
    return []


# -- request parsing ----------------------------------------------------------


def _field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *,
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


def _pids(body: Mapping[str, Any]) -> list[int]:
    pids = _field(body, "pids", list)
    if not pids:
        raise BadRequestError("field 'pids': needs at least one pid")
    for p in pids:
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise BadRequestError(f"field 'pids': {p!r} is not a positive integer")
    return list(dict.fromkeys(pids))


def _trial_id(value: Any, what: str = "field 'trial'") -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequestError(f"{what}: must be a non-empty string")
    if len(value) > MAX_TRIAL_ID_CHARS or "/" in value or "\x00" in value:
        raise BadRequestError(f"{what} {value[:40]!r}: at most {MAX_TRIAL_ID_CHARS} "
                              "characters, no '/'")
    return value


def _config(body: Mapping[str, Any]) -> SystemConfig:
    value = _field(body, "config", (str, dict))
    try:
        return SystemConfig.parse(value) if isinstance(value, str) else \
            SystemConfig.from_dict(value)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise BadRequestError(f"field 'config': {value!r} is not a system config ({e})") \
            from None


def _quota(body: Mapping[str, Any]) -> float | None:
    quota = _field(body, "cpu_quota", (int, float), required=False)
    if quota is None:
        return None
    if not math.isfinite(float(quota)) or quota <= 0:
        raise BadRequestError(f"field 'cpu_quota': {quota!r} must be a finite number > 0")
    return float(quota)


# -- trials -------------------------------------------------------------------


@dataclasses.dataclass
class HostedTrial:
    """One trial whose group the daemon holds (mutable: guarded by ``lock``).

    The daemon decides nothing for it: the trial's own SystemTuner (or fixed
    baseline) calls apply/usage, the daemon checks the caller and carries
    the call out with its privileges and its node allocator.
    """

    ref: TrialRef
    owner: PeerCredentials
    pids: dict[int, int | None]  # pid -> start ticks at registration
    affinity: dict[int, list[int]]  # pid -> CPU affinity before the daemon touched it
    handle: Any = None
    applied: Applied | None = None
    created_s: float = dataclasses.field(default_factory=time.time)
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)

    @property
    def trial_id(self) -> str:
        return self.ref.trial

    def describe(self) -> dict[str, Any]:
        applied = self.applied
        return {
            "trial": self.trial_id,
            "job": self.ref.job,
            "owner_uid": self.owner.uid,
            "pids": sorted(self.pids),
            "group": getattr(self.handle, "group", None),
            "config": None if applied is None else str(applied.config),
            "cpus": None if applied is None else list(applied.cpus),
            "applied": None if applied is None else applied.to_dict(),
            "created_s": self.created_s,
        }


class Daemon:
    """The node daemon's state and operations (see the module docstring).

    Args:
        settings: the daemon's settings (socket path, store, model file,
            controller kind).
        socket_mode: permission bits of the socket file (who may connect).
        group: group that owns the socket file (with ``socket_mode`` 0o660:
            the users who may use the daemon); ``None`` keeps the daemon's.
        controller, allocator: the controller and node allocator (default:
            ``pipetune.control.detect_controller(settings.controller)`` and a
            ``NodeAllocator`` over its CPUs); every apply takes its CPUs from
            the allocator (:class:`~pipetune.control.AllocatingController`).
        reap_interval_s: how often dead trials are dropped and the model
            file's mtime checked.
        capabilities: the health endpoint's facts (default: ``pipetune doctor``'s,
            collected once at start).
        meters: the energy meters only the daemon may read, served to trials
            (default: RAPL when this host has it and the daemon can read it).

    Thread safety: request threads and the reaper share ``_lock`` for the
    trial table and each trial's own lock for its state.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        socket_mode: int = 0o660,
        group: str | None = None,
        controller: Any = None,
        allocator: Any = None,
        reap_interval_s: float = 1.0,
        capabilities: Mapping[str, Any] | None = None,
        meters: Sequence[Any] | None = None,
    ) -> None:
        self.settings = settings
        self._meters = list(meters) if meters is not None else None
        self.socket_path = Path(settings.socket)
        self.state_path = Path(str(self.socket_path) + ".state.json")
        self.socket_mode = socket_mode
        self.group = group
        self._gid = self._group_id(group) if group else None
        self._controller = controller
        self._allocator = allocator
        self._reap_interval_s = reap_interval_s
        self._capabilities = dict(capabilities) if capabilities is not None else None
        self._trials: dict[str, HostedTrial] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._server: _UnixHTTPServer | None = None
        self._reaper: threading.Thread | None = None
        self._started_s = time.time()
        self._model_path = Path(settings.model)
        self._model_mtime_ns: int | None = None
        self.model_version = 0
        self.model_error = ""
        self.recovered: dict[str, Any] = {}
        self._closed = False

    # -- lifecycle -----------------------------------------------------------

    @staticmethod
    def _group_id(name: str) -> int:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            try:
                return grp.getgrgid(int(name)).gr_gid
            except (KeyError, ValueError):
                raise ConfigError(f"socket group {name!r}: no such group") from None

    def start(self) -> Daemon:
        """Clean up after a previous daemon, bind the socket, start the reaper.

        Raises:
            DaemonBusyError: another daemon answers on the socket.
            ConfigError: the socket path is taken by something not a socket,
                or cannot be created.
        """
        self._started_s = time.time()
        stale_socket = self._clear_stale_socket()
        if self._controller is None:
            self._controller, alloc = _detect_control(self.settings.controller)
            if self._allocator is None:
                self._allocator = alloc
        elif self._allocator is not None and not isinstance(self._controller,
                                                            MissingController):
            from pipetune.control import AllocatingController

            if not isinstance(self._controller, AllocatingController):
                self._controller = AllocatingController(self._controller, self._allocator)
        self.recovered = self._recover(stale_socket)
        if self._meters is None:
            self._meters = _privileged_meters()
        self._check_model()
        if self._capabilities is None:
            self._capabilities = self._collect_capabilities()
        self._save_state()
        self._bind()
        self._reaper = threading.Thread(target=self._reap_loop, name="pipetune-daemon-reaper",
                                        daemon=True)
        self._reaper.start()
        log.info("daemon %s (api v%d) listening on %s (mode %o%s), controller %s, pid %d",
                 __version__, API_VERSION, self.socket_path, self.socket_mode,
                 f", group {self.group}" if self.group else "", self.controller_name,
                 os.getpid())
        return self

    @property
    def controller_name(self) -> str:
        c = self._controller
        if c is None:
            return "none"
        try:
            return str(c.describe())
        except Exception:  # noqa: BLE001
            return str(getattr(c, "name", type(c).__name__))

    def _collect_capabilities(self) -> dict[str, Any]:
        try:
            from pipetune.cli.doctor import collect

            return collect(self.settings)
        except Exception as e:  # noqa: BLE001 - health still answers without them
            log.warning("daemon: capabilities unknown: %s", e)
            return {"error": f"{type(e).__name__}: {e}"}

    def _clear_stale_socket(self) -> bool:
        """Remove a socket file nobody answers on; refuse when someone does."""
        path = self.socket_path
        if not path.exists() and not path.is_symlink():
            return False
        if not path.is_socket():
            raise ConfigError(f"socket path {path} exists and is not a socket: "
                              "refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("daemon: removing stale socket %s (nobody answers on it)", path)
            path.unlink(missing_ok=True)
            return True
        except OSError as e:
            raise DaemonBusyError(f"socket {path}: cannot tell whether a daemon answers "
                                  f"({e}); remove it if none runs") from e
        finally:
            probe.close()
        owner = ""
        with contextlib.suppress(Exception):
            from pipetune.daemon.client import DaemonClient

            health = DaemonClient(path, timeout_s=2.0).health()
            owner = f" (pid {health.get('pid')}, version {health.get('version')})"
        raise DaemonBusyError(f"another daemon answers on {path}{owner}: stop it first, "
                              "or give this one another --socket")

    def _recover(self, stale_socket: bool) -> dict[str, Any]:
        """Undo what a dead previous daemon left: its cgroups and CPU masks."""
        out: dict[str, Any] = {"stale_socket": stale_socket, "stale_trials": [],
                               "stale_groups": 0, "restored_pids": 0}
        try:
            out["stale_groups"] = int(self._controller.cleanup_stale())
        except Exception as e:  # noqa: BLE001 - report, keep starting
            log.warning("daemon: cleanup of stale groups failed: %s", e)
            out["stale_groups_error"] = str(e)
        state = self._read_state()
        if state is None:
            return out
        previous = state.get("daemon_pid")
        if isinstance(previous, int) and previous != os.getpid() and pid_alive(
            previous, state.get("daemon_start_ticks")
        ):
            log.warning("daemon: state file %s belongs to pid %d which still runs; "
                        "its trials are left alone", self.state_path, previous)
            return out
        for trial_id, trial in (state.get("trials") or {}).items():
            out["stale_trials"].append(trial_id)
            for pid_text, info in (trial.get("pids") or {}).items():
                pid = int(pid_text)
                if not pid_alive(pid, info.get("start_ticks")):
                    continue
                original = info.get("affinity")
                if original and self._restore_affinity(pid, original):
                    out["restored_pids"] += 1
        if out["stale_trials"]:
            log.info("daemon: previous daemon (pid %s) left trial(s) %s; %d process(es) "
                     "given their CPUs back, %d stale group(s) removed", previous,
                     ", ".join(out["stale_trials"]), out["restored_pids"], out["stale_groups"])
        return out

    @staticmethod
    def _restore_affinity(pid: int, cpus: Sequence[int]) -> bool:
        usable = set(cpus) & set(range(os.cpu_count() or 1))
        if not usable:
            return False
        done = False
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            tids = [pid]
        for tid in tids:
            try:
                os.sched_setaffinity(tid, usable)
                done = True
            except OSError as e:
                log.debug("daemon: affinity of %d not restored: %s", tid, e)
        return done

    def _read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("daemon: unreadable state file %s (%s): ignored", self.state_path, e)
            return None
        if not isinstance(data, dict) or data.get("schema_version") != STATE_SCHEMA_VERSION:
            log.warning("daemon: state file %s has an unknown schema: ignored", self.state_path)
            return None
        return data

    def _save_state(self) -> None:
        with self._lock:
            trials = {
                t.trial_id: {
                    "job": t.ref.job,
                    "owner_uid": t.owner.uid,
                    "pids": {str(p): {"start_ticks": s, "affinity": t.affinity.get(p)}
                             for p, s in t.pids.items()},
                }
                for t in self._trials.values()
            }
        data = {
            "schema_version": STATE_SCHEMA_VERSION,
            "daemon_pid": os.getpid(),
            "daemon_start_ticks": process_start_ticks(os.getpid()),
            "socket": str(self.socket_path),
            "trials": trials,
        }
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, self.state_path)
        except OSError as e:
            log.warning("daemon: cannot write state file %s: %s", self.state_path, e)

    def _bind(self) -> None:
        path = self.socket_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"socket folder {path.parent}: cannot create: {e}") from e
        server = _UnixHTTPServer(str(path), _Handler, bind_and_activate=False)
        server.daemon_ref = self
        # Bind under a tight umask so there is no moment where the socket is
        # more open than asked; then set the asked mode and group.
        old = os.umask(0o177)
        try:
            server.server_bind()
        except OSError as e:
            server.server_close()
            raise ConfigError(f"socket {path}: cannot bind: {e}") from e
        finally:
            os.umask(old)
        try:
            if self._gid is not None:
                os.chown(path, -1, self._gid)
            os.chmod(path, self.socket_mode)
            server.server_activate()
        except OSError as e:
            server.server_close()
            path.unlink(missing_ok=True)
            raise ConfigError(f"socket {path}: cannot set mode/group: {e}") from e
        self._server = server

    def serve_forever(self) -> None:
        """Answer requests until :meth:`stop`; then close every trial."""
        if self._server is None:
            self.start()
        assert self._server is not None  # for type checkers; start() sets it
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self.close()

    def run(self) -> None:
        """Start, stop on SIGTERM/SIGINT, serve until then, close every trial.
        Call from the main thread (signal handlers live there)."""
        self.start()

        def on_signal(signum: int, frame: Any) -> None:
            log.info("daemon: signal %d: stopping", signum)
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.serve_forever()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return (safe from any thread, and
        from a signal handler: the blocking part runs in its own thread)."""
        self._stop.set()
        server = self._server
        if server is not None:
            threading.Thread(target=server.shutdown, name="pipetune-daemon-stop",
                             daemon=True).start()

    def close(self) -> None:
        """Close every trial (limits restored, groups removed), the socket and
        the state file.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._lock:
            trials = list(self._trials.values())
        for trial in trials:
            self._close(trial, "daemon stopping")
        for meter in self._meters or []:
            with contextlib.suppress(Exception):
                meter.close()
        if self._server is not None:
            self._server.server_close()
        with contextlib.suppress(OSError):
            self.socket_path.unlink()
        with contextlib.suppress(OSError):
            self.state_path.unlink()
        log.info("daemon stopped: %d trial(s) closed", len(trials))

    # -- background ------------------------------------------------------------

    def _reap_loop(self) -> None:
        while not self._stop.wait(self._reap_interval_s):
            try:
                self.reap()
                self._check_model()
            except Exception:  # noqa: BLE001 - the reaper must outlive any one failure
                log.exception("daemon: reaper cycle failed")

    def reap(self) -> list[str]:
        """Drop trials whose processes are all gone (a trial killed before
        it could close); returns the dropped trial ids."""
        with self._lock:
            trials = list(self._trials.values())
        dropped = []
        for trial in trials:
            if not any(pid_alive(p, s) for p, s in trial.pids.items()):
                log.info("trial %s (job %s): all processes gone; closing it",
                         trial.trial_id, trial.ref.job)
                self._close(trial, "all processes gone")
                dropped.append(trial.trial_id)
        return dropped

    def _check_model(self) -> None:
        """Track the node's ground-truth model file (the trials' tuners load
        it): a new mtime is a new version, and a file they cannot read is
        said once, in the log and in health, so an operator sees it."""
        try:
            mtime = self._model_path.stat().st_mtime_ns
        except OSError:
            mtime = None
        if mtime != self._model_mtime_ns:
            error = ""
            if mtime is not None:
                try:
                    from pipetune.groundtruth import load_model

                    load_model(self._model_path)
                except Exception as e:  # noqa: BLE001 - reported, never fatal
                    error = str(e)
                    log.warning("ground-truth model %s unreadable: %s (trials probe until "
                                "it is fixed; it is never overwritten)", self._model_path, e)
            # Both at once, after the check: health never shows a new version
            # with the old verdict.
            self._model_mtime_ns, self.model_error = mtime, error
            if mtime is not None:
                self.model_version += 1
                log.info("ground-truth model %s changed: version %d",
                         self._model_path, self.model_version)
            else:
                log.info("ground-truth model %s: no file", self._model_path)

    # -- operations ------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        with self._lock:
            n = len(self._trials)
        return {
            "status": "warning" if self.model_error else "ok",
            "version": __version__,
            "api_version": API_VERSION,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self._started_s, 3),
            "socket": str(self.socket_path),
            "controller": self.controller_name,
            "controller_kind": self.controller_kind,
            "energy": [m.method for m in self._meters or []],
            "allocator": self._allocator is not None,
            "cpus_held": {t: list(c) for t, c in self._allocator.held().items()}
            if self._allocator is not None else {},
            "trials": n,
            "model": {
                "path": str(self._model_path),
                "version": self.model_version,
                "mtime_ns": self._model_mtime_ns,
                **({"error": self.model_error} if self.model_error else {}),
            },
            "model_version": self.model_version,
            "recovered": self.recovered,
            "capabilities": self._capabilities or {},
        }

    def energy(self) -> dict[str, Any]:
        """Cumulative joules of the meters a trial may not read itself
        (``GET /v2/energy``): RAPL counters are root-only on current kernels.
        A trial attributes its share itself (its CPU time / the node's)."""
        out = []
        for m in self._meters or []:
            try:
                out.append({"method": m.method, "joules": float(m.read_j()),
                            "description": m.description})
            except Exception as e:  # noqa: BLE001 - one meter failing is one figure missing
                out.append({"method": m.method, "joules": None, "error": str(e)})
        return {"meters": out, "time_s": time.time()}

    def register(self, caller: PeerCredentials, body: Mapping[str, Any]) -> dict[str, Any]:
        """Open a trial's group and move its processes in (``POST /v2/trials``).

        Raises the controller's error when it cannot (the trial's tuner then
        degrades and says why): nothing is half-done.
        """
        trial_id = _trial_id(_field(body, "trial", str))
        job = _field(body, "job", str, required=False, default="job")
        pids = _pids(body)
        _check_tree(caller, pids)
        self._check_free(trial_id, caller, pids)
        if self._controller is None:
            raise ControlError("the daemon has no controller")
        trial = HostedTrial(
            ref=TrialRef(job=job, trial=trial_id, node=self.settings.node), owner=caller,
            pids={p: process_start_ticks(p) for p in pids},
            affinity={p: _affinity(p) for p in pids},
        )
        with self._lock:
            self._check_free(trial_id, caller, pids)
            self._trials[trial_id] = trial
        with trial.lock:
            try:
                trial.handle = self._controller.open_trial(trial_id, pids)
            except Exception:
                with self._lock:
                    self._trials.pop(trial_id, None)
                raise
            answer = trial.describe()
        self._save_state()
        log.info("trial %s (job %s, uid %d, pids %s): group %s via %s", trial_id, job,
                 caller.uid, pids, answer["group"], self.controller_name)
        answer["controller"] = self.controller_kind
        return answer

    @property
    def controller_kind(self) -> str:
        """The controller's short name (``cgroup-v1``, ``affinity`` ...)."""
        return str(getattr(self._controller, "name", "none"))

    def _check_free(self, trial_id: str, caller: PeerCredentials,
                    pids: Sequence[int] = ()) -> None:
        """Refuse a trial id in use, a process already in a trial, and a
        caller at its limit of trials.  Another user's trial is named, never
        described (its job and processes are not the caller's business)."""
        with self._lock:
            other = self._trials.get(trial_id)
            if other is not None:
                if caller.root or caller.uid == other.owner.uid:
                    raise TrialConflictError(f"trial {trial_id!r} is already registered "
                                             f"(job {other.ref.job}, pids {sorted(other.pids)})")
                raise TrialConflictError(f"trial {trial_id!r} is already registered")
            self._check_pids_free(pids)
            mine = sum(1 for t in self._trials.values() if t.owner.uid == caller.uid)
        if not caller.root and mine >= MAX_TRIALS_PER_CALLER:
            raise TrialConflictError(f"uid {caller.uid} already has {mine} trials open "
                                     f"(at most {MAX_TRIALS_PER_CALLER} per user)")

    def _check_pids_free(self, pids: Sequence[int]) -> None:
        with self._lock:
            for t in self._trials.values():
                taken = sorted(set(t.pids) & set(pids))
                if taken:
                    raise TrialConflictError(f"pid(s) {taken} already belong to a trial: a "
                                             "process is in one trial at a time")

    def apply(self, caller: PeerCredentials, trial_id: str,
              body: Mapping[str, Any]) -> dict[str, Any]:
        """Put a config in force for the trial, on CPUs from the node
        allocator (``POST /v2/trials/<id>/apply``); the answer is what is in
        force (:class:`~pipetune.control.Applied`)."""
        trial = self._get(caller, trial_id)
        config = _config(body)
        quota = _quota(body)
        with trial.lock:
            if trial.handle is None:
                raise UnknownTrialError(f"trial {trial_id!r} has no open group")
            self._check_still_owned(caller, trial)
            applied = self._controller.apply(trial.handle, config, cpu_quota=quota)
            trial.applied = applied
        log.info("trial %s (job %s): %s on cpus %s via %s", trial_id, trial.ref.job, config,
                 list(applied.cpus), self.controller_name)
        return applied.to_dict()

    def rebalance(self, caller: PeerCredentials, trial_id: str) -> dict[str, Any]:
        """Apply the trial's share of the node again if other trials' starts
        or ends moved it (``POST /v2/trials/<id>/rebalance``, at the trial's
        boundaries, so its threads follow at the same moment)."""
        trial = self._get(caller, trial_id)
        with trial.lock:
            if trial.handle is None:
                raise UnknownTrialError(f"trial {trial_id!r} has no open group")
            fn = getattr(self._controller, "rebalance", None)
            if fn is not None:
                self._check_still_owned(caller, trial)  # before a limit moves, not after
            applied = fn(trial.handle) if fn is not None else None
            if applied is not None:
                trial.applied = applied
                log.info("trial %s (job %s): share moved: %s on cpus %s", trial_id,
                         trial.ref.job, applied.config, list(applied.cpus))
        return {"applied": None if applied is None else applied.to_dict()}

    def capacity(self, caller: PeerCredentials, trial_id: str,
                 query: Mapping[str, list[str]]) -> dict[str, Any]:
        """Cores the trial would get now if it asked ``?cores=N``."""
        trial = self._get(caller, trial_id)
        try:
            cores = int(query.get("cores", [""])[0])
        except ValueError:
            raise BadRequestError("query 'cores': an integer is required") from None
        if cores < 1:
            raise BadRequestError(f"query 'cores': {cores} must be >= 1")
        fn = getattr(self._controller, "capacity", None)
        with trial.lock:
            return {"cores": fn(trial.handle, cores) if fn is not None else cores}

    def speedup(self, caller: PeerCredentials, trial_id: str,
                body: Mapping[str, Any]) -> dict[str, Any]:
        """The trial's measured speed per core count (``{"curve": {"1": s, "2": s}}``),
        for the node's water-filling."""
        trial = self._get(caller, trial_id)
        raw = _field(body, "curve", dict)
        curve: dict[int, float] = {}
        for k, v in raw.items():
            try:
                c, speed = int(k), float(v)
            except (TypeError, ValueError):
                raise BadRequestError(f"field 'curve': {k!r}: {v!r} is not cores: speed") \
                    from None
            if c < 1 or not math.isfinite(speed) or speed <= 0:
                raise BadRequestError(f"field 'curve': {k!r}: {v!r} out of range")
            curve[c] = speed
        fn = getattr(self._controller, "set_speedup", None)
        with trial.lock:
            if fn is not None and trial.handle is not None:
                fn(trial.handle, curve)
        return {"trial": trial_id, "curve": {str(c): v for c, v in curve.items()}}

    def usage(self, caller: PeerCredentials, trial_id: str) -> dict[str, Any]:
        """What the trial's group used so far (``GET /v2/trials/<id>/usage``)."""
        trial = self._get(caller, trial_id)
        with trial.lock:
            if trial.handle is None:
                raise UnknownTrialError(f"trial {trial_id!r} has no open group")
            return self._controller.usage(trial.handle).to_dict()

    def _check_still_owned(self, caller: PeerCredentials, trial: HostedTrial) -> None:
        """Ownership is checked again at every limit, for every process the
        limit would act on: a PID may have been reused since registration,
        and a child may have changed user (a setuid program) since."""
        for pid, start in trial.pids.items():
            if pid_alive(pid, start):
                check_owner(caller, pid)
        if caller.root or trial.handle is None:
            return
        try:
            members = self._controller.members(trial.handle)
        except Exception:  # noqa: BLE001 - a backend that cannot list them
            members = set(with_descendants(list(trial.pids)))
        for pid in sorted(members):
            with contextlib.suppress(BadRequestError):  # gone meanwhile
                check_owner(caller, pid)

    def _release(self, trial: HostedTrial) -> None:
        if trial.handle is not None:
            try:
                self._controller.close_trial(trial.handle)
            except Exception as e:  # noqa: BLE001
                log.warning("trial %s: cleanup failed: %s", trial.trial_id, e)
            trial.handle = None
        trial.applied = None

    def _close(self, trial: HostedTrial, why: str) -> None:
        with trial.lock:
            self._release(trial)
        with self._lock:
            if self._trials.get(trial.trial_id) is trial:
                del self._trials[trial.trial_id]
        self._save_state()
        log.info("trial %s (job %s) closed: %s", trial.trial_id, trial.ref.job, why)

    def _get(self, caller: PeerCredentials, trial_id: str) -> HostedTrial:
        trial_id = _trial_id(trial_id, "trial id")
        with self._lock:
            trial = self._trials.get(trial_id)
        if trial is None:
            raise UnknownTrialError(f"trial {trial_id!r} is not registered")
        if not caller.root and caller.uid != trial.owner.uid:
            raise PrivilegeError(f"trial {trial_id!r} belongs to uid {trial.owner.uid}; "
                                 f"caller uid {caller.uid} may not control it")
        return trial

    def trial(self, caller: PeerCredentials, trial_id: str) -> dict[str, Any]:
        t = self._get(caller, trial_id)
        with t.lock:
            return t.describe()

    def list_trials(self, caller: PeerCredentials) -> list[dict[str, Any]]:
        with self._lock:
            trials = list(self._trials.values())
        out = []
        for t in trials:
            if caller.root or caller.uid == t.owner.uid:
                with t.lock:
                    out.append(t.describe())
        return out

    def add_pids(self, caller: PeerCredentials, trial_id: str,
                 body: Mapping[str, Any]) -> dict[str, Any]:
        trial = self._get(caller, trial_id)
        pids = _pids(body)
        _check_tree(caller, pids)
        self._check_pids_free([p for p in pids if p not in trial.pids])
        with trial.lock:
            new = [p for p in pids if p not in trial.pids]
            if new and trial.handle is not None:
                self._controller.add_pids(trial.handle, new)
            for p in new:
                trial.pids[p] = process_start_ticks(p)
                trial.affinity[p] = _affinity(p)
            answer = trial.describe()
        self._save_state()
        return answer

    def close_trial(self, caller: PeerCredentials, trial_id: str) -> dict[str, Any]:
        trial = self._get(caller, trial_id)
        self._close(trial, f"closed by uid {caller.uid}")
        return {"trial": trial.trial_id, "closed": True}


def _check_tree(caller: PeerCredentials, pids: Sequence[int]) -> None:
    """The caller must own every process it lists *and* every descendant of
    them: the controller moves a process with its children, and a child the
    caller started may run as someone else (a setuid program)."""
    for pid in pids:
        check_owner(caller, pid)
    if caller.root:
        return
    for pid in with_descendants(list(pids)):
        if pid in pids:
            continue
        try:
            check_owner(caller, pid)
        except BadRequestError:
            continue  # exited meanwhile
        except PrivilegeError as e:
            raise PrivilegeError(f"{e} (a descendant of the processes given): nothing was "
                                 "moved or limited") from None


def _affinity(pid: int) -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return None


# -- HTTP -------------------------------------------------------------------------


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    # Every trial of the node may end an epoch at the same moment.
    request_queue_size = 128
    daemon_ref: Daemon


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes ``/v2/...`` to the :class:`Daemon`; errors become JSON bodies
    with the status from :data:`~pipetune.daemon.base.ERROR_STATUS`."""

    server: _UnixHTTPServer
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
            actions = {"pids": daemon.add_pids, "apply": daemon.apply, "speedup": daemon.speedup}
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
