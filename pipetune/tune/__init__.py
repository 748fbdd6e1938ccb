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


def report(metrics: Mapping[str, Any], *, steps: int = 0, checkpoint: Any = None) -> dict[str, Any]:
    """End the current epoch (drop-in for ``ray.tune.report``)."""
    session = current_session()
    if session is None:
        from ray import tune

        if checkpoint is not None:
            tune.report(dict(metrics), checkpoint=checkpoint)
        else:
            tune.report(dict(metrics))
        return dict(metrics)
    return session.report(metrics, steps=steps, checkpoint=checkpoint)


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


def wrap(
    fn: Callable[[dict[str, Any]], Any],
    system: SystemSpace | None = None,
    *,
    mode: str = "pipetune",
    settings: Settings | None = None,
    system_values: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    workload: str = "",
    total_epochs: int | None = None,
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
        try:
            values = system_values(config) if system_values else config
            controller = trial_controller(settings, job=ref.job)
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
        import ray

        where = {"pt_node": settings.node, "pt_ray_node": ray.get_runtime_context().get_node_id()}
        session = TrialSession(
            ref,
            policy,
            report_fn=tune.report,
            store=store,
            energy=trial_energy([os.getpid()], meters),
            extra=where,
            record={"mode": mode, "workload": workload, "hparams": _hparams(config)},
        )
        session_module.set_current(session)
        error: BaseException | None = None
        try:
            session.start()
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
