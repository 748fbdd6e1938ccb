"""A whole tuning job on a bundled workload: ``pipetune tune``.

The same entry point runs the three modes on the same workload, search space,
scheduler and seeds, so any comparison between them is like for like:

- ``pipetune`` — each trial's SystemTuner picks its system config;
- ``v1`` — hyperparameters only; every trial on the space's default config;
- ``v2`` — ``cores`` (and ``memory_mb``) join Tune's search space.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipetune.config import Settings
from pipetune.errors import ConfigError, PipetuneError, UsageError
from pipetune.types import SystemSpace

log = logging.getLogger(__name__)

SCHEDULERS = ("hyperband", "asha", "fifo")


@dataclass
class JobSpec:
    """What a tuning job runs; validated before Ray starts."""

    workload: str
    mode: str = "pipetune"
    samples: int = 4
    epochs: int = 3
    scheduler: str = "fifo"
    space: SystemSpace = field(
        default_factory=lambda: SystemSpace(cores=tuple(sorted({1, os.cpu_count() or 1})))
    )
    concurrent: int = 0  # trials at once; 0: as many as their Ray reservations fit
    job: str = ""
    seed: int = 0
    address: str | None = None
    fixed_hparams: Mapping[str, Any] = field(default_factory=dict)
    #: ``--schedule`` words (see pipetune.stages.flags): their grid replaces
    #: the sampled trials.
    schedules: tuple[str, ...] = ()
    #: Stage-tree execution: shared prefixes are trained once.
    stages: bool = False
    #: With ``stages``: reuse the stages earlier jobs of the same workload,
    #: data and seed recorded in the store (``--reuse``).
    reuse: bool = False
    #: The trials' parallel strategy (None: one process, the workload's own loop).
    parallel: Any = None
    #: ``--parallel auto``: ranks per strategy (0: the strategy is fixed).  The
    #: space's ``parallel`` becomes the strategies that fit every trial and the
    #: tuner chooses among them (:func:`auto_strategies`).
    parallel_auto: int = 0
    #: A GPU power limit (W) for every GPU of every trial (NVML; None: as is).
    gpu_power_w: float | None = None

    def __post_init__(self) -> None:
        from pipetune.tune import MODES

        if self.mode not in MODES:
            raise UsageError(f"mode {self.mode!r}: must be one of {', '.join(MODES)}")
        if self.scheduler not in SCHEDULERS:
            raise UsageError(
                f"scheduler {self.scheduler!r}: must be one of {', '.join(SCHEDULERS)}"
            )
        if self.concurrent < 0:
            raise ConfigError(f"--concurrent={self.concurrent}: must be >= 0 (0: as many as fit)")
        for name in ("samples", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name}={getattr(self, name)}: must be >= 1")
        if self.reuse and not self.stages:
            raise UsageError("--reuse reuses stages: it needs --stages")
        if self.schedules:
            from pipetune.stages.flags import schedule_grid

            schedule_grid(self.schedules)  # ConfigError now, before Ray starts
        if self.parallel is not None and (self.schedules or self.stages):
            raise UsageError("--parallel with --schedule/--stages is not supported yet: "
                             "a stage tree resumes single-process checkpoints")
        if not self.job:
            self.job = f"{self.workload}-{self.mode}-{time.strftime('%Y%m%d-%H%M%S')}"

    @property
    def grouped(self) -> bool:
        """Trials train with a worker group (any strategy given, ``none`` included)."""
        return self.parallel is not None


def sample_trials(workload_cls: type, spec: JobSpec) -> list[dict[str, Any]]:
    """The trials' hyperparameters, drawn once with the job's seed.

    Drawn here rather than by Tune's searcher so that every mode gets the
    *same* hyperparameters per trial (V2's extra ``cores`` dimension would
    otherwise shift the random stream).  The paper's ranges, scaled to a
    small machine, for whichever hyperparameters the workload takes.
    """
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    hp = workload_cls.hyperparameters
    trials = []
    if spec.schedules:
        # A schedule grid: the other hyperparameters stay at --set or the
        # workload's defaults (random ones would leave no prefix to share).
        from pipetune.stages.flags import schedule_grid

        trials = [{**spec.fixed_hparams, **combo} for combo in schedule_grid(spec.schedules)]
    for _ in range(0 if spec.schedules else spec.samples):
        t: dict[str, Any] = {}
        if "lr" in hp:
            t["lr"] = float(10 ** rng.uniform(-3, -1))
        if "batch_size" in hp:
            t["batch_size"] = int(rng.choice([32, 64, 128, 256]))
        if "dropout" in hp:
            t["dropout"] = float(rng.uniform(0.0, 0.5))
        if "embedding_dim" in hp:
            t["embedding_dim"] = int(rng.choice([32, 64, 128]))
        t.update(spec.fixed_hparams)
        trials.append(t)
    system_rng = np.random.default_rng(spec.seed + 1)
    for t in trials:  # V2 samples system values too; harmless for the other modes
        t["cores"] = int(system_rng.choice(list(spec.space.cores)))
        memory = list(spec.space.memory_mb)
        t["memory_mb"] = memory[int(system_rng.integers(len(memory)))]
    return trials


def _parallel_train_fn(workload: str, epochs: int, seed: int,
                       checkpoint_root: Path | None = None) -> Any:
    """The function trainable of a bundled workload that trains with the
    strategy given to :func:`pipetune.wrap` (a worker group of child processes);
    the groups' own checkpoints go under ``checkpoint_root``."""

    def train(config: dict[str, Any]) -> None:
        from pipetune.tune.parallel import train_parallel
        from workloads import get_workload

        cls = get_workload(workload)
        hparams = {k: v for k, v in config["trial"].items() if k in cls.hyperparameters}
        train_parallel(workload, hparams, epochs=epochs, seed=seed,
                       checkpoint_root=checkpoint_root)

    train.__name__ = f"train_{workload.replace('-', '_')}_group"
    return train


def check_parallel(cls: type, spec: JobSpec, trials: list[dict[str, Any]]) -> None:
    """Refuse, before Ray starts, a strategy that does not fit some trial
    (a batch size the workers or chunks do not divide, a model with fewer
    layers than stages, a workload that is not a DNN)."""
    from pipetune.parallel import get_strategy

    strategy = get_strategy(spec.parallel.strategy)
    for t in trials:
        hp = cls.resolve_hparams({k: v for k, v in t.items() if k in cls.hyperparameters})
        strategy.check(cls, hp, spec.parallel, share_cores=True)


def auto_strategies(cls: type, spec: JobSpec, trials: list[dict[str, Any]]) -> tuple[str, ...]:
    """The strategies ``--parallel auto`` may choose: those whose checks pass
    for every trial (``none`` always; ddp/mp/gpipe with ``parallel_auto``
    ranks, gpipe with 4 micro-batches), as the fixed ``--parallel`` refuses
    the others."""
    from pipetune.parallel import ParallelConfig, get_strategy

    fits = []
    for name in ("none", "ddp", "mp", "gpipe"):
        config = ParallelConfig.of(name, workers=1 if name == "none" else spec.parallel_auto,
                                   device=spec.parallel.device)
        try:
            for t in trials:
                hp = cls.resolve_hparams({k: v for k, v in t.items() if k in cls.hyperparameters})
                get_strategy(name).check(cls, hp, config, share_cores=True)
        except (PipetuneError, ValueError) as e:
            log.info("--parallel auto: %s left out: %s", name, e)
            continue
        fits.append(name)
    return tuple(fits)


def _workload_train_fn(workload: str, epochs: int, seed: int) -> Any:
    """The function trainable of a bundled workload (uses pipetune.report)."""

    def train(config: dict[str, Any]) -> None:
        import pickle

        from ray import tune

        import pipetune.tune as pt
        from pipetune import stages
        from workloads import get_workload

        cls = get_workload(workload)
        config = config["trial"]
        hparams = {k: v for k, v in config.items() if k in cls.hyperparameters}
        w = cls(hparams, seed=seed)
        start = 0
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                with open(Path(d) / "state.pkl", "rb") as fh:  # written by this function only
                    state = pickle.load(fh)  # noqa: S301
                w.load_state_dict(state["workload"])
                start = state["epoch"] + 1

        def report_with_state(metrics: dict[str, Any], report: Callable[..., Any],
                              **kwargs: Any) -> Any:
            """Report an epoch with a Tune checkpoint of the workload's state now."""
            with tempfile.TemporaryDirectory() as d:
                with open(Path(d) / "state.pkl", "wb") as fh:
                    pickle.dump({"epoch": metrics["epoch"], "workload": w.state_dict()}, fh)
                return report(metrics, checkpoint=tune.Checkpoint.from_directory(d), **kwargs)

        # In a stage run: skip (and replay) the prefix other trials trained.
        # A replayed epoch carries the loaded stage's state as its checkpoint:
        # a trial HyperBand pauses there resumes after it, and the stage
        # store replays the rest of the prefix again (loading that state).
        start = stages.resume(w.load_state_dict, start,
                              replay=lambda m: report_with_state(m, tune.report))
        for epoch in range(start, epochs):
            steps = getattr(w, "steps_per_epoch", 0)
            window = max(1, steps // 4) if isinstance(steps, int) and steps >= 4 else None
            stats = w.train_epoch(
                epoch, on_window=pt.window if window else None, window_steps=window
            )
            metrics = {
                **{k: v for k, v in stats.items() if isinstance(v, (int, float))},
                **w.evaluate(),
                "epoch": epoch,
            }
            report_with_state(metrics, stages.report, state=w.state_dict,
                              steps=int(stats.get("steps", 0)))

    train.__name__ = f"train_{workload.replace('-', '_')}"
    return train


@dataclass
class JobResult:
    job: str
    mode: str
    workload: str
    tuning_s: float
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    store: str
    #: Stopped before every trial ended (Ctrl-C); the store records it so.
    interrupted: bool = False
    #: Points still in the spool at the end (the store was down): replayed
    #: by the next process that opens the store once it answers.
    spooled: int = 0
    #: With ``--stages``: the stage runner's figures (epochs trained,
    #: replayed, reused; CPU-seconds; tree size), as recorded in the store.
    stages: dict[str, Any] | None = None


def _scheduler(name: str, epochs: int, metric: str, mode: str) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

    if name == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", max_t=epochs)
    if name == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1)
    return FIFOScheduler()


def run_job(spec: JobSpec, settings: Settings, *, verbose: int = 1) -> JobResult:
    """Run one tuning job; Ray is started locally unless an address is given."""
    import ray
    from ray import tune

    import pipetune.tune as pt
    from pipetune.store import open_store
    from pipetune.store.spool import spooled_points
    from pipetune.tune.callback import PipeTuneCallback
    from workloads import get_workload

    cls = get_workload(spec.workload)  # UsageError for an unknown workload, before Ray starts
    if hasattr(cls, "resolve_hparams"):
        # --set: an unknown key or a bad value (lr=abc) is a ConfigError now, not
        # a failed trial after Ray started (or a key silently dropped).
        cls.resolve_hparams(spec.fixed_hparams)
    spec.space.validate()
    if spec.grouped:
        check_parallel(cls, spec, sample_trials(cls, spec))  # before Ray starts
    if spec.parallel_auto:
        spec.space = dataclasses.replace(
            spec.space, parallel=auto_strategies(cls, spec, sample_trials(cls, spec)),
            workers=(spec.parallel_auto,))
    # Opening the store first fails early, with a clear line, on a bad URL.
    store = open_store(settings.store, spool_root=settings.spool_dir)
    power = _power_sampler(store, settings)
    _clean_stale_groups(settings)
    metric, metric_mode = getattr(cls, "metric", "accuracy"), getattr(cls, "metric_mode", "max")
    address = spec.address or os.environ.get("RAY_ADDRESS")
    started_ray = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=verbose > 1)
            else:
                ray.init(
                    address="local",
                    num_cpus=os.cpu_count(),
                    include_dashboard=False,
                    log_to_driver=verbose > 1,
                )
        except ConnectionError as e:
            _close_early(power, store)
            raise UsageError(f"no Ray cluster at {address!r}: {e}") from e
        except OSError as e:
            # Ray writes under HOME (its token, ~/.ray) and RAY_TMPDIR; a
            # system user's HOME is often not writable (nobody's: /nonexistent).
            _close_early(power, store)
            raise PipetuneError(
                f"Ray could not start: {e} (HOME={os.environ.get('HOME', '')!r} and the "
                "temporary folder, RAY_TMPDIR, must be writable)"
            ) from e
        started_ray = True
    stage_runner, stage_figures = None, None
    groups_dir: Path | None = None
    try:
        trials = sample_trials(cls, spec)
        if spec.grouped:
            # Trials Tune stops or pauses never clean up their group's
            # checkpoints: they go in a folder of this job's, removed at its end.
            groups_dir = Path(tempfile.mkdtemp(prefix=f"pipetune-groups-{spec.job or 'job'}-"))
            train_fn = _parallel_train_fn(spec.workload, spec.epochs, spec.seed, groups_dir)
        else:
            train_fn = _workload_train_fn(spec.workload, spec.epochs, spec.seed)
        if spec.stages:
            stage_runner, train_fn, trials = _stage_runner(spec, cls, trials, train_fn, settings)
        param_space = {"trial": tune.grid_search(trials)}
        trainable = pt.wrap(
            train_fn,
            spec.space,
            mode=spec.mode,
            settings=settings,
            system_values=_trial_values,
            workload=spec.workload,
            total_epochs=spec.epochs,
            parallel=spec.parallel,
            gpu_power_w=spec.gpu_power_w,
        )
        # A trial's ranks are its own child processes: Ray reserves at least
        # one CPU per rank, and a GPU per rank when the space gives trials GPUs.
        workers = max(spec.parallel.workers, spec.parallel_auto) if spec.grouped else 1
        gpus = max(spec.space.gpus)
        extra = {"gpu": gpus} if gpus else {}
        if spec.mode == "v2":
            trainable = tune.with_resources(
                trainable,
                lambda c: {"cpu": max(workers, int(c["trial"]["cores"])), **extra})
        elif spec.mode == "v1":
            trainable = tune.with_resources(
                trainable, {"cpu": max(workers, spec.space.default.cores), **extra})
        elif spec.grouped:
            trainable = tune.with_resources(
                trainable, {"cpu": max(workers, min(spec.space.cores)), **extra})
        else:
            # Ray stays the scheduler: each pipetune trial reserves the
            # space's smallest config, so Ray runs as many trials at once as
            # fit on a node that way; the node allocator then gives each its
            # share of the CPUs by measured speed-up (all of them to a trial
            # alone), and moves the shares as trials start and end.
            trainable = tune.with_resources(trainable, {"cpu": min(spec.space.cores), **extra})
        callback = PipeTuneCallback(
            settings.store,
            settings.spool_dir,
            job=spec.job,
            mode=spec.mode,
            workload=spec.workload,
            metric=metric,
            metric_mode=metric_mode,
            model_path=settings.model if spec.mode == "pipetune" else None,
            objective=settings.objective,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=metric_mode,
                num_samples=1,  # the grid holds the job's samples
                scheduler=_scheduler(spec.scheduler, spec.epochs, metric, metric_mode),
                # 0: as many as the trials' Ray reservations allow
                max_concurrent_trials=spec.concurrent or None,
            ),
            run_config=tune.RunConfig(
                name=spec.job,
                storage_path=str(settings.home / "ray_results"),
                callbacks=[callback] + ([stage_runner.callback()] if stage_runner else []),
                verbose=verbose,
            ),
        )
        results = tuner.fit()
        if stage_runner is not None:
            stats = stage_runner.stats()
            log.info("job %s: stage tree of %d nodes; %d epochs trained, %d replayed",
                     spec.job, stats["tree_nodes"], stats["epochs_trained"],
                     stats["epochs_replayed"])
    finally:
        if groups_dir is not None:
            shutil.rmtree(groups_dir, ignore_errors=True)
        if stage_runner is not None:
            stage_runner.close()
            stage_figures = stage_runner.figures
        if power is not None:
            power.stop()
        store.close()
        if started_ray:
            ray.shutdown()
        # Trials Tune stopped or paused (ASHA, HyperBand) never ran their
        # session's close, so their cgroups outlive them: sweep the groups of
        # dead owners now rather than at the next job's start.
        _clean_stale_groups(settings)
    trials = []
    for r in results:
        m = r.metrics or {}
        trials.append(
            {
                "trial": m.get("trial_id"),
                "hparams": {
                    k: v
                    for k, v in (r.config or {}).get("trial", {}).items()
                    if k in cls.hyperparameters
                },
                "config": m.get("pt_config"),
                "parallel": m.get("pt_parallel"),
                "workers": m.get("pt_workers"),
                "how": m.get("pt_phase"),
                "reason": m.get("pt_reason"),
                metric: m.get(metric),
                "epochs": m.get("training_iteration"),
                "ray_node": m.get("pt_ray_node"),
                "seconds": m.get("time_total_s"),
                "error": str(r.error) if r.error else None,
                "history": _history(r),
            }
        )
    scored = [t for t in trials if isinstance(t.get(metric), (int, float))]
    best = (
        (max if metric_mode == "max" else min)(scored, key=lambda t: t[metric]) if scored else None
    )
    return JobResult(
        spec.job,
        spec.mode,
        spec.workload,
        (callback.end_s or time.time()) - callback.start_s,
        trials,
        best,
        settings.store,
        interrupted=callback.interrupted,
        spooled=spooled_points(settings.spool_dir, settings.store),
        stages=stage_figures,
    )


def _history(result: Any) -> list[dict[str, Any]]:
    """Every epoch's system facts as Tune received them (``pt_*`` and the
    epoch index): what was in force, epoch by epoch."""
    df = getattr(result, "metrics_dataframe", None)
    if df is None or df.empty:
        return []
    keys = [c for c in df.columns if c.startswith("pt_") or c in ("epoch", "training_iteration")]
    return [{k: _plain(v) for k, v in row.items()} for row in df[keys].to_dict("records")]


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _stage_runner(spec: JobSpec, cls: type, trials: list[dict[str, Any]], train_fn: Any,
                  settings: Settings) -> tuple[Any, Any, list[dict[str, Any]]]:
    """A stage runner for the job with the grid registered, the train
    function wrapped by it (checkpoints under the job's Tune folder, epochs
    and tree recorded in the store), and the trials in an order that keeps
    ``--concurrent`` trials from waiting.

    Stages are shared (within the job, and across jobs with ``--reuse``) by
    namespace — workload, seed and data folder — and by the exact values of
    every hyperparameter the workload takes, its defaults filled in (so a
    default changed between versions, or ``max_train_samples`` set in one
    job and not another, is a different stage)."""
    from pipetune.stages import StageRunner, order_trials, plan_for
    from workloads.base import default_data_dir

    namespace = f"{spec.workload}/seed={spec.seed}/data={default_data_dir()}"
    runner = StageRunner(
        settings.home / "ray_results" / spec.job / "stages",
        prune_safe=spec.scheduler != "fifo",
        store=settings.store,
        spool_dir=settings.spool_dir,
        job=spec.job,
        reuse=spec.reuse,
    )
    defaults = dict(cls.hyperparameters)

    def resolved(config: Mapping[str, Any]) -> dict[str, Any]:
        return {**defaults, **{k: v for k, v in config.items() if k in defaults}}

    def hparams(config: Mapping[str, Any]) -> dict[str, Any]:
        return resolved(config["trial"])

    runner.register(plan_for(resolved(t), spec.epochs, namespace=namespace) for t in trials)
    ordered = order_trials(
        trials, spec.epochs, spec.concurrent or max(1, os.cpu_count() or 1),
        namespace=namespace,
        ignore=[k for t in trials for k in t if k not in defaults],
    )
    wrapped = runner.wrap(train_fn, spec.epochs, namespace=namespace, hparams=hparams)
    return runner, wrapped, [dict(t) for t in ordered]


def _trial_values(config: Mapping[str, Any]) -> Mapping[str, Any]:
    return config["trial"]


def _close_early(power: Any, store: Any) -> None:
    """Stop what run_job started before Ray did, when Ray does not start."""
    if power is not None:
        power.stop()
    store.close()


def _power_sampler(store: Any, settings: Settings) -> Any:
    """Node watts at 1 Hz into the ``power`` measurement while the job runs
    (this node; on a cluster each node's daemon host does the same)."""
    try:
        from pipetune.energy import PowerSampler, detect_meters

        sampler = PowerSampler(store, detect_meters(), node=settings.node)
        sampler.start()
        return sampler
    except Exception as e:  # noqa: BLE001 - power is a figure, not a requirement
        log.info("no node power samples for this job: %s", e)
        return None


def _clean_stale_groups(settings: Settings) -> None:
    """Remove cgroups that trials of a crashed or killed job left behind (a
    SIGKILLed trial cannot clean up after itself); the daemon does the same
    at its start."""
    try:
        from pipetune.control import detect_controller

        removed = detect_controller(settings.controller).cleanup_stale()
        if removed:
            log.info("removed %d stale trial cgroup(s) of dead processes", removed)
    except Exception as e:  # noqa: BLE001 - cleanup is best effort
        log.debug("no stale-cgroup cleanup: %s", e)
