"""Profile → feature vector, made comparable across runs and trials.

Raw rates are a poor distance space: one huge counter (page faults, context
switches) decides every cluster, and the same workload on 1 or 2 cores has
twice the rates.  So :class:`FeatureScaler`

1. keeps only events every training record has (and, at match time, the
   events the new profile has too);
2. divides count-like rates by the CPU time rate (``task-clock`` …), so a
   feature is "events per CPU-second", independent of the cores granted —
   level-like figures (RSS, threads) and the CPU rate itself are kept as is;
3. takes ``log1p`` (rates span orders of magnitude; ratios matter, not
   differences);
4. standardises each feature with the training mean and a floored standard
   deviation, so a feature that happens to be constant in the history cannot
   explode a distance;
5. where the records name their workloads, weights each feature by how well
   it tells workloads apart (:func:`separation_weights`): without a PMU most
   figures are scheduler and allocator rates that move with the node's load
   as much between two runs of one workload as between workloads, and summed
   with equal weight their noise drowns the few figures that do separate;
6. conditions the comparison on the cores in force while profiled
   (``proc.cpus``, the size of the trial's affinity mask): a profile taken
   on a number of CPUs the history never saw is compared only on the
   features that do not move with the core count (not
   :data:`CORE_SENSITIVE`, nor the CPU rate itself).  Two packed trials on
   one CPU each run their thread pools at one thread: futex calls per
   CPU-second fall 5× (k-means) to over 1000× (LeNet-5) against the same
   workload alone on two cores (``bundled-packed.json``),
   which no within-workload spread of a quiet history covers.  A history
   with runs at several core counts keeps every feature, and the
   within-workload spread it measures across them sets the weights.

Its parameters are plain lists, so a fitted scaler is saved as JSON.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipetune.errors import GroundTruthError

#: CPU-time rate events, in order of preference (perf software events, then
#: procfs figures of the profiler).  Their rate is "CPU-seconds per second"
#: up to a unit factor, which cancels after standardisation.
CPU_EVENTS: tuple[str, ...] = (
    "task-clock",
    "cpu-clock",
    "proc.cpu_s",
    "proc.cpu_time",
    "cpu_s",
    "cpu_time",
)

#: CPU-seconds per unit of a CPU event (perf counts task-clock in msec), so
#: features are counts per CPU-*second*: log1p compresses values below 1, so
#: the unit matters (per CPU-millisecond every rate would look like zero).
CPU_EVENT_SECONDS: dict[str, float] = {"task-clock": 1e-3, "cpu-clock": 1e-3}

#: Substrings that mark level-like figures (not counts): not divided by CPU time.
#: ("processes": a count of processes is a level; divided by CPU time it
#: became one over the CPU rate, another copy of the core count.)
LEVEL_MARKERS: tuple[str, ...] = (
    "rss", "vms", "memory", "mem_mb", "threads", "num_fds", "util", "processes", "cpus",
)

#: The profiler's gauge of the CPUs the trial may run on (its cpuset or
#: affinity, :mod:`pipetune.profiler.procfs`): the condition a profile was
#: taken in, never a feature.
CPUS_EVENT = "proc.cpus"

#: Figures that move with the number of cores a trial runs on rather than
#: with the workload: thread-pool synchronisation (futex calls dominate the
#: syscalls of a multi-threaded trainer), scheduling (switches, wake-ups,
#: migrations) and the size of the thread pool.  Measured on the bundled
#: workloads, quiet on two CPUs against packed on one
#: (``benchmarks/groundtruth_ari.py --test``).  The CPU rate (``cpu_event``)
#: is one too: it is the cores used.
CORE_SENSITIVE: tuple[str, ...] = (
    "syscalls:sys_enter_futex",
    "raw_syscalls:sys_enter",
    "context-switches",
    "cpu-migrations",
    "sched:sched_wakeup",
    "sched:sched_switch",
    "proc.ctx_voluntary",
    "proc.ctx_involuntary",
    "proc.threads",
)

#: Core counts closer than this are the same condition (``proc.cpus`` is a
#: time-weighted mean, fractional when the share moved inside the window).
CPUS_TOLERANCE = 0.25


def _within_std(raw: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Pooled within-group standard deviation per column; the overall one
    when fewer than two labelled groups have repeated rows."""
    if len(labels) != len(raw):
        raise GroundTruthError(f"{len(labels)} labels for {len(raw)} profiles")
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        if lab:
            groups.setdefault(lab, []).append(i)
    repeated = [idx for idx in groups.values() if len(idx) > 1]
    if len(repeated) < 2:
        return raw.std(axis=0)
    ss = sum(((raw[idx] - raw[idx].mean(axis=0)) ** 2).sum(axis=0) for idx in repeated)
    dof = sum(len(idx) - 1 for idx in repeated)
    return np.sqrt(ss / dof)


def separation_weights(z: np.ndarray, labels: Sequence[str]) -> np.ndarray | None:
    """Per-feature weights from the one-way ANOVA F ratio of the labelled rows
    (between-workload over within-workload variance, scikit-learn's
    ``f_classif``): ``sqrt(max(F - 1, 0))``, scaled to a mean square of 1.

    Why this form: in a feature measured in its run-to-run noise, F - 1
    estimates the squared spread of workload means over the noise; weighting
    by its root makes a feature count as much as it separates, and one that
    separates no better than chance (F <= 1: context switches, wake-ups and
    migrations on a shared node) count not at all.  Learned from the history
    itself, so a figure that varies with the trials' hyperparameters (RSS
    with the batch size) loses weight exactly as much as it varies.
    Measured on the bundled workloads (benchmarks/groundtruth_ari.py): the
    held-out run's nearest workload centroid was right 24/24 weighted against
    18/24 unweighted.

    None when fewer than two workloads have repeated runs (no within spread
    to judge by) or no feature separates better than chance.
    """
    from sklearn.feature_selection import f_classif

    labs = np.asarray([str(x) for x in labels])
    keep = labs != ""
    counts = Counter(labs[keep].tolist())
    if sum(1 for n in counts.values() if n > 1) < 2 or len(counts) < 2:
        return None
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant features: F is nan/inf, handled below
        f, _ = f_classif(z[keep], labs[keep])
    # inf: constant within every workload yet different between them, which
    # separates perfectly; it gets the largest finite F, not infinity.
    # nan (constant everywhere) separates nothing.
    perfect = np.isposinf(f)
    f = np.where(np.isfinite(f), f, 0.0)
    f[perfect] = f.max()
    w = np.sqrt(np.maximum(f - 1.0, 0.0))
    if not (w > 0).any():
        return None
    return w / np.sqrt((w**2).mean())


def is_level(event: str, markers: Sequence[str] = LEVEL_MARKERS) -> bool:
    e = event.lower()
    return any(m in e for m in markers)


@dataclass(frozen=True)
class FeatureScaler:
    """Fitted feature transformation (see the module docstring)."""

    events: tuple[str, ...]
    cpu_event: str | None
    levels: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: Per-feature weights (:func:`separation_weights`); empty = all 1.
    weight: tuple[float, ...] = ()
    #: The core counts (``proc.cpus``) the history was profiled at; empty:
    #: unknown (older files, profiles without the gauge), no conditioning.
    fit_cpus: tuple[float, ...] = ()
    #: The features left out of a comparison with a profile taken at another
    #: core count (:data:`CORE_SENSITIVE` and the CPU rate, those fitted).
    core_sensitive: tuple[str, ...] = ()

    # -- fitting -------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        rates: Sequence[Mapping[str, float]],
        *,
        min_std: float = 0.25,
        labels: Sequence[str] | None = None,
        cpu_events: Sequence[str] = CPU_EVENTS,
        level_markers: Sequence[str] = LEVEL_MARKERS,
        weighted: bool = True,
        core_sensitive: Sequence[str] = CORE_SENSITIVE,
    ) -> FeatureScaler:
        """Fit on the rates of the training records.

        ``min_std`` is in log units (0.25 ≈ 28 %): no feature counts finer
        differences than that, so a history of one workload (std ≈ 0) still
        compares sensibly.  Events that never changed in the history are
        left out (they cannot tell workloads apart).

        ``labels`` (the records' workload names, where known) turn the
        scaling into run-to-run noise units: each feature is divided by its
        pooled *within-workload* standard deviation instead of its overall
        one.  On a shared node without a PMU, context switches and wake-ups
        vary more between two runs of one workload than between workloads;
        measured in their own noise they stop drowning the stable figures
        (RSS, threads, futex and page-allocation rates).  Needs at least two
        workloads with repeated runs; otherwise the overall spread is used.
        With ``weighted`` they also weight each feature by how well it
        separates the named workloads (:func:`separation_weights`).

        Where every record has ``proc.cpus``, the core counts seen are kept
        (``fit_cpus``) and ``core_sensitive`` (plus the CPU rate) named as
        the features :meth:`transform` leaves out for a profile taken at
        another core count; ``proc.cpus`` itself is never a feature.

        Raises:
            GroundTruthError: no records, or no event that every record has.
        """
        if not rates:
            raise GroundTruthError("no profiles to fit features on")
        common = set(rates[0])
        for r in rates[1:]:
            common &= set(r)
        if not common:
            raise GroundTruthError(
                "the profiles share no event; were they made on hosts with different perf events?"
            )
        cpu_event = next((e for e in cpu_events if e in common), None)
        fit_cpus: tuple[float, ...] = ()
        if CPUS_EVENT in common:
            fit_cpus = tuple(sorted({round(float(r[CPUS_EVENT]), 2) for r in rates}))
            common.discard(CPUS_EVENT)
        if not common:
            raise GroundTruthError("the profiles share no event but the CPUs in force")
        events = tuple(sorted(common))
        levels = tuple(e for e in events if is_level(e, level_markers))
        partial = cls(events, cpu_event, levels, (0.0,) * len(events), (1.0,) * len(events))
        raw = np.vstack([partial._raw(r, events) for r in rates])
        if len(rates) > 1:
            # An event that never changed in the whole history (most often one
            # that never fired) tells no workload from another; kept, it
            # would only inflate every noise floor.
            varies = raw.max(axis=0) - raw.min(axis=0) > 1e-9
            if varies.any() and not varies.all():
                events = tuple(e for e, v in zip(events, varies, strict=True) if v)
                levels = tuple(e for e in levels if e in events)
                raw = raw[:, varies]
        mean = raw.mean(axis=0)
        std = np.maximum(_within_std(raw, labels) if labels is not None else raw.std(axis=0),
                         min_std)
        weight = None
        if labels is not None and weighted:
            weight = separation_weights((raw - mean) / std, labels)
        sensitive = tuple(e for e in events if e in set(core_sensitive) or e == cpu_event)
        return cls(events, cpu_event, levels, tuple(map(float, mean)), tuple(map(float, std)),
                   () if weight is None else tuple(map(float, weight)),
                   fit_cpus=fit_cpus, core_sensitive=sensitive if fit_cpus else ())

    # -- transforming ----------------------------------------------------------------

    def _raw(self, rates: Mapping[str, float], events: Sequence[str]) -> np.ndarray:
        cpu = rates.get(self.cpu_event) if self.cpu_event else None
        if cpu is not None and cpu > 0:
            cpu = cpu * CPU_EVENT_SECONDS.get(self.cpu_event or "", 1.0)
        else:
            cpu = None
        level = set(self.levels)
        out = np.empty(len(events))
        for i, e in enumerate(events):
            v = max(float(rates.get(e, 0.0)), 0.0)
            if cpu is not None and e != self.cpu_event and e not in level:
                v = v / cpu
            out[i] = math.log1p(v)
        return out

    def shared(self, rates: Mapping[str, float]) -> np.ndarray:
        """Boolean mask of the scaler's events that ``rates`` has."""
        return np.array([e in rates for e in self.events], dtype=bool)

    def other_cores(self, rates: Mapping[str, float]) -> bool:
        """Whether ``rates`` were profiled at a core count the history never saw
        (False when either side does not say)."""
        cpus = rates.get(CPUS_EVENT)
        if not self.fit_cpus or cpus is None:
            return False
        return all(abs(float(cpus) - c) > CPUS_TOLERANCE for c in self.fit_cpus)

    def transform(self, rates: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """(standardised vector over all scaler events, mask of events compared).

        Missing events are 0 in the vector and False in the mask: callers
        compare only the masked dimensions.  So are the core-sensitive
        features of a profile taken at another core count (:meth:`other_cores`).
        """
        mask = self.shared(rates)
        if self.core_sensitive and self.other_cores(rates):
            sensitive = set(self.core_sensitive)
            mask &= np.array([e not in sensitive for e in self.events], dtype=bool)
        if self.cpu_event and self.cpu_event not in rates:
            # Without the CPU rate the per-CPU-second features are not comparable.
            level = set(self.levels)
            mask &= np.array([e in level for e in self.events], dtype=bool)
        raw = self._raw(rates, self.events)
        z = (raw - np.asarray(self.mean)) / np.asarray(self.std)
        if self.weight:
            z = z * np.asarray(self.weight)
        z[~mask] = 0.0
        return z, mask

    @property
    def weights(self) -> np.ndarray:
        """The feature weights as an array (all 1 when unweighted)."""
        return np.asarray(self.weight) if self.weight else np.ones(len(self.events))

    def transform_many(self, rates: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Matrix of standardised vectors; every record must have every event."""
        rows = []
        for r in rates:
            z, mask = self.transform(r)
            if not mask.all():
                missing = [e for e, m in zip(self.events, mask, strict=True) if not m]
                raise GroundTruthError(f"a record lacks events {missing[:5]}")
            rows.append(z)
        return np.vstack(rows) if rows else np.empty((0, len(self.events)))

    # -- persistence -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": list(self.events),
            "cpu_event": self.cpu_event,
            "levels": list(self.levels),
            "mean": list(self.mean),
            "std": list(self.std),
            "weight": list(self.weight),
            "fit_cpus": list(self.fit_cpus),
            "core_sensitive": list(self.core_sensitive),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureScaler:
        events = tuple(str(e) for e in d["events"])
        mean = tuple(float(x) for x in d["mean"])
        std = tuple(float(x) for x in d["std"])
        if not (len(events) == len(mean) == len(std)) or not events:
            raise ValueError("features: events, mean and std differ in length or are empty")
        if any(not math.isfinite(s) or s <= 0 for s in std):
            raise ValueError("features: std must be positive")
        weight = tuple(float(x) for x in d.get("weight", ()))  # absent in older files
        if weight and (len(weight) != len(events)
                       or any(not math.isfinite(w) or w < 0 for w in weight)):
            raise ValueError("features: weight must be one non-negative number per event")
        cpu = d.get("cpu_event")
        # absent in older files: no conditioning on the cores
        fit_cpus = tuple(float(x) for x in d.get("fit_cpus", ()))
        sensitive = tuple(str(e) for e in d.get("core_sensitive", ()))
        return cls(events, None if cpu is None else str(cpu),
                   tuple(str(e) for e in d.get("levels", ())), mean, std, weight,
                   fit_cpus=fit_cpus, core_sensitive=sensitive)
