"""The node daemon: one per node, run as root, the node's privileged controller.

Every trial's SystemTuner runs in the trial's own process, beside its
training loop, on both paths; the daemon is where a trial's *controller*
lives when the trial may not write cgroups itself (Zeus's daemon-backed GPU
class beside its local one).  It decides nothing: it opens a trial's group,
applies the configs the trial's tuner asks for on CPUs from the one node
allocator (so concurrent trials get disjoint cpusets), reads usage, and
cleans up after trials and after a daemon that died.

- :class:`Daemon` (here) — the daemon's life: start, stale state, the
  socket, the reaper, health, energy, stop; it holds one
  :class:`~pipetune.daemon.trials.HostedTrial` per open trial, the
  controller and the node allocator.  Usable without HTTP.
- :mod:`pipetune.daemon.trials` — the trial registry and ownership checks,
  and the operations behind the trial endpoints (:class:`TrialOps`).
- :mod:`pipetune.daemon.api` — HTTP: request parsing and validation, the
  routes, JSON answers.
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
      POST   /v2/trials/<id>/gpus            {gpus: [NVML index]}: the GPUs it holds
      POST   /v2/trials/<id>/gpu_power       {index, watts?}: set/read a held GPU's
                                             power limit (NVML, as root)
      DELETE /v2/trials/<id>                 processes back, group removed, GPU
                                             power limits back

The caller's identity comes from ``SO_PEERCRED``: a caller may only register
and limit processes it owns (root may do all), checked again at every apply;
it may set the power limit only of GPUs its trial claimed, and may not claim
one another trial holds or another user's process computes on.

Stale state: the daemon records its trials (pids, their start times and
original CPU affinity, the GPU power limits they changed) in
``<socket>.state.json``.  A daemon that starts after one that died removes
the stale socket, asks the controller to remove groups left by dead owners
(``cleanup_stale``: the live trials of the dead daemon are released at once,
never left confined), gives the recorded processes that still run their
original affinity back, and the GPUs their original power limits.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipetune import __version__
from pipetune.config import Settings
from pipetune.daemon.api import RequestHandler, UnixHTTPServer
from pipetune.daemon.base import (
    API_VERSION,
    DaemonBusyError,
)
from pipetune.daemon.trials import HostedTrial, TrialOps
from pipetune.errors import ConfigError, ControlError, PipetuneError
from pipetune.procs import pid_alive, process_start_ticks

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

STATE_SCHEMA_VERSION = 1


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


class Daemon(TrialOps):
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
        gpu_power: the node's GPU power-limit knob
            (:class:`~pipetune.control.gpu.PowerLimitKnob`; default: NVML,
            probed on first use, or a knob saying why there is none).

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
        gpu_power: Any = None,
    ) -> None:
        self.settings = settings
        self._gpu_power = gpu_power
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
        self._server: UnixHTTPServer | None = None
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
                               "stale_groups": 0, "restored_pids": 0, "restored_gpus": 0}
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
            for index_text, watts in (trial.get("gpu_power_before_w") or {}).items():
                try:
                    self._gpu_knob().set_w(int(index_text), float(watts))
                    out["restored_gpus"] += 1
                except Exception as e:  # noqa: BLE001 - report, keep starting
                    log.warning("daemon: GPU %s power limit of stale trial %s not restored "
                                "to %s W: %s", index_text, trial_id, watts, e)
        if out["stale_trials"]:
            log.info("daemon: previous daemon (pid %s) left trial(s) %s; %d process(es) "
                     "given their CPUs back, %d stale group(s) removed, %d GPU power "
                     "limit(s) restored", previous, ", ".join(out["stale_trials"]),
                     out["restored_pids"], out["stale_groups"], out["restored_gpus"])
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
                    "gpus": list(t.gpus),
                    "gpu_power_before_w": {str(i): w
                                           for i, w in dict(t.gpu_power_before_w).items()},
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
        server = UnixHTTPServer(str(path), RequestHandler, bind_and_activate=False)
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
        close_knob = getattr(self._gpu_power, "close", None)
        if close_knob is not None:
            with contextlib.suppress(Exception):
                close_knob()
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
