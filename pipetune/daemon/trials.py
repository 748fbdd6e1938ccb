"""The daemon's trials: the registry, who owns what, and the operations
behind the trial endpoints.

- :class:`HostedTrial` — one trial whose group the daemon holds: its owner,
  processes (with their start ticks), group and what is in force.
- :class:`TrialOps` — register, apply, rebalance, capacity, speed-up, usage,
  add processes, claim GPUs, GPU power limit, close: each checks the caller
  (``SO_PEERCRED``) owns the trial and, at every apply, still owns every
  process it limits; a GPU's power limit only for a GPU the trial claimed,
  and the limit it had before is put back when the trial closes.
- :func:`check_tree` — the caller owns the processes it lists and their
  descendants.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipetune.daemon.api import (
    body_config,
    body_field,
    body_gpus,
    body_pids,
    body_quota,
    check_trial_id,
)
from pipetune.daemon.base import (
    BadRequestError,
    PeerCredentials,
    TrialConflictError,
    UnknownTrialError,
    check_owner,
)
from pipetune.errors import ControlError, NotSupportedError, PrivilegeError
from pipetune.procs import pid_alive, process_start_ticks, with_descendants
from pipetune.types import TrialRef

if TYPE_CHECKING:
    from pipetune.control import Applied

log = logging.getLogger("pipetune.daemon.server")

#: Trials one non-root user may hold open at once (a trial is a cgroup and
#: CPUs of the node: a bound, so one caller cannot exhaust them).
MAX_TRIALS_PER_CALLER = 64

_GPU_KNOB_LOCK = threading.Lock()


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
    #: NVML indices of the GPUs the trial claimed (``POST .../gpus``): the
    #: only GPUs whose power limit it may set.
    gpus: tuple[int, ...] = ()
    #: GPU index -> power limit (W) before the trial first set it; put back
    #: when the trial closes.
    gpu_power_before_w: dict[int, float] = dataclasses.field(default_factory=dict)
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
            "gpus": list(self.gpus),
            "created_s": self.created_s,
        }


class TrialOps:
    """The operations behind the trial endpoints, for :class:`~pipetune.daemon.server.Daemon`.

    Needs from the daemon: ``settings``, ``_trials`` (trial id →
    :class:`HostedTrial`) guarded by ``_lock``, ``_controller``,
    ``controller_name`` and ``_save_state()``.  Every operation takes the
    caller's credentials first and refuses a trial the caller does not own.
    """

    settings: Any
    _trials: dict[str, HostedTrial]
    _lock: threading.RLock
    _controller: Any
    #: The node's GPU power-limit knob (a
    #: :class:`~pipetune.control.gpu.PowerLimitKnob`): given, or probed once
    #: on first use (:meth:`_gpu_knob`).
    _gpu_power: Any = None

    @property
    def controller_name(self) -> str:  # the daemon's, with the backend's details
        raise NotImplementedError

    def _save_state(self) -> None:
        raise NotImplementedError

    def register(self, caller: PeerCredentials, body: Mapping[str, Any]) -> dict[str, Any]:
        """Open a trial's group and move its processes in (``POST /v2/trials``).

        Raises the controller's error when it cannot (the trial's tuner then
        degrades and says why): nothing is half-done.
        """
        trial_id = check_trial_id(body_field(body, "trial", str))
        job = body_field(body, "job", str, required=False, default="job")
        pids = body_pids(body)
        check_tree(caller, pids)
        self._check_free(trial_id, caller, pids)
        if self._controller is None:
            raise ControlError("the daemon has no controller")
        trial = HostedTrial(
            ref=TrialRef(job=job, trial=trial_id, node=self.settings.node), owner=caller,
            pids={p: process_start_ticks(p) for p in pids},
            affinity={p: affinity_of(p) for p in pids},
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
        config = body_config(body)
        quota = body_quota(body)
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
        raw = body_field(body, "curve", dict)
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

    # -- GPUs ------------------------------------------------------------------

    def _gpu_knob(self) -> Any:
        """The node's power-limit knob, probed once (NVML when it initialises
        and sees a GPU, else a knob that says why on every use)."""
        with _GPU_KNOB_LOCK:  # not the registry's: a trial's lock may be held here
            if self._gpu_power is None:
                from pipetune.control.gpu import power_limit_knob

                self._gpu_power = power_limit_knob()
                log.info("daemon: GPU power limits via %s", self._gpu_power.name)
            return self._gpu_power

    def claim_gpus(self, caller: PeerCredentials, trial_id: str,
                   body: Mapping[str, Any]) -> dict[str, Any]:
        """Record the GPUs a trial holds (``POST /v2/trials/<id>/gpus``,
        ``{"gpus": [NVML index, ...]}``), so it may set their power limit.

        A trial learns its GPUs after it registered (they follow its first
        decision), hence a call of its own.  Two trials never hold one GPU,
        and a non-root caller may not claim a GPU that runs a process it does
        not own: a power limit throttles whoever computes on the GPU.  A
        claim replaces the trial's earlier one; a GPU it gives up gets its
        limit back.

        Raises:
            BadRequestError: not a list of distinct indices >= 0.
            ControlInputError: an index this node's NVML does not have (400).
            TrialConflictError: another trial holds one of them (409).
            PrivilegeError: one of them runs another user's process (403).
            NotSupportedError: no NVML on this node (501).
        """
        trial = self._get(caller, trial_id)
        gpus = body_gpus(body)
        knob = self._gpu_knob()
        reason = getattr(knob, "reason", None)  # a NoPowerLimit: no NVML here
        if reason is not None:
            raise _no_gpu_power(NotSupportedError(reason))
        n = knob.count()
        for i in gpus:
            if i >= n:
                from pipetune.control.base import ControlInputError

                raise ControlInputError(f"GPU index {i}: this node has {n} GPU(s)")
        if not caller.root:
            for i in gpus:
                self._check_gpu_processes(caller, knob, i)
        # Who holds which GPU is read and written under the registry lock
        # (never the trial's inside it: a trial's lock is taken first elsewhere).
        with self._lock:
            for other in self._trials.values():
                taken = sorted(set(other.gpus) & set(gpus))
                if other is not trial and taken:
                    raise TrialConflictError(f"GPU(s) {taken} already belong to a trial: a "
                                             "GPU is in one trial at a time")
            dropped = [i for i in trial.gpus if i not in gpus]
            trial.gpus = tuple(gpus)
        with trial.lock:
            self._restore_gpu_power(trial, dropped)
        self._save_state()
        log.info("trial %s (job %s): GPUs %s", trial_id, trial.ref.job, list(gpus))
        return {"trial": trial_id, "gpus": list(gpus)}

    @staticmethod
    def _check_gpu_processes(caller: PeerCredentials, knob: Any, index: int) -> None:
        """Every process computing on GPU ``index`` must be the caller's
        (NVML lists them; where it cannot, there is nothing to check against)."""
        try:
            pids = knob.processes(index)
        except (ControlError, NotSupportedError) as e:
            log.debug("GPU %d: processes not listed (%s)", index, e)
            return
        for pid in pids:
            try:
                check_owner(caller, pid)
            except BadRequestError:
                continue  # exited meanwhile
            except PrivilegeError:
                raise PrivilegeError(f"GPU {index} runs process {pid} of another user: "
                                     f"uid {caller.uid} may not claim it") from None

    def gpu_power(self, caller: PeerCredentials, trial_id: str,
                  body: Mapping[str, Any]) -> dict[str, Any]:
        """Set (``{"index": I, "watts": W}``) or read (``{"index": I}``) the
        power limit of a GPU the trial claimed (``POST /v2/trials/<id>/gpu_power``);
        answers ``{"index", "watts", "min_w", "max_w"}`` with what is in force.

        The first set remembers the limit the GPU had; :meth:`_release` puts
        it back when the trial closes (its own close, the reaper, the daemon
        stopping), so a trial that dies leaves no GPU throttled.

        Raises:
            BadRequestError: a bad body.
            PrivilegeError: a GPU the trial did not claim (403).
            ControlInputError: watts outside what the GPU accepts (400).
            NotSupportedError: no NVML on this node (501).
        """
        trial = self._get(caller, trial_id)
        index = body_field(body, "index", int)
        if index < 0:
            raise BadRequestError(f"field 'index': {index} must be >= 0")
        watts = body_field(body, "watts", (int, float), required=False)
        if watts is not None and (not math.isfinite(float(watts)) or watts <= 0):
            raise BadRequestError(f"field 'watts': {watts!r} must be a finite number > 0")
        knob = self._gpu_knob()
        with trial.lock:
            if index not in trial.gpus:
                raise PrivilegeError(
                    f"GPU {index} is not trial {trial_id!r}'s (it holds "
                    f"{list(trial.gpus) or 'none'}): claim it first (POST /v2/trials/"
                    f"{trial_id}/gpus)")
            first = watts is not None and index not in trial.gpu_power_before_w
            try:
                if first:
                    trial.gpu_power_before_w[index] = knob.get_w(index)
                if watts is not None:
                    knob.set_w(index, float(watts))
                now = knob.get_w(index)
                lo, hi = knob.constraints_w(index)
            except NotSupportedError as e:
                raise _no_gpu_power(e) from e
        if first:
            self._save_state()  # a daemon killed from now on: the next one restores it
        if watts is not None:
            log.info("trial %s (job %s): GPU %d power limit %.0f W", trial_id,
                     trial.ref.job, index, now)
        return {"index": index, "watts": now, "min_w": lo, "max_w": hi}

    def _restore_gpu_power(self, trial: HostedTrial,
                           indices: Sequence[int] | None = None) -> None:
        """Put back the power limits the trial changed (all, or ``indices``).
        Never raises: a limit that cannot be restored is logged."""
        for i in list(trial.gpu_power_before_w if indices is None else indices):
            before = trial.gpu_power_before_w.pop(i, None)
            if before is None:
                continue
            try:
                self._gpu_knob().set_w(i, before)
                log.info("trial %s: GPU %d power limit back to %.0f W", trial.trial_id, i,
                         before)
            except Exception as e:  # noqa: BLE001 - closing goes on
                log.warning("trial %s: GPU %d power limit not restored to %.0f W: %s",
                            trial.trial_id, i, before, e)
        if indices is None:
            trial.gpus = ()

    def _release(self, trial: HostedTrial) -> None:
        self._restore_gpu_power(trial)
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
        trial_id = check_trial_id(trial_id, "trial id")
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
        pids = body_pids(body)
        check_tree(caller, pids)
        self._check_pids_free([p for p in pids if p not in trial.pids])
        with trial.lock:
            new = [p for p in pids if p not in trial.pids]
            if new and trial.handle is not None:
                self._controller.add_pids(trial.handle, new)
            for p in new:
                trial.pids[p] = process_start_ticks(p)
                trial.affinity[p] = affinity_of(p)
            answer = trial.describe()
        self._save_state()
        return answer

    def close_trial(self, caller: PeerCredentials, trial_id: str) -> dict[str, Any]:
        trial = self._get(caller, trial_id)
        self._close(trial, f"closed by uid {caller.uid}")
        return {"trial": trial.trial_id, "closed": True}


def _no_gpu_power(e: NotSupportedError) -> NotSupportedError:
    return NotSupportedError(f"this node's daemon cannot set GPU power limits: {e}")


def check_tree(caller: PeerCredentials, pids: Sequence[int]) -> None:
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


def affinity_of(pid: int) -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return None
