"""What a report says about one tuning job, read back from the store.

:func:`load_job` turns the store's points of one job (measurements ``job``,
``trial``, ``epoch``, ``decision``, ``power``, and ``stage_job`` for a
stage job; DESIGN §11) into a
:class:`JobReport` of plain numbers, so the renderers and plots never touch
the store and a test can compare each figure with the point it came from.

Figures the store does not hold stay ``None`` and are printed as "n/a":
a report labels what is missing, it never estimates it.  Every energy
figure carries the method it was measured with (``rapl``, ``nvml``,
``estimated``; DESIGN §12).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pipetune.errors import UsageError
from pipetune.types import DecisionKind as K
from pipetune.types import Phase

#: Keys of a trial's config that are system parameters, shown as its system
#: config (from its decisions) rather than as hyperparameters: V1 and
#: pipetune trials carry V2's sampled values without using them.
SYSTEM_KEYS = frozenset({"cores", "memory_mb", "gpus"})

#: Metrics where smaller is better, when the job did not say (partial jobs).
_MIN_METRICS = ("loss", "residual", "stderr", "inertia", "error")


class UnknownJobError(UsageError):
    """The store holds nothing for the job asked for (exit 2)."""


@dataclass(frozen=True)
class ProbeSlot:
    """One probed system config of a trial and what it cost.

    ``slot_s`` is the time from this probe decision to the trial's next
    decision (the time the config was in force, warm-up included);
    ``epoch_s`` the mean duration of the probing-phase epochs that started on
    this config (``None`` when the probe was shorter than an epoch)."""

    config: str
    slot_s: float | None
    epoch_s: float | None


@dataclass(frozen=True)
class TrialReport:
    """One trial: its hyperparameters, system config, metric, time, energy."""

    trial: str
    status: str  # done | failed | running | n/a (job ended, no status recorded)
    hparams: dict[str, Any]
    config: str | None  # the system config in force at its last epoch
    metric: float | None  # the best value of the job's metric over its epochs
    epochs: int
    seconds: float | None  # training time: sum of its epoch durations
    start_ns: int | None
    end_ns: int | None
    energy_j: float | None  # sum of its epochs' energy; None if any epoch lacks one
    energy_method: str | None  # "estimated", "rapl", "rapl+nvml" … ; None when no energy
    how: str  # fixed | matched | probed | fallback | degraded | n/a
    how_detail: str  # the decision's own words: score, candidates, reason
    # Time spent probing: the durations of the epochs the tuner recorded in
    # its probing phase; when probing ended inside an epoch (none recorded
    # so), the time from the first probe decision to the settling one.
    probe_s: float
    probes: tuple[ProbeSlot, ...] = ()
    error: str | None = None

    @property
    def wall_s(self) -> float | None:
        """From the trial's first point to its last (Fig. 10's duration)."""
        if self.start_ns is None or self.end_ns is None:
            return None
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class StageSummary:
    """A stage job's tree and compute, as its stage store recorded them at
    the job's end (the ``stage_job`` measurement).

    ``epochs_reported`` is what the trials reported to Tune, trained or
    replayed: what trial-based execution trains for the same trials stopped
    at the same epochs; ``grid_epochs`` is every trial's full plan (the same
    without a stopping scheduler).  ``cpu_s_trial_based`` estimates the
    trial-based CPU-seconds from each epoch's recorded CPU-seconds (None
    when not every epoch has one).  ``tree`` holds one dict per node:
    ``node``, ``parent``, ``start``, ``stop``, ``values`` (those that differ
    between nodes; ``fixed`` holds the rest), ``ending`` (plan ids),
    ``tune_trials``/``tune_ending`` (Tune ids) and ``epoch_marks`` (per
    epoch: ``t`` trained, ``r`` reused from an earlier job, ``-`` never)."""

    tree: tuple[dict[str, Any], ...]
    nodes: int
    epochs_trained: int
    epochs_replayed: int
    epochs_reused: int
    epochs_reported: int
    grid_epochs: int
    unique_epochs: int
    cpu_s: float | None
    cpu_s_trial_based: float | None
    reuse: bool
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs_saved(self) -> int:
        """Epochs trial-based execution would have trained that this job did not."""
        return self.epochs_reported - self.epochs_trained

    @property
    def compute_ratio(self) -> float | None:
        """Epochs trial-based / epochs trained (None when nothing was trained)."""
        return self.epochs_reported / self.epochs_trained if self.epochs_trained else None


@dataclass(frozen=True)
class JobReport:
    """One tuning job as the store holds it.

    ``partial`` is True when the job has a start point but no end point: it
    is still running, or it died, or it was interrupted (``interrupted``:
    its driver wrote an ``interrupted`` point instead of ``end``); the figures
    are then those of the points written so far and ``tuning_s`` runs to the
    last of them."""

    job: str
    mode: str
    workload: str
    partial: bool
    start_ns: int
    end_ns: int
    tuning_s: float
    metric: str
    metric_mode: str  # max | min
    best_trial: str | None
    best_value: float | None
    trials: tuple[TrialReport, ...]
    energy_j: float | None  # sum of the trials' energy; None if any trial lacks one
    energy_method: str | None
    node_energy_j: float | None  # the node's power samples integrated over the job
    node_energy_method: str | None  # the power samples' source
    probe_s: float
    epochs: pd.DataFrame = field(repr=False, compare=False)
    decisions: pd.DataFrame = field(repr=False, compare=False)
    interrupted: bool = False
    stages: StageSummary | None = None  # a stage job's tree and compute

    @property
    def best(self) -> TrialReport | None:
        return next((t for t in self.trials if t.trial == self.best_trial), None)

    @property
    def has_profiles(self) -> bool:
        return any(c.startswith("rate.") for c in self.epochs.columns)


def load_job(store: Any, job: str) -> JobReport:
    """Read ``job`` from ``store`` (a :class:`pipetune.store.Store`).

    Raises:
        UnknownJobError: the store holds no point of this job.
    """
    jobs = store.query("job", {"job": job})
    epochs = store.epochs(job)
    decisions = store.decisions(job)
    trials_df = store.query("trial", {"job": job})
    if jobs.empty and epochs.empty and trials_df.empty and decisions.empty:
        names = known_jobs(store)
        if not names:
            raise UnknownJobError(f"job {job!r}: the store {store.url} holds no job (empty store)")
        shown = ", ".join(names[:10]) + (f" … ({len(names)} in all)" if len(names) > 10 else "")
        raise UnknownJobError(f"job {job!r}: not in the store {store.url}; jobs there: {shown}")

    start = _event(jobs, "start")
    end = _event(jobs, "end")
    stopped = _event(jobs, "interrupted")
    times = [int(df["time"].min()) for df in (jobs, epochs, trials_df, decisions) if not df.empty]
    last = [int(df["time"].max()) for df in (jobs, epochs, trials_df, decisions) if not df.empty]
    start_ns = int(start["time"]) if start is not None else min(times)
    # A job run from a user's own script has no job points (no driver
    # callback): it is finished when every trial it recorded has ended.
    partial = end is None and (start is not None or not _all_trials_ended(trials_df))
    end_ns = int(end["time"]) if end is not None else max(last)
    if end is not None and _num(end.get("tuning_s")) is not None:
        tuning_s = float(end["tuning_s"])
    else:
        tuning_s = (end_ns - start_ns) / 1e9
    first = start if start is not None else end
    mode = _text(first, "mode") or _first(trials_df, "mode") or "?"
    workload = _text(first, "workload") or _first(trials_df, "workload") or "?"

    metric, metric_mode = _metric(end, epochs)
    trials = tuple(
        _trial(tid, trials_df, epochs, decisions, metric, metric_mode, job_ended=not partial)
        for tid in _trial_ids(trials_df, epochs, decisions)
    )
    best_trial, best_value = None, None
    if end is not None and isinstance(end.get("best_trial"), str):
        best_trial = end["best_trial"]
        best_value = _num(end.get(f"best_{metric}"))
    else:
        scored = [t for t in trials if t.metric is not None]
        if scored:
            pick = max if metric_mode == "max" else min
            b = pick(scored, key=lambda t: t.metric)  # type: ignore[arg-type, return-value]
            best_trial, best_value = b.trial, b.metric

    energies = [t.energy_j for t in trials]
    energy_j = sum(energies) if trials and all(e is not None for e in energies) else None  # type: ignore[misc]
    node_j, node_method = _node_energy(store, epochs, start_ns, end_ns)
    return JobReport(
        job=job,
        mode=mode,
        workload=workload,
        partial=partial,
        start_ns=start_ns,
        end_ns=end_ns,
        tuning_s=tuning_s,
        metric=metric,
        metric_mode=metric_mode,
        best_trial=best_trial,
        best_value=best_value,
        trials=trials,
        energy_j=energy_j,
        energy_method=_join_methods(t.energy_method for t in trials)
        if energy_j is not None
        else None,
        node_energy_j=node_j,
        node_energy_method=node_method,
        probe_s=sum(t.probe_s for t in trials),
        epochs=epochs,
        decisions=decisions,
        interrupted=end is None and stopped is not None,
        stages=_stages(store, job),
    )


def _stages(store: Any, job: str) -> StageSummary | None:
    """The job's ``stage_job`` point (the last one), or None: not a stage job."""
    df = store.query("stage_job", {"job": job})
    if df.empty or "tree" not in df.columns:
        return None
    row = df.sort_values("time").iloc[-1].to_dict()
    try:
        tree = tuple(json.loads(row["tree"]))
        fixed = json.loads(row["tree_fixed"]) if isinstance(row.get("tree_fixed"), str) else {}
    except (TypeError, ValueError):
        return None

    def count(key: str) -> int:
        v = _num(row.get(key))
        return int(v) if v is not None else 0

    return StageSummary(
        tree=tree,
        nodes=count("tree_nodes"),
        epochs_trained=count("epochs_trained"),
        epochs_replayed=count("epochs_replayed"),
        epochs_reused=count("epochs_reused"),
        epochs_reported=count("epochs_reported"),
        grid_epochs=count("tree_trial_epochs"),
        unique_epochs=count("tree_unique_epochs"),
        cpu_s=_num(row.get("cpu_s")),
        cpu_s_trial_based=_num(row.get("cpu_s_trial_based")),
        reuse=bool(count("reuse")),
        fixed=dict(fixed),
    )


def known_jobs(store: Any) -> list[str]:
    """Every job name the store holds a point of: ``job`` points (written by
    ``pipetune tune`` and :class:`~pipetune.tune.callback.PipeTuneCallback`),
    and trials, epochs and decisions (a user's own script may write only
    those).  Samples are left out: they are many, and never alone."""
    names: set[str] = set()
    for measurement in ("job", "trial", "epoch", "decision"):
        df = store.query(measurement)
        if "job" in df.columns:
            names.update(str(j) for j in df["job"] if not _missing(j) and str(j))
    return sorted(names)


# -- pieces ---------------------------------------------------------------------------------


def _all_trials_ended(trials_df: pd.DataFrame) -> bool:
    """Whether every trial in the ``trial`` points has a final status."""
    if trials_df.empty or "status" not in trials_df.columns or "trial" not in trials_df.columns:
        return False
    ended = trials_df[trials_df["status"].isin(["done", "failed"])]["trial"].astype(str)
    return set(trials_df["trial"].astype(str)) <= set(ended)


def _event(jobs: pd.DataFrame, event: str) -> dict[str, Any] | None:
    if jobs.empty or "event" not in jobs.columns:
        return None
    rows = jobs[jobs["event"] == event]
    if rows.empty:
        return None
    row = rows.iloc[-1].to_dict()
    return {k: v for k, v in row.items() if not _missing(v)}


def _metric(end: dict[str, Any] | None, epochs: pd.DataFrame) -> tuple[str, str]:
    """The job's metric: the one its end point named best, else accuracy, else
    the first metric the epochs carry."""
    name = None
    if end is not None:
        name = next(
            (k[len("best_") :] for k in end if k.startswith("best_") and k != "best_trial"), None
        )
    if name is None:
        metrics = [c[len("metric.") :] for c in epochs.columns if c.startswith("metric.")]
        if "accuracy" in metrics or not metrics:
            name = "accuracy"
        else:
            name = next((m for m in metrics if m != "epoch"), metrics[0])
    mode = "min" if any(s in name for s in _MIN_METRICS) else "max"
    return name, mode


def _trial_ids(*frames: pd.DataFrame) -> list[str]:
    """Trials in the order they started."""
    first: dict[str, int] = {}
    for df in frames:
        if df.empty or "trial" not in df.columns:
            continue
        for tid, t in zip(df["trial"], df["time"], strict=True):
            first[str(tid)] = min(first.get(str(tid), t), t)
    return sorted(first, key=lambda k: (first[k], k))


def _trial(
    tid: str,
    trials_df: pd.DataFrame,
    epochs: pd.DataFrame,
    decisions: pd.DataFrame,
    metric: str,
    metric_mode: str,
    *,
    job_ended: bool,
) -> TrialReport:
    tp = _rows(trials_df, tid)
    ep = _rows(epochs, tid)
    dec = _rows(decisions, tid)

    hparams: dict[str, Any] = {}
    # No final status: still running, unless the job ended (then: not recorded).
    status, error = ("n/a" if job_ended else "running"), None
    for _, row in tp.iterrows():
        for k, v in row.items():
            name = k[3:] if isinstance(k, str) and k.startswith("hp.") else None
            if name and name not in SYSTEM_KEYS and not _missing(v):
                hparams[name] = _plain(v)
        if row.get("status") in ("done", "failed"):
            status = str(row["status"])
            if not _missing(row.get("error")):
                error = str(row["error"])

    col = "metric." + metric
    values = [float(v) for v in ep[col] if _num(v) is not None] if col in ep.columns else []
    best = (max if metric_mode == "max" else min)(values) if values else None
    seconds_col = [_num(v) for v in ep["seconds"]] if "seconds" in ep.columns else []
    seconds = sum(s for s in seconds_col if s is not None) if seconds_col else None

    energy_j, method = None, None
    if not ep.empty and "energy_j" in ep.columns:
        joules = [_num(v) for v in ep["energy_j"]]
        if all(j is not None for j in joules):
            energy_j = sum(joules)  # type: ignore[arg-type]
            method = _join_methods(ep["energy_method"]) if "energy_method" in ep.columns else None

    # What the trial ended on *in force*: its last epoch's config (a node
    # shared with other trials may have given it less than it decided on);
    # its last decision only when no epoch was recorded.
    config = None
    if not ep.empty and "config" in ep.columns:
        config = str(ep.sort_values("time")["config"].iloc[-1])
    elif not dec.empty and "config" in dec.columns:
        config = str(dec["config"].iloc[-1])
    how, detail, probe_s, probes = _how(dec, ep)
    times = [int(df["time"].min()) for df in (tp, ep, dec) if not df.empty]
    if not ep.empty and "seconds" in ep.columns:
        # An epoch record is written at the epoch's end: the trial began by its start.
        starts = ep["time"] - ep["seconds"].astype("float64").fillna(0.0) * 1e9
        times.append(int(starts.min()))
    ends = [int(df["time"].max()) for df in (tp, ep, dec) if not df.empty]
    return TrialReport(
        trial=tid,
        status=status,
        hparams=hparams,
        config=config,
        metric=best,
        epochs=len(ep),
        seconds=seconds,
        start_ns=min(times) if times else None,
        end_ns=max(ends) if ends else None,
        energy_j=energy_j,
        energy_method=method,
        how=how,
        how_detail=detail,
        probe_s=probe_s,
        probes=probes,
        error=error,
    )


def _how(dec: pd.DataFrame, ep: pd.DataFrame) -> tuple[str, str, float, tuple[ProbeSlot, ...]]:
    """How the trial's system config was chosen, from its decisions."""
    if dec.empty or "kind" not in dec.columns:
        return "n/a", "no decision recorded", 0.0, ()
    rows = [r for _, r in dec.iterrows()]
    kinds = [str(r["kind"]) for r in rows]
    last = rows[-1]
    reason = _text(last, "reason") or ""
    probes: list[ProbeSlot] = []
    probe_s = 0.0
    if K.PROBE in kinds:
        first_probe = kinds.index(K.PROBE)
        done = next(
            (
                i
                for i in range(first_probe, len(rows))
                if kinds[i] in (K.SETTLED, K.FALLBACK, K.DEGRADED)
            ),
            None,
        )
        t_end = (
            int(rows[done]["time"])
            if done is not None
            else int(max(dec["time"].max(), ep["time"].max() if not ep.empty else 0))
        )
        probing = (
            ep[ep["phase"] == Phase.PROBING.value]
            if "phase" in ep.columns and not ep.empty
            else ep.iloc[0:0]
        )
        epoch_s = [_num(v) for v in probing["seconds"]] if "seconds" in probing.columns else []
        probe_s = sum(v for v in epoch_s if v is not None)
        if probe_s <= 0:
            probe_s = (t_end - int(rows[first_probe]["time"])) / 1e9
        for i, r in enumerate(rows):
            if kinds[i] != K.PROBE:
                continue
            nxt = rows[i + 1]["time"] if i + 1 < len(rows) else None
            cfg = str(r["config"])
            on_cfg = probing[probing["config"] == cfg]["seconds"] if not probing.empty else []
            secs = [float(s) for s in on_cfg if _num(s) is not None]
            probes.append(
                ProbeSlot(
                    cfg,
                    (int(nxt) - int(r["time"])) / 1e9 if nxt is not None else None,
                    sum(secs) / len(secs) if secs else None,
                )
            )
    if K.DEGRADED in kinds:
        r = rows[kinds.index(K.DEGRADED)]
        return Phase.DEGRADED.value, _text(r, "reason") or "", probe_s, tuple(probes)
    if K.MATCHED in kinds:
        r = rows[kinds.index(K.MATCHED)]
        score, thr = _num(r.get("score")), _num(r.get("threshold"))
        words = f"ground truth matched, score {_fmt(score)}"
        if thr is not None:
            words += f" (threshold {_fmt(thr)})"
        return Phase.MATCHED.value, words, probe_s, tuple(probes)
    if K.SETTLED in kinds:
        r = rows[kinds.index(K.SETTLED)]
        cands = _text(r, "candidates") or ", ".join(p.config for p in probes)
        words = f"probed {cands}; {_text(r, 'reason') or ''}".strip()
        return Phase.PROBED.value, words, probe_s, tuple(probes)
    if K.FALLBACK in kinds:
        return Phase.FALLBACK.value, reason, probe_s, tuple(probes)
    if K.PROBE in kinds:
        return (
            Phase.PROBING.value,
            "still probing: " + ", ".join(p.config for p in probes),
            probe_s,
            tuple(probes),
        )
    if "fixed" in kinds:
        return "fixed", reason or "fixed by the baseline", probe_s, tuple(probes)
    return kinds[-1], reason, probe_s, tuple(probes)


def _node_energy(
    store: Any, epochs: pd.DataFrame, start_ns: int, end_ns: int
) -> tuple[float | None, str | None]:
    """The nodes' power samples integrated over the job (trapezoids, per node
    and source), or (None, None) without samples."""
    nodes = sorted({str(n) for n in epochs["node"]}) if "node" in epochs.columns else [None]
    total, methods = 0.0, []
    found = False
    for node in nodes:
        power = store.power(node, start_ns, end_ns)
        if power.empty or "watts" not in power.columns:
            continue
        groups = power.groupby("source") if "source" in power.columns else [("unknown", power)]
        for source, df in groups:
            df = df.sort_values("time")
            if len(df) < 2:
                continue
            t = df["time"].to_numpy(dtype="float64") / 1e9
            w = df["watts"].to_numpy(dtype="float64")
            total += float(((w[1:] + w[:-1]) / 2 * (t[1:] - t[:-1])).sum())
            methods.append(str(source))
            found = True
    return (total, _join_methods(methods)) if found else (None, None)


def _rows(df: pd.DataFrame, tid: str) -> pd.DataFrame:
    if df.empty or "trial" not in df.columns:
        return df
    return df[df["trial"].astype(str) == tid]


def _join_methods(methods: Any) -> str | None:
    seen = sorted({str(m) for m in methods if not _missing(m)})
    return "+".join(seen) if seen else None


def _first(df: pd.DataFrame, col: str) -> str | None:
    if df.empty or col not in df.columns:
        return None
    vals = [v for v in df[col] if not _missing(v)]
    return str(vals[0]) if vals else None


def _text(row: Any, key: str) -> str | None:
    if row is None:
        return None
    v = row.get(key)
    return None if _missing(v) else str(v)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or _missing(v):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _plain(v: Any) -> Any:
    """A stored hyperparameter as it was set: the frame turns ints into floats."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v.item() if hasattr(v, "item") else v


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"
