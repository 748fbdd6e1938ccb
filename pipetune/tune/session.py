"""The trial side of the Ray Tune integration.

- :class:`TrialSession` — lives in the trial process for one call of the
  user's training function: records the trial, marks epoch boundaries, lets
  the policy act, makes the training thread adopt the thread count *at the
  same boundary* as the cpuset/quota change, measures energy and reports the
  user's metrics plus the system facts really in force to Tune.
- :class:`GroupFacts` — what a trial's worker group (a parallel strategy,
  :mod:`pipetune.parallel.group`) tells the session at a boundary: strategy,
  ranks, each rank's pid, CPU seconds and peak memory, a restart's cost.
  The session splits the epoch's energy over the ranks by CPU seconds and
  reports ``pt_parallel``, ``pt_workers``, ``pt_rank{r}_*`` and
  ``pt_restart_s``; the ranks' threads follow ``threads_per_rank``.

Nothing here may make training fail: a system-side error puts the policy in
a degraded state, logged once, and training goes on untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipetune.policy import SystemPolicy
from pipetune.store.base import Point
from pipetune.types import Decision, DecisionKind, EpochResult, Phase, TrialRef

log = logging.getLogger(__name__)

#: Keys pipetune adds to each Tune result (prefixed so they never clash).
REPORT_KEYS = (
    "pt_config",
    "pt_phase",
    "pt_epoch_s",
    "pt_energy_j",
    "pt_energy_method",
    "pt_cores",
    "pt_threads",
    "pt_cpus",
    "pt_controller",
    "pt_reason",
    "pt_parallel",
    "pt_workers",
)

@dataclasses.dataclass(frozen=True)
class GroupFacts:
    """One epoch of a trial's worker group, as rank 0 relayed it.

    ``ranks``: per rank ``{"rank", "pid", "cpu_s", "rss_peak_mb"}``;
    ``restart_s``: seconds the restart before this epoch cost (stop to every
    new rank ready), None when the group was not restarted.
    """

    strategy: str
    workers: int
    ranks: tuple[Mapping[str, Any], ...] = ()
    restart_s: float | None = None
    chunks: int = 1


#: How long the training thread waits at a boundary for the tuner's decision
#: (milliseconds usually; up to a sample interval or two at the profile).
DECISION_WAIT_S = 5.0


_current: TrialSession | None = None


def current_session() -> TrialSession | None:
    """The session of the trial running in this process, if any."""
    return _current


def set_current(session: TrialSession | None) -> None:
    # Lives here, not in pipetune.tune: Ray pickles the wrapped trainable *by
    # value* with a copy of its module's globals, so a global set from the
    # trainable must belong to a module the trial process imports.
    global _current
    _current = session


class TrialSession:
    """One trial's pipetune session; see the module docstring.

    ``report_fn`` is ``ray.tune.report`` inside Tune; tests and plain scripts
    may pass their own.  ``record``: the trial's ``mode``, ``workload`` and
    ``hparams``, written to the store's ``trial`` measurement at start and,
    with the trial's end status, at close — so a report of a user's own
    script knows what each trial was and whether the job finished.
    """

    def __init__(
        self,
        ref: TrialRef,
        policy: SystemPolicy,
        *,
        report_fn: Callable[..., None] | None = None,
        store: Any = None,
        energy: Any = None,
        first_epoch: int = 0,
        extra: Mapping[str, Any] | None = None,
        record: Mapping[str, Any] | None = None,
        decision_wait_s: float = DECISION_WAIT_S,
        parallel: Any = None,
        gpus: Any = None,
        strategies: tuple[str, ...] = (),
        strategy_workers: int = 2,
        none_here: bool = True,
    ) -> None:
        self.ref = ref
        self.policy = policy
        self._report_fn = report_fn
        self._store = store
        self._energy = energy
        self.epoch = first_epoch
        self.history: list[EpochResult] = []
        self._t_start = time.time()
        self._threads_set: int | None = None
        self._extra = dict(extra or {})
        self._record = dict(record or {})
        self._decision_wait_s = decision_wait_s
        #: The trial's ParallelConfig (None: one process, the caller's loop).
        self.parallel = parallel
        #: The trial's GPUs (a :class:`~pipetune.tune.gpus.TrialGpus`), if any.
        self.gpus = gpus
        self._restart: Any = None
        #: The strategies the tuner chooses among (``--parallel auto``; empty:
        #: the strategy is fixed) and the ranks each but ``none`` trains with.
        self.strategies = tuple(strategies) if parallel is not None else ()
        self.strategy_workers = int(strategy_workers)
        #: Whether ``none`` trains in the trial process rather than as a group
        #: of one child process (False under the memory objective: a rank's
        #: peak RSS is comparable with another rank's, not with the trial
        #: process's, which holds Ray's worker too).
        self.none_here = bool(none_here)
        strategy = getattr(parallel, "strategy", "none")
        self._strategy = str(strategy)
        workers = int(getattr(parallel, "workers", 1))
        self._extra.setdefault("pt_parallel", strategy)
        self._extra.setdefault("pt_workers", workers)
        if parallel is not None:
            self._record.setdefault("parallel", str(strategy))
            self._record.setdefault("workers", workers)

    def start(self) -> TrialSession:
        self.policy.bind(store=self._store)
        self.policy.start([os.getpid()])
        self.policy.wait_decision(self._decision_wait_s)
        self._write_trial("running")
        if self._store is not None and not self.policy.writes_to_store:
            degraded = self.policy.phase is Phase.DEGRADED
            kind = DecisionKind.DEGRADED if degraded else DecisionKind.FIXED
            decision = Decision(kind, self.policy.config(), self.policy.reason, self.epoch)
            self._store.write_decision(self.ref, decision)
        self._sync_threads()
        self.policy.epoch_start(self.epoch)
        self._t_start = time.time()
        if self._energy is not None:
            self._energy_interval()  # reset the trial's energy counter to now
        return self

    def _write_trial(self, status: str, error: str | None = None) -> None:
        if self._store is None or not self._record:
            return
        tags = {"job": self.ref.job, "trial": self.ref.trial, "node": self.ref.node,
                "mode": str(self._record.get("mode", "")),
                "workload": str(self._record.get("workload", ""))}
        fields: dict[str, Any] = {"status": status}
        for key in ("parallel", "workers", "chunks"):
            if key in self._record:
                fields[key] = self._record[key]
        if status == "running":
            # Who enforces this trial's configs (cgroup-v1, affinity when
            # cgroups are not writable, daemon:..., dry-run), for the report.
            fields["controller"] = self.policy.controller_name
            if self._record.get("degraded"):
                fields["degraded"] = str(self._record["degraded"])[:500]
            for k, v in (self._record.get("hparams") or {}).items():
                if isinstance(v, (bool, int, float, str)):
                    fields["hp." + str(k)] = v
        if error:
            fields["error"] = error[:500]
        try:
            self._store.write(Point("trial", tags, fields, int(time.time() * 1e9)))
        except Exception as e:  # noqa: BLE001 - a record missing is no reason to fail
            log.warning("trial %s: trial record not written: %s", self.ref.trial, e)

    def _energy_interval(self) -> tuple[float | None, str | None]:
        try:
            joules, method = self._energy.interval()
            return float(joules), str(method)
        except Exception as e:  # noqa: BLE001 - a meter failing is a missing figure
            log.debug("trial %s: energy unavailable: %s", self.ref.trial, e)
            return None, None

    def _sync_threads(self) -> None:
        # Never more threads than CPUs that really confine this process: a
        # lost daemon's cgroup may hold fewer than the config says.
        try:
            from pipetune.control import cores_in_force

            want = max(1, min(self.policy.threads(), cores_in_force()))
        except Exception as e:  # noqa: BLE001
            log.debug("cores in force unknown: %s", e)
            want = max(1, self.policy.threads())
        if want != self._threads_set:
            try:
                from pipetune.control import sync_threads

                self._threads_set = sync_threads(want)
            except Exception as e:  # noqa: BLE001
                log.debug("thread sync failed: %s", e)
                self._threads_set = want

    def threads_per_rank(self, workers: int) -> int:
        """Torch threads each of ``workers`` ranks gets: the trial's thread count
        in force (which follows its cores) divided among them, at least 1."""
        share = self._threads_set or max(1, self.policy.threads())
        return max(1, int(share) // max(1, int(workers)))

    def request_parallel(self, config: Any) -> None:
        """Ask the worker group to restart with ``config`` at the next epoch
        boundary (from that epoch's checkpoint).  The trial side of choosing
        the strategy as a system parameter: whoever decides calls this."""
        self._restart = config

    def _follow_strategy(self, group: GroupFacts | None) -> None:
        """Put the tuner's strategy in force: when the config it decided names
        a strategy other than the group's, ask for the group's restart at this
        boundary.  The restart's ``restart_s`` comes back with the next epoch,
        whose time (and the tuner's probe of that strategy) includes it."""
        if group is not None:
            self._strategy = group.strategy
        if self._restart is not None:
            return
        want = self._strategy_to_change_to()
        if want is not None:
            self.request_parallel(self._strategy_config(want))
            self._strategy = want

    def _strategy_to_change_to(self) -> str | None:
        """The strategy the tuner's config in force names, where the tuner
        chooses it and it is not the group's; else None."""
        if not self.strategies:
            return None
        try:
            want = str(getattr(self.policy.config(), "parallel", "none"))
        except Exception as e:  # noqa: BLE001
            log.debug("trial %s: config unknown: %s", self.ref.trial, e)
            return None
        return None if want == self._strategy or want not in self.strategies else want

    def _strategy_config(self, strategy: str) -> Any:
        from pipetune.parallel import ParallelConfig

        return ParallelConfig.of(
            strategy, workers=1 if strategy == "none" else self.strategy_workers,
            device=getattr(self.parallel, "device", "auto"))

    def starting_parallel(self) -> Any:
        """The config the trial's group starts with: where the tuner chooses
        the strategy and its config at the trial's start already names one (a
        hint, a matched cluster), that one — not ``parallel`` for a first
        epoch and a restart into the chosen strategy at its end."""
        want = self._strategy_to_change_to()
        if want is None:
            return self.parallel
        self._strategy = want
        return self._strategy_config(want)

    def take_restart(self) -> Any:
        """The restart asked for since the last boundary (once), or None."""
        config, self._restart = self._restart, None
        return config

    def _check_confinement(self, cpus: tuple[int, ...]) -> None:
        """Apply the limits again when this process runs on CPUs its last
        apply did not give it: someone lifted them (a restarted daemon
        releases the groups of the one that died).  Only CPUs *outside* the
        applied set count: an OpenMP runtime may pin the training thread to
        fewer."""
        want = self.policy.applied_cpus()
        if want and cpus and not set(cpus) <= set(want):
            try:
                self.policy.reassert()
            except Exception as e:  # noqa: BLE001
                log.warning("trial %s: limits not applied again: %s", self.ref.trial, e)

    def window(self, steps: int) -> None:
        """A step window of the current epoch ended (see pipetune.window)."""
        try:
            self.policy.window_end(self.epoch, steps)
            self.policy.rebalance()
            self.policy.wait_decision(self._decision_wait_s)
        except Exception as e:  # noqa: BLE001
            log.warning("trial %s: system policy failed at a window: %s", self.ref.trial, e)
        self._sync_threads()

    def report(
        self,
        metrics: Mapping[str, Any],
        *,
        steps: int = 0,
        checkpoint: Any = None,
        group: GroupFacts | None = None,
        on_decided: Callable[[dict[str, Any]], Any] | None = None,
    ) -> dict[str, Any]:
        """End the current epoch with ``metrics``; returns what went to Tune.

        ``group``: the epoch's worker-group facts when the trial trains with a
        parallel strategy (see :class:`GroupFacts`).  ``on_decided``: called
        with :meth:`stage_facts` once this boundary is decided and before
        Tune hears of the epoch — a stage tree records the config in force
        at the epoch's end there (Tune may stop the trial inside its report).
        """
        now = time.time()
        if isinstance(metrics.get("epoch"), int) and not isinstance(metrics["epoch"], bool):
            # The loop's own epoch index wins: after a resume from a
            # checkpoint (pause/resume under HyperBand) it does not start at 0.
            self.epoch = metrics["epoch"]
        # What was in force for this epoch, read before the policy decides
        # the next one: the config, the threads, the CPUs (read back).
        config = self.policy.config()
        phase = str(self.policy.phase)  # the value: what the store and Tune read
        threads = self._threads_set
        cpus = _cpus_in_force()
        self._check_confinement(cpus)
        if cpus and len(cpus) < config.cores:
            # The kernel runs this trial on fewer CPUs than its config says
            # (a share not picked up yet, a mask set from outside): report
            # what was in force, as the threads already follow it.
            config = dataclasses.replace(config, cores=len(cpus))
        energy_j, method = (None, None)
        if self._energy is not None:
            energy_j, method = self._energy_interval()
        numeric = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        group_out: dict[str, Any] = {}
        if group is not None:
            group_out = _group_facts(group, energy_j)
            # The epoch record names the strategy (a metric key per strategy,
            # since the store's metrics are numbers) and carries the per-rank figures.
            numeric.update({k.removeprefix("pt_"): float(v) for k, v in group_out.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
            numeric[f"strategy.{group.strategy}"] = float(group.workers)
            self._record["parallel"] = group.strategy
            self._record["workers"] = group.workers
        if self.gpus is not None:
            numeric.update(self.gpus.metrics())
        result = EpochResult(
            self.epoch, config, now - self._t_start, steps, energy_j, method, numeric
        )
        self.history.append(result)
        try:
            self.policy.epoch_end(result)
            self.policy.rebalance()
            self.policy.wait_decision(self._decision_wait_s)
        except Exception as e:  # noqa: BLE001
            log.warning("trial %s: system policy failed at epoch end: %s", self.ref.trial, e)
        self._follow_strategy(group)
        if on_decided is not None:
            on_decided(self.stage_facts())
        if self._store is not None and not self.policy.writes_to_store:
            self._store.write_epoch(self.ref, result, phase=phase, time_s=now)
        out = dict(metrics)
        out.update(
            {
                "pt_config": str(config),
                "pt_phase": phase,
                "pt_epoch_s": result.seconds,
                "pt_energy_j": energy_j,
                "pt_energy_method": method,
                "pt_cores": config.cores,
                "pt_threads": threads,
                "pt_cpus": _format_cpus(cpus),
                "pt_controller": self.policy.controller_name,
                "pt_reason": self.policy.reason,
                **self._extra,
                **group_out,
                **({k: v for k, v in self.gpus.report().items()} if self.gpus is not None
                   else {}),
            }
        )
        # The next epoch starts now, with the config just decided and the
        # threads following it (and the GPU power limit, which NVML changes live).
        self.epoch += 1
        self._sync_threads()
        if self.gpus is not None:
            self.gpus.sync()
        self.policy.epoch_start(self.epoch)
        self._t_start = time.time()
        if self._report_fn is not None:
            if checkpoint is not None:
                self._report_fn(out, checkpoint=checkpoint)
            else:
                self._report_fn(out)
        return out

    def stage_facts(self) -> dict[str, Any]:
        """The policy's state for a stage tree's record of the epoch just
        decided (:meth:`SystemPolicy.stage_facts`); never raises."""
        try:
            return dict(self.policy.stage_facts())
        except Exception as e:  # noqa: BLE001 - a record without facts is still a record
            log.debug("trial %s: no stage facts: %s", self.ref.trial, e)
            return {}

    def resume_stage(self, key: str, facts: Mapping[str, Any], *, epoch: int,
                     parent_batch_size: Any = None, batch_size: Any = None) -> None:
        """The trial resumed at ``epoch`` from parent stage ``key`` (a stage
        tree), whose trial left ``facts`` at its end: the policy decides this
        stage from them, and the threads follow before the first epoch
        trains (the decision is waited for like a boundary's)."""
        try:
            self.policy.resume_stage(key, facts, epoch=epoch,
                                     parent_batch_size=parent_batch_size,
                                     batch_size=batch_size)
            self.policy.wait_decision(self._decision_wait_s)
        except Exception as e:  # noqa: BLE001
            log.warning("trial %s: system policy failed at the stage resume: %s",
                        self.ref.trial, e)
        self._sync_threads()

    def reprofile(self, reason: str) -> None:
        """The workload changes from the next epoch on (``reason``: how, e.g.
        a schedule's batch size): the policy profiles it again.  Called
        between an epoch's decision and the next epoch's start (a stage
        session does it from ``report``'s ``on_decided``); the decision is
        waited for like a boundary's, and the threads follow at the next
        epoch's start."""
        try:
            self.policy.reprofile(reason)
            self.policy.wait_decision(self._decision_wait_s)
        except Exception as e:  # noqa: BLE001
            log.warning("trial %s: system policy failed to re-profile: %s", self.ref.trial, e)

    def close(self, error: BaseException | None = None) -> None:
        """The trial ended (``error``: the exception that ended it)."""
        try:
            if self.gpus is not None:
                self.gpus.close()
            self.policy.close()
        finally:
            if error is not None:
                self._write_trial("failed", f"{type(error).__name__}: {error}")
            else:
                self._write_trial("done")
            if self._store is not None:
                self._store.flush(10)


def _cpus_in_force() -> tuple[int, ...]:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except OSError:
        return ()


def _format_cpus(cpus: tuple[int, ...]) -> str:
    from pipetune.control import format_cpus

    return format_cpus(cpus)


def _group_facts(group: GroupFacts, energy_j: float | None) -> dict[str, Any]:
    """``pt_*`` keys of one worker-group epoch: strategy, workers, the
    heaviest rank's peak RSS, per rank the CPU seconds, peak RSS and energy
    (the epoch's joules split by CPU seconds, the same rule that splits a
    node's energy among trials), whether every rank ran in the trial's own
    cgroup, and the restart's cost."""
    out: dict[str, Any] = {"pt_parallel": group.strategy, "pt_workers": group.workers}
    if group.restart_s is not None:
        out["pt_restart_s"] = float(group.restart_s)
    cpu_total = sum(float(r.get("cpu_s", 0.0)) for r in group.ranks)
    peaks = [float(r["rss_peak_mb"]) for r in group.ranks if r.get("rss_peak_mb")]
    if peaks:
        # The heaviest rank: what a rank must fit in (the memory objective
        # compares strategies by it).
        out["pt_rss_peak_per_rank_mb"] = max(peaks)
    for r in group.ranks:
        i = int(r.get("rank", 0))
        cpu_s = float(r.get("cpu_s", 0.0))
        out[f"pt_rank{i}_cpu_s"] = cpu_s
        out[f"pt_rank{i}_rss_peak_mb"] = float(r.get("rss_peak_mb", 0.0))
        if "threads" in r:
            out[f"pt_rank{i}_threads"] = int(r["threads"])
        if energy_j is not None:
            share = cpu_s / cpu_total if cpu_total > 0 else 1.0 / max(1, len(group.ranks))
            out[f"pt_rank{i}_energy_j"] = energy_j * share
    if group.ranks:
        out["pt_ranks_in_trial_cgroup"] = ranks_in_trial_cgroup(
            [int(r["pid"]) for r in group.ranks if "pid" in r])
        out["pt_ranks_cgroup"] = _cpu_cgroup("self")
    return out


def _cpu_cgroup(pid: int | str) -> str:
    """The cgroup ``pid`` is in for CPUs: the cpuset hierarchy's path (v1), the
    unified one (v2); "" when unknown."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="ascii") as f:
            lines = [line.strip().split(":", 2) for line in f if line.strip()]
    except OSError:
        return ""
    for _, controllers, path in lines:
        if "cpuset" in controllers.split(","):
            return path
    return next((path for hid, _, path in lines if hid == "0"), "")


def ranks_in_trial_cgroup(pids: list[int]) -> bool:
    """Whether every one of ``pids`` is in exactly the cgroups this process is in
    (every hierarchy of ``/proc/PID/cgroup``), i.e. under the trial's limits."""
    def groups(pid: int | str) -> str:
        with open(f"/proc/{pid}/cgroup", encoding="ascii") as f:
            return f.read()

    try:
        mine = groups("self")
        return all(groups(pid) == mine for pid in pids)
    except OSError:
        return False
