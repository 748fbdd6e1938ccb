"""Ray Tune integration: a user's function trainable becomes a pipetune trial.

Three changed lines in a user's script::

    import pipetune
    tuner = tune.Tuner(pipetune.wrap(train, system=SystemSpace.parse("cores=1,2")), ...)
    # inside train(): pipetune.report(metrics, steps=n)   instead of tune.report(metrics)

- :func:`wrap` — returns the function trainable; ``mode`` picks who decides
  the system config: ``"pipetune"`` (the trial's SystemTuner), ``"v1"`` (the
  space's default for every trial) or ``"v2"`` (the ``cores``/``memory_mb``
  Tune sampled into the trial's config).
- :func:`report` — ends an epoch: the policy acts, threads follow the cores
  at this same boundary, and the metrics plus the ``pt_*`` facts in force go
  to ``ray.tune.report``.
- :func:`trial_controller` — the node daemon's controller, else the trial's
  own with the node's shared CPU allocator.
- :func:`refit_groundtruth` — a trial that taught the ground truth refits it
  at its end, so a user's own script learns across trials and jobs.
- :func:`current_session` — the running trial's :class:`TrialSession`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from pipetune.config import Settings
from pipetune.energy import trial_energy
from pipetune.errors import ConfigError
from pipetune.policy import MODES, FixedPolicy, make_policy
from pipetune.tune.controller import trial_controller, trial_meters
from pipetune.tune.learn import refit_groundtruth
from pipetune.tune.session import TrialSession, current_session
from pipetune.types import Phase, SystemConfig, SystemSpace, TrialRef

log = logging.getLogger(__name__)

__all__ = [
    "MODES", "current_session", "default_workload", "make_policy", "refit_groundtruth",
    "report", "trial_controller", "window", "wrap",
]


def window(steps: int) -> None:
    """Mark the end of a step window inside the current epoch (``steps`` =
    steps done in this epoch so far).  Optional: lets the tuner probe inside
    long epochs and leave each config's warm-up out of its measurement."""
    session = current_session()
    if session is not None:
        session.window(steps)


def report(metrics: Mapping[str, Any], *, steps: int = 0, checkpoint: Any = None,
           group: Any = None, on_decided: Callable[[dict[str, Any]], Any] | None = None
           ) -> dict[str, Any]:
    """End the current epoch (drop-in for ``ray.tune.report``).  ``group``: a
    worker group's :class:`~pipetune.tune.session.GroupFacts` (see
    :mod:`pipetune.tune.parallel`).  ``on_decided``: called with the system
    facts in force once the boundary is decided, before Tune hears of the
    epoch (``{}`` outside a pipetune trial; see
    :meth:`~pipetune.tune.session.TrialSession.report`)."""
    session = current_session()
    if session is None:
        from ray import tune

        if on_decided is not None:
            on_decided({})

        if checkpoint is not None:
            tune.report(dict(metrics), checkpoint=checkpoint)
        else:
            tune.report(dict(metrics))
        return dict(metrics)
    return session.report(metrics, steps=steps, checkpoint=checkpoint, group=group,
                          on_decided=on_decided)


def _open_store(settings: Settings) -> Any:
    try:
        from pipetune.store import open_store

        return open_store(settings.store, spool_root=settings.spool_dir)
    except Exception as e:  # noqa: BLE001 - the trial trains without a store
        log.warning("store %s unavailable for this trial: %s", settings.store, e)
        return None


def default_workload(fn: Callable[..., Any]) -> str:
    """A workload's default identity: the function's name plus a digest of
    its code, so two scripts whose functions are both called ``train`` are
    two workloads to the ground truth, and one script run twice is one."""
    import hashlib
    import inspect

    try:
        code = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        c = getattr(fn, "__code__", None)
        code = (c.co_code + repr(c.co_consts).encode()) if c is not None else repr(fn).encode()
    return f"{getattr(fn, '__name__', 'train')}-{hashlib.sha1(code).hexdigest()[:8]}"


def _hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    # pipetune tune nests a trial's values under "trial"; a user's script is flat.
    nested = config.get("trial")
    flat = nested if isinstance(nested, Mapping) else config
    return {str(k): v for k, v in flat.items() if isinstance(v, (bool, int, float, str))}


def _open_gpus(trial_id: str, count: int, power_w: Any, controller: Any) -> Any:
    """The trial's :class:`~pipetune.tune.gpus.TrialGpus` (the daemon sets the
    power limit when this process is not root and a daemon controls it)."""
    from pipetune.tune.gpus import TrialGpus

    client = getattr(controller, "client", None)
    return TrialGpus.open(trial_id, int(count),
                          power_w=None if power_w is None else float(power_w), daemon=client)


def wrap(
    fn: Callable[[dict[str, Any]], Any],
    system: SystemSpace | None = None,
    *,
    mode: str = "pipetune",
    settings: Settings | None = None,
    system_values: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    workload: str = "",
    total_epochs: int | None = None,
    parallel: Any = None,
    gpu_power_w: float | None = None,
) -> Callable[[dict[str, Any]], Any]:
    """Turn a Tune function trainable into a pipetune trial.

    Every trial then gets the whole loop, with nothing else to add to the
    script: its controller (the node daemon's when one answers, else its
    own, with CPUs from the node's shared allocator), its system policy in
    its own process, its records in the store (trial, epochs, decisions,
    samples), and, in mode ``pipetune``, a refit of the ground truth when it
    taught it something, so the next trials and jobs are matched.

    Args:
        fn: the user's ``train(config)``; it calls :func:`report` per epoch.
        system: the system space (validated against this node); default: all
            of this node's cores, no memory limit.
        mode: ``"pipetune"``, ``"v1"`` or ``"v2"``.
        settings: pipetune settings; default: loaded on the driver now, so
            every trial uses the driver's store and thresholds.
        system_values: where mode ``v2`` finds ``cores``/``memory_mb`` in a
            trial's config (default: the config itself).
        workload: a name for the ground-truth records (default:
            :func:`default_workload`, the function's name and code digest).
        total_epochs: epochs each trial will run, so probing never plans
            more epochs than a trial has (unknown: the tuner stays careful).
        parallel: a :class:`~pipetune.parallel.ParallelConfig`: each trial
            trains with this strategy when ``fn`` calls
            :func:`pipetune.tune.parallel.train_parallel` (its ranks are child
            processes of the trial: one cgroup, one profile; see
            :mod:`pipetune.tune.parallel`).  Reported as ``pt_parallel`` /
            ``pt_workers`` (``none``/1 without).
        gpu_power_w: a GPU power limit in watts for every GPU of a trial
            (applied through NVML; a trial's config may carry its own
            ``gpu_power_w``).  GPUs are managed when the space has a GPU
            count above 0: each trial sees the GPU count of its config
            (``CUDA_VISIBLE_DEVICES``, set before ``fn`` runs).

    Raises:
        ConfigError: unknown mode, or a space that does not fit this node.
    """
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r}: must be one of {', '.join(MODES)}")
    settings = settings or Settings.load()
    if system is None:
        system = SystemSpace(cores=(os.cpu_count() or 1,))
    system.validate()
    workload = workload or default_workload(fn)
    if parallel is not None:
        from pipetune.parallel import ParallelConfig

        if not isinstance(parallel, ParallelConfig):
            raise ConfigError(f"parallel={parallel!r}: expected a pipetune.parallel.ParallelConfig")
        if system.parallel == ("none",) and parallel.strategy != "none":
            # The strategy is fixed: every config the trial's tuner decides and
            # records names it (a ground-truth winner says what it trained with).
            system = dataclasses.replace(system, parallel=(parallel.strategy,),
                                         workers=(parallel.workers,))
    manage_gpus = max(system.gpus) > 0 or gpu_power_w is not None

    @functools.wraps(fn)
    def trainable(config: dict[str, Any]) -> Any:
        from ray import tune

        from pipetune.tune import session as session_module

        ctx = tune.get_context()
        ref = TrialRef(
            job=ctx.get_experiment_name() or "job",
            trial=ctx.get_trial_id() or "trial",
            node=settings.node,
        )
        store = _open_store(settings)
        values: Any = config
        controller: Any = None
        try:
            values = system_values(config) if system_values else config
            controller = trial_controller(settings, job=ref.job)
            degraded = controller.degraded
            meters = trial_meters(controller)
            policy = make_policy(
                mode,
                system,
                values,
                ref,
                settings,
                controller=controller,
                **(
                    {"workload": workload, "total_epochs": total_epochs, "meters": meters}
                    if mode == "pipetune"
                    else {}
                ),
            )
        except Exception as e:  # noqa: BLE001 - pipetune must not fail the trial
            meters = None
            log.warning("trial %s: no system policy (%s); training continues untouched",
                        ref.trial, e)
            cores = len(os.sched_getaffinity(0))
            policy = FixedPolicy(
                SystemConfig(cores), trial_id=ref.trial, controller="dry-run", phase=Phase.DEGRADED
            )
            policy.reason = f"no system policy: {e}; training continues untouched"
            degraded = policy.reason
        import ray

        where = {"pt_node": settings.node, "pt_ray_node": ray.get_runtime_context().get_node_id()}
        if degraded:  # what the trial lost, in every result, not only in a driver's log
            where["pt_degraded"] = degraded
        held: list[Any] = []  # the trial's TrialGpus, once opened
        session = TrialSession(
            ref,
            policy,
            report_fn=tune.report,
            store=store,
            energy=trial_energy(
                [os.getpid()], meters,
                gpus=(lambda: held[0].nvml_indices if held else ()) if manage_gpus else None),
            extra=where,
            record={"mode": mode, "workload": workload, "hparams": _hparams(config),
                    "degraded": degraded},
            parallel=parallel,
            # --parallel auto: the tuner chooses among the space's strategies
            strategies=system.parallel if len(system.parallel) > 1 else (),
            strategy_workers=max(system.workers),
            none_here=settings.objective != "memory",
        )
        session_module.set_current(session)
        error: BaseException | None = None
        try:
            session.start()
            if manage_gpus:
                # After the first decision (the count is the config in force
                # now), before fn can touch CUDA.
                power = values.get("gpu_power_w", gpu_power_w) if isinstance(
                    values, Mapping) else gpu_power_w
                try:
                    held.append(_open_gpus(ref.trial, session.policy.config().gpus, power,
                                           controller))
                    session.gpus = held[0]
                except Exception as e:  # noqa: BLE001 - pipetune must not fail the trial
                    log.warning("trial %s: GPUs not managed (%s); the trial sees what its "
                                "process sees", ref.trial, e)
            return fn(config)
        except BaseException as e:
            error = e
            raise
        finally:
            session_module.set_current(None)
            session.close(error)
            if store is not None:
                if getattr(policy, "learned", False):
                    refit_groundtruth(store, settings.model, objective=settings.objective,
                                      job=ref.job)
                store.close()

    return trainable
