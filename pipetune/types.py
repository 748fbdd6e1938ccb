"""Core value types shared by every part of pipetune.

- :class:`SystemConfig` — one point of the system space (cores, memory, GPUs).
- :class:`SystemSpace` — the allowed values per dimension, validated against the node.
- :class:`Sample` — one perf interval of one trial.
- :class:`EpochProfile` — mean event rates over one epoch window.
- :class:`EpochResult` — what one epoch (or step window) cost and achieved.
- :class:`Decision` — what the system tuner decided and why.
- :class:`TrialRef` — which job/trial/node a point belongs to.

All are frozen: they cross threads (sampler, tuner, store writer) and
processes (daemon), so nobody may change one after it is made.
"""

from __future__ import annotations

import enum
import itertools
import os
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psutil

from pipetune.errors import ConfigError

_CONFIG_RE = re.compile(r"^\s*(\d+)c(?:/(\d+|-)m)?(?:/(\d+)g)?(?:/([a-z]+))?\s*$")


@dataclass(frozen=True, order=True)
class SystemConfig:
    """One system configuration of a trial.

    ``memory_mb=None`` means "no memory limit".  Printed as ``4c/8192m/0g``
    (``4c/-m/0g`` without a memory limit), and :meth:`parse` reads that back,
    so the string is also the ``config`` tag in the store.  ``parallel``:
    the trial's parallel strategy (``none``, ``ddp``, ``mp``, ``gpipe``),
    printed only when not ``none`` (``2c/-m/0g/ddp``), so the strings of
    every config without a strategy are what they always were.
    """

    cores: int
    memory_mb: int | None = None
    gpus: int = 0
    parallel: str = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.cores, int) or isinstance(self.cores, bool) or self.cores < 1:
            raise ConfigError(f"cores={self.cores!r}: must be an integer >= 1")
        if self.memory_mb is not None and (
            not isinstance(self.memory_mb, int) or self.memory_mb < 1
        ):
            raise ConfigError(f"memory_mb={self.memory_mb!r}: must be an integer >= 1 or unset")
        if not isinstance(self.gpus, int) or self.gpus < 0:
            raise ConfigError(f"gpus={self.gpus!r}: must be an integer >= 0")
        if self.parallel not in PARALLEL_STRATEGIES:
            raise ConfigError(
                f"parallel={self.parallel!r}: one of {', '.join(PARALLEL_STRATEGIES)}")

    def __str__(self) -> str:
        mem = "-" if self.memory_mb is None else str(self.memory_mb)
        tail = "" if self.parallel == "none" else f"/{self.parallel}"
        return f"{self.cores}c/{mem}m/{self.gpus}g{tail}"

    @classmethod
    def parse(cls, text: str) -> SystemConfig:
        """Read ``4c/8192m/0g`` or ``4c/8192m/0g/ddp`` (memory, GPU and strategy optional)."""
        m = _CONFIG_RE.match(text)
        if not m:
            raise ConfigError(f"system config {text!r}: expected e.g. '2c/4096m/0g'")
        mem = None if m.group(2) in (None, "-") else int(m.group(2))
        return cls(int(m.group(1)), mem, int(m.group(3) or 0), m.group(4) or "none")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cores": self.cores, "memory_mb": self.memory_mb, "gpus": self.gpus}
        if self.parallel != "none":
            out["parallel"] = self.parallel
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SystemConfig:
        try:
            mem = d.get("memory_mb")
            return cls(int(d["cores"]), None if mem is None else int(mem), int(d.get("gpus", 0)),
                       str(d.get("parallel") or "none"))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"system config {dict(d)!r}: {e}") from e


@dataclass(frozen=True)
class NodeInfo:
    """What a node has, to validate a space against (cores, memory, GPUs)."""

    cpus: int
    memory_mb: int
    gpus: int = 0
    name: str = ""

    @classmethod
    def local(cls) -> NodeInfo:
        """This host as the OS reports it.  GPUs are counted from
        ``CUDA_VISIBLE_DEVICES`` only when set; NVML detection lives in
        ``pipetune.control`` so this module stays free of device libraries."""
        gpus = 0
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        if visible and visible not in ("-1", "none"):
            gpus = len([v for v in visible.split(",") if v.strip()])
        return cls(
            cpus=os.cpu_count() or 1,
            memory_mb=int(psutil.virtual_memory().total // (1024 * 1024)),
            gpus=gpus,
            name=socket.gethostname(),
        )


def _as_tuple(values: Iterable[Any] | Any) -> tuple[Any, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        return (values,)
    return tuple(values)


#: Parallel strategies (pipetune.parallel's names; kept here so types imports no torch).
PARALLEL_STRATEGIES = ("none", "ddp", "mp", "gpipe")


@dataclass(frozen=True)
class SystemSpace:
    """The allowed system values per dimension.

    ``default`` is the config a trial runs with while it is profiled and
    whenever the tuner cannot do better; when not given it is the largest
    config of the space (nothing is taken away from a trial until pipetune
    knows it does not need it).
    """

    cores: tuple[int, ...] = (1,)
    memory_mb: tuple[int | None, ...] = (None,)
    gpus: tuple[int, ...] = (0,)
    default: SystemConfig | None = None
    #: Parallel strategies a trial may train with (``none``, ``ddp``, ``mp``,
    #: ``gpipe``) and worker counts.  One strategy (a fixed ``--parallel``) is
    #: part of every config of :meth:`configs`, so the trial's decisions and
    #: ground-truth records name what it trained with; several (``--parallel
    #: auto``) are probed beside the grid, whose configs then say ``none``
    #: (``pipetune.tuner.rules.strategy_plan``): a change of strategy restarts
    #: the trial's worker group at an epoch boundary (``pipetune.parallel.group``).
    parallel: tuple[str, ...] = ("none",)
    workers: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cores", _as_tuple(self.cores))
        object.__setattr__(self, "memory_mb", _as_tuple(self.memory_mb))
        object.__setattr__(self, "gpus", _as_tuple(self.gpus))
        for name in ("cores", "memory_mb", "gpus"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"space {name}: needs at least one value")
            if len(set(values)) != len(values):
                raise ConfigError(f"space {name}={list(values)}: values repeat")
        object.__setattr__(self, "parallel", _as_tuple(self.parallel))
        object.__setattr__(self, "workers", _as_tuple(self.workers))
        for name in ("parallel", "workers"):
            if not getattr(self, name):
                raise ConfigError(f"space {name}: needs at least one value")
        unknown = [p for p in self.parallel if p not in PARALLEL_STRATEGIES]
        if unknown:
            raise ConfigError(f"space parallel={list(self.parallel)}: {unknown} unknown "
                              f"(known: {', '.join(PARALLEL_STRATEGIES)})")
        if any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in self.workers):
            raise ConfigError(f"space workers={list(self.workers)}: integers >= 1")
        # Building each config validates every value (cores >= 1, ...).
        configs = self.configs()
        if self.default is not None and self.default.parallel != self.config_strategy:
            # A default from before the strategy was fixed (wrap's parallel=).
            object.__setattr__(self, "default",
                               replace(self.default, parallel=self.config_strategy))
        if self.default is None:
            object.__setattr__(self, "default", max(configs, key=_size_key))
        elif self.default not in configs:
            raise ConfigError(f"space default {self.default}: not one of the space's configs")

    @property
    def config_strategy(self) -> str:
        """The strategy every config of :meth:`configs` names: the space's one
        (fixed) strategy, or ``none`` when the tuner probes several beside the grid."""
        return self.parallel[0] if len(self.parallel) == 1 else "none"

    def configs(self) -> list[SystemConfig]:
        """Every config of the grid, smallest first."""
        grid = itertools.product(self.cores, self.memory_mb, self.gpus)
        return sorted((SystemConfig(c, m, g, self.config_strategy) for c, m, g in grid),
                      key=_size_key)

    def __len__(self) -> int:
        return len(self.cores) * len(self.memory_mb) * len(self.gpus)

    def validate(self, node: NodeInfo | None = None) -> SystemSpace:
        """Raise :class:`ConfigError` if any value does not fit ``node``
        (this host by default); return ``self`` for chaining."""
        node = node or NodeInfo.local()
        too_many = [c for c in self.cores if c > node.cpus]
        if too_many:
            raise ConfigError(
                f"space cores={list(self.cores)}: node has {node.cpus} CPUs, {too_many} do not fit"
            )
        too_big = [m for m in self.memory_mb if m is not None and m > node.memory_mb]
        if too_big:
            raise ConfigError(
                f"space memory_mb={list(self.memory_mb)}: node has {node.memory_mb} MB, "
                f"{too_big} do not fit"
            )
        if max(self.gpus) > node.gpus:
            raise ConfigError(f"space gpus={list(self.gpus)}: node has {node.gpus} visible GPUs")
        return self

    @classmethod
    def parse(cls, items: Sequence[str] | str) -> SystemSpace:
        """Read ``["cores=1,2", "memory_mb=1024,none", "default=2c/-m/0g"]``.

        ``memory`` is accepted for ``memory_mb``; ``none``/``-`` means no limit.
        """
        if isinstance(items, str):
            items = items.split()
        kwargs: dict[str, Any] = {}
        for item in items:
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not value.strip():
                raise ConfigError(f"space item {item!r}: expected KEY=V1,V2,...")
            if key == "memory":
                key = "memory_mb"
            if key == "default":
                kwargs["default"] = SystemConfig.parse(value)
                continue
            if key == "parallel":
                kwargs["parallel"] = tuple(v.strip().lower() for v in value.split(","))
                continue
            if key not in ("cores", "memory_mb", "gpus", "workers"):
                raise ConfigError(
                    f"space item {item!r}: unknown dimension {key!r} "
                    "(allowed: cores, memory_mb, gpus, parallel, workers, default)"
                )
            parsed: list[int | None] = []
            for v in value.split(","):
                v = v.strip().lower()
                if key == "memory_mb" and v in ("none", "-", ""):
                    parsed.append(None)
                    continue
                try:
                    parsed.append(int(v))
                except ValueError as e:
                    raise ConfigError(f"space {key}={value!r}: {v!r} is not an integer") from e
            kwargs[key] = tuple(parsed)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cores": list(self.cores),
            "memory_mb": list(self.memory_mb),
            "gpus": list(self.gpus),
            "default": str(self.default),
            "parallel": list(self.parallel),
            "workers": list(self.workers),
        }


def _size_key(c: SystemConfig) -> tuple[int, int, int]:
    # No memory limit counts as the largest memory.
    return (c.gpus, c.cores, c.memory_mb if c.memory_mb is not None else 1 << 62)


@dataclass(frozen=True)
class TrialRef:
    """Which job, trial and node a measurement belongs to (the store's tags)."""

    job: str
    trial: str
    node: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class Sample:
    """One perf interval of one trial.

    ``counts`` are perf's values for the interval (already scaled by perf for
    multiplexing), keyed by event name; ``running_pct`` is the share of the
    interval the counter was actually on the PMU (100 for software events).
    """

    timestamp: float  # end of the interval, seconds since the epoch
    interval_s: float
    counts: Mapping[str, float]
    running_pct: Mapping[str, float] = field(default_factory=dict)

    def rates(self) -> dict[str, float]:
        """Counts per second of this interval."""
        if self.interval_s <= 0:
            return {}
        return {k: v / self.interval_s for k, v in self.counts.items()}


@dataclass(frozen=True)
class EpochProfile:
    """Mean rate (per second) of each event over one epoch window.

    ``events`` is the set the profile was made from: comparisons between
    profiles only use events both sides have.
    """

    rates: Mapping[str, float]
    start: float
    end: float
    n_samples: int
    epoch: int = 0

    @property
    def events(self) -> tuple[str, ...]:
        return tuple(sorted(self.rates))

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (a stage record keeps a trial's profile)."""
        return {"rates": dict(self.rates), "start": self.start, "end": self.end,
                "n_samples": self.n_samples, "epoch": self.epoch}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpochProfile:
        """The profile :meth:`to_dict` wrote.

        Raises:
            TypeError / ValueError / KeyError: not such a dict.
        """
        return cls(rates={str(k): float(v) for k, v in d["rates"].items()},
                   start=float(d.get("start", 0.0)), end=float(d.get("end", 0.0)),
                   n_samples=int(d.get("n_samples", 0)), epoch=int(d.get("epoch", 0)))


@dataclass(frozen=True)
class EpochResult:
    """What one epoch (or step window) under one config cost and achieved."""

    epoch: int
    config: SystemConfig
    seconds: float
    steps: int = 0
    energy_j: float | None = None
    energy_method: str | None = None  # "rapl" | "nvml" | "estimated"
    metrics: Mapping[str, float] = field(default_factory=dict)


class Phase(str, enum.Enum):
    """Where a trial's system side stands and what it decided: the tuner's
    states (the first five), the phase a policy reports to Tune and writes
    with each epoch (``pt_phase``; the store's ``phase`` tag) and the kind of
    each decision (the store's ``decision`` measurement, ``kind`` tag).  One
    enum for every place that spelled these as strings (``DecisionKind`` is
    the same enum under the name a decision reads best with); the values are
    those strings, kept as they were because the store and the reports read
    them."""

    START = "start"  # the tuner: not started yet
    PROFILING = "profiling"  # the tuner: sampling the profile at the default config
    PROBING = "probing"  # the tuner: measuring candidate configs
    SETTLED = "settled"  # the tuner: a config chosen for the rest of the trial
    DEGRADED = "degraded"  # system side failed; training continues untouched
    STARTING = "starting"  # a policy whose tuner has not reported yet
    MATCHED = "matched"  # settled on the ground truth's config
    PROBED = "probed"  # settled on the best probed config
    FALLBACK = "fallback"  # settled on the default: could not do better
    FIXED = "fixed"  # one config for the whole trial
    V1 = "v1"  # baseline V1: the default config for every trial
    V2 = "v2"  # baseline V2: the config Tune sampled
    # decisions only (a decision kind that is not also a phase)
    PROBE = "probe"  # the next config to try
    HINTED = "hinted"  # workload known by name: its cluster's config applied at start, to confirm

    def __str__(self) -> str:
        return str(self.value)


#: What the tuner decided (DESIGN §5): MATCHED, HINTED, PROBE, SETTLED,
#: FALLBACK, DEGRADED, FIXED.  The same enum as :class:`Phase`.
DecisionKind = Phase


@dataclass(frozen=True)
class Decision:
    """One decision of a trial's system tuner, with the reason in words."""

    kind: DecisionKind
    config: SystemConfig
    reason: str = ""
    epoch: int = 0
    score: float | None = None
    threshold: float | None = None
    objective: str | None = None
    candidates: tuple[SystemConfig, ...] = ()
