"""Ray Tune integration: a user's function trainable becomes a pipetune trial.

Three changed lines in a user's script::

    import pipetune
    tuner = tune.Tuner(pipetune.wrap(train, system=SystemSpace.parse("cores=1,2")), ...)
    # inside train(): pipetune.report(metrics, steps=n)   instead of tune.report(metrics)

- :func:`wrap` — returns the function trainable; ``mode`` picks who decides
  the system config: ``"pipetune"`` (the trial's SystemTuner), ``"v1"`` (the
  space's default for every trial) or ``"v2"`` (the ``cores``/``memory_mb``
  Tune sampled into the trial's config).
- :func:`report` — ends an epoch: the policy acts, threads follow the cores,
  and the metrics plus ``pt_*`` system facts go to ``ray.tune.report``.
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
from pipetune.policy import MODES, FixedPolicy, SystemPolicy, make_policy
from pipetune.tune.session import TrialSession, current_session
from pipetune.types import SystemSpace, TrialRef

log = logging.getLogger(__name__)

__all__ = ["MODES", "current_session", "make_policy", "report", "window", "wrap"]


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


def _daemon_policy(
    ref: TrialRef, mode: str, space: SystemSpace, values: Mapping[str, Any], settings: Settings
) -> SystemPolicy | None:
    """The node daemon's policy when a daemon answers on the socket, else
    None (the trial then runs its policy in-process)."""
    try:
        from pipetune.daemon.client import policy_for_trial

        return policy_for_trial(ref, mode=mode, space=space, values=dict(values), settings=settings)
    except Exception as e:  # noqa: BLE001 - no daemon is a normal case
        log.info("trial %s: no node daemon (%s); running in-process", ref.trial, e)
        return None


def _open_store(settings: Settings) -> Any:
    try:
        from pipetune.store import open_store

        return open_store(settings.store, spool_root=settings.spool_dir)
    except Exception as e:  # noqa: BLE001 - the trial trains without a store
        log.warning("store %s unavailable for this trial: %s", settings.store, e)
        return None


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

    Args:
        fn: the user's ``train(config)``; it calls :func:`report` per epoch.
        system: the system space (validated against this node); default: all
            of this node's cores, no memory limit.
        mode: ``"pipetune"``, ``"v1"`` or ``"v2"``.
        settings: pipetune settings; default: loaded on the driver now, so
            every trial uses the driver's store and thresholds.
        system_values: where mode ``v2`` finds ``cores``/``memory_mb`` in a
            trial's config (default: the config itself).
        workload: a name for the ground-truth records (default: the function's).
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
            policy = _daemon_policy(ref, mode, system, values, settings) or make_policy(
                mode,
                system,
                values,
                ref,
                settings,
                **(
                    {"workload": workload or fn.__name__, "total_epochs": total_epochs}
                    if mode == "pipetune"
                    else {}
                ),
            )
        except Exception as e:  # noqa: BLE001 - pipetune must not fail the trial
            log.warning("trial %s: no system policy (%s); default config kept", ref.trial, e)
            policy = FixedPolicy(
                system.default, trial_id=ref.trial, controller="dry-run", phase="degraded"
            )
            policy.reason = str(e)
        import ray

        where = {"pt_node": settings.node, "pt_ray_node": ray.get_runtime_context().get_node_id()}
        session = TrialSession(
            ref,
            policy,
            report_fn=tune.report,
            store=store,
            energy=trial_energy([os.getpid()]),
            extra=where,
        )
        session_module.set_current(session)
        try:
            session.start()
            return fn(config)
        finally:
            session_module.set_current(None)
            session.close()
            if store is not None:
                store.close()

    return trainable
