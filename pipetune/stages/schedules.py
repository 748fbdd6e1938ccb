"""Piecewise-constant hyperparameter schedules, as Tune search-space values.

A schedule makes one hyperparameter a *sequence* of values, one per epoch:

- :class:`Constant` — the same value every epoch (a plain number is one);
- :class:`StepDecay` — ``initial``, multiplied by ``rate`` at the start of
  every epoch listed in ``at`` (learning-rate step decay);
- :class:`GrowingBatch` — ``initial``, multiplied by ``factor`` (rounded to
  an integer) at the start of every epoch in ``at`` (growing batch size).

Epochs are 0-based, like the bundled workloads' loop: ``StepDecay(0.1, 0.5,
at=(2,))`` gives 0.1 for epochs 0 and 1 and 0.05 from epoch 2 on.

In Tune's ``param_space`` a schedule is declared with :func:`step_decay`,
:func:`growing_batch` or :func:`constant`, whose arguments may be Tune
search primitives (``tune.grid_search``, ``tune.choice``, ``tune.uniform``
…); Tune resolves them like any nested dict, so grid and random search
need nothing special, and ``params.json`` stays plain JSON::

    param_space = {"lr": stages.step_decay(initial=tune.grid_search([0.1, 0.05]),
                                           rate=tune.grid_search([0.1, 0.2]),
                                           at=tune.grid_search([[2, 4], [3, 6]]))}
    # in train(config), once per epoch:
    lr = stages.value(config["lr"], epoch)

:func:`parse` turns a resolved dict (or a number, or a :class:`Schedule`)
into a :class:`Schedule`; it is the one place a malformed schedule is
rejected, with a :class:`~pipetune.errors.ConfigError`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipetune.errors import ConfigError

__all__ = [
    "KINDS",
    "Constant",
    "GrowingBatch",
    "Schedule",
    "StepDecay",
    "constant",
    "growing_batch",
    "is_schedule",
    "parse",
    "step_decay",
    "value",
]

#: The ``"schedule"`` tag of each kind in a param-space dict.
KINDS = ("constant", "step", "batch")


class Schedule(abc.ABC):
    """A piecewise-constant sequence of values over 0-based epochs.

    Immutable and hashable: two trials with equal schedules have equal
    stages.  Subclasses define :meth:`at_epoch` and :meth:`change_epochs`.
    """

    @abc.abstractmethod
    def at_epoch(self, epoch: int) -> Any:
        """The value in force during ``epoch`` (0-based)."""

    @abc.abstractmethod
    def change_epochs(self) -> tuple[int, ...]:
        """Epochs at whose start the value may change, ascending."""

    @abc.abstractmethod
    def to_config(self) -> dict[str, Any]:
        """The plain-JSON dict :func:`parse` reads back."""

    def values(self, epochs: int) -> tuple[Any, ...]:
        """The value of each of the first ``epochs`` epochs."""
        return tuple(self.at_epoch(e) for e in range(epochs))


def _check_epoch(epoch: int) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ConfigError(f"epoch {epoch!r}: must be an integer >= 0")


def _check_at(at: Any, what: str) -> tuple[int, ...]:
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        at = (at,)
    try:
        out = tuple(int(a) for a in at)
        if any(float(a) != int(a) for a in at):
            raise ValueError
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what} at={at!r}: expected a list of epochs (integers)") from e
    if any(a < 1 for a in out) or list(out) != sorted(set(out)):
        raise ConfigError(
            f"{what} at={list(out)}: epochs must be >= 1, ascending and distinct"
        )
    return out


def _check_number(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ConfigError(f"{what}={x!r}: expected a finite number")
    return float(x)


@dataclass(frozen=True)
class Constant(Schedule):
    """One value for every epoch."""

    value: Any

    def at_epoch(self, epoch: int) -> Any:
        _check_epoch(epoch)
        return self.value

    def change_epochs(self) -> tuple[int, ...]:
        return ()

    def to_config(self) -> dict[str, Any]:
        return {"schedule": "constant", "value": self.value}


@dataclass(frozen=True)
class StepDecay(Schedule):
    """``initial × rate**k`` where k = how many epochs of ``at`` are <= epoch."""

    initial: float
    rate: float
    at: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "initial", _check_number(self.initial, "step decay initial"))
        object.__setattr__(self, "rate", _check_number(self.rate, "step decay rate"))
        object.__setattr__(self, "at", _check_at(self.at, "step decay"))
        if not self.initial > 0 or not self.rate > 0:
            raise ConfigError(
                f"step decay initial={self.initial}, rate={self.rate}: both must be > 0"
            )

    def at_epoch(self, epoch: int) -> float:
        _check_epoch(epoch)
        value = self.initial
        # Multiplied step by step (not rate**k) so the float is the same one a
        # hand-written decay loop would produce.
        for a in self.at:
            if a <= epoch:
                value *= self.rate
        return value

    def change_epochs(self) -> tuple[int, ...]:
        return self.at

    def to_config(self) -> dict[str, Any]:
        return {"schedule": "step", "initial": self.initial, "rate": self.rate, "at": list(self.at)}


@dataclass(frozen=True)
class GrowingBatch(Schedule):
    """An integer (batch size) multiplied by ``factor`` at each epoch of ``at``."""

    initial: int
    factor: float = 2.0
    at: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.initial, bool) or not isinstance(self.initial, int) or self.initial < 1:
            raise ConfigError(f"growing batch initial={self.initial!r}: must be an integer >= 1")
        factor = _check_number(self.factor, "growing batch factor")
        if factor < 1:
            raise ConfigError(f"growing batch factor={factor}: must be >= 1")
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "at", _check_at(self.at, "growing batch"))

    def at_epoch(self, epoch: int) -> int:
        _check_epoch(epoch)
        value = float(self.initial)
        for a in self.at:
            if a <= epoch:
                value *= self.factor
        return int(round(value))

    def change_epochs(self) -> tuple[int, ...]:
        return self.at

    def to_config(self) -> dict[str, Any]:
        return {
            "schedule": "batch",
            "initial": self.initial,
            "factor": self.factor,
            "at": list(self.at),
        }


def constant(value: Any) -> dict[str, Any]:
    """A constant schedule for ``param_space`` (``value`` may be a Tune domain)."""
    return {"schedule": "constant", "value": value}


def step_decay(initial: Any, rate: Any, at: Any) -> dict[str, Any]:
    """A step-decay schedule for ``param_space``; any argument may be a Tune
    domain (``at`` a domain over lists of epochs, or a list of domains)."""
    return {"schedule": "step", "initial": initial, "rate": rate, "at": at}


def growing_batch(initial: Any, factor: Any, at: Any) -> dict[str, Any]:
    """A growing-batch-size schedule for ``param_space`` (arguments may be Tune domains)."""
    return {"schedule": "batch", "initial": initial, "factor": factor, "at": at}


def is_schedule(obj: Any) -> bool:
    """Whether ``obj`` is a schedule (object or resolved param-space dict)."""
    return isinstance(obj, Schedule) or (isinstance(obj, Mapping) and "schedule" in obj)


def parse(obj: Any) -> Schedule:
    """A :class:`Schedule` from a schedule, a resolved param-space dict, or a
    plain value (a :class:`Constant`).

    Raises:
        ConfigError: an unknown ``schedule`` kind, missing or extra keys, or
            bad values (the message names which).
    """
    if isinstance(obj, Schedule):
        return obj
    if not isinstance(obj, Mapping):
        return Constant(obj)
    spec = dict(obj)
    kind = spec.pop("schedule", None)
    fields = {"constant": ("value",), "step": ("initial", "rate", "at"),
              "batch": ("initial", "factor", "at")}
    if kind not in fields:
        raise ConfigError(f"schedule {kind!r}: must be one of {', '.join(KINDS)}")
    missing = [k for k in fields[kind] if k not in spec]
    extra = sorted(set(spec) - set(fields[kind]))
    if missing or extra:
        raise ConfigError(
            f"{kind} schedule {obj!r}: "
            + ", ".join(
                part for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unknown {', '.join(extra)}" if extra else "",
                ) if part
            )
        )
    if any(hasattr(v, "sample") or (isinstance(v, Mapping) and "grid_search" in v)
           for v in spec.values()):
        raise ConfigError(
            f"{kind} schedule {obj!r} still holds a search domain: read it from the trial's "
            "config (Tune resolves it), not from the param space"
        )
    if kind == "constant":
        return Constant(spec["value"])
    if kind == "step":
        return StepDecay(spec["initial"], spec["rate"], spec["at"])
    initial = spec["initial"]
    if isinstance(initial, float) and initial.is_integer():
        initial = int(initial)
    return GrowingBatch(initial, spec["factor"], spec["at"])


def value(obj: Any, epoch: int) -> Any:
    """The value of hyperparameter ``obj`` (a schedule, its dict, or a plain
    value) in force during ``epoch`` (0-based).  The one call a training loop
    needs per scheduled hyperparameter."""
    return parse(obj).at_epoch(epoch)
