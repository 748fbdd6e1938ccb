"""The ``--schedule`` flag of ``pipetune tune``: a grid of schedules in one word.

Syntax (one flag per hyperparameter; lists are grids, every combination is
a trial)::

    KEY=step:INITIAL[,INITIAL…]/rate=R[,R…]/at=E[,E…][/at=E[,E…]…]
    KEY=batch:INITIAL[,INITIAL…]/factor=F[,F…]/at=E[,E…][/at=E[,E…]…]
    KEY=const:V[,V…]

Each ``at=`` field adds one change point; its list is the grid of epochs
(0-based, the value changes at the start of that epoch) for that point.
Combinations whose change epochs are not strictly ascending are left out.
Example — 2 initial rates x 2 decay rates x 3 x 3 decay epochs = 36 trials::

    --schedule lr=step:0.1,0.05/rate=0.1,0.2/at=2,3,4/at=6,8,10
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from pipetune.errors import ConfigError
from pipetune.stages.schedules import parse

__all__ = ["parse_schedule_flag", "schedule_grid"]

_FIELDS = {"step": "rate", "batch": "factor"}


def _numbers(text: str, flag: str, what: str, *, integer: bool = False) -> list[Any]:
    out: list[Any] = []
    for part in text.split(","):
        try:
            out.append(int(part) if integer else float(part))
        except ValueError:
            kind = "integers" if integer else "numbers"
            raise ConfigError(
                f"--schedule {flag!r}: {what} {text!r} must be comma-separated {kind}"
            ) from None
    return out


def parse_schedule_flag(flag: str) -> tuple[str, list[dict[str, Any]]]:
    """``(key, [schedule config, …])`` for one ``--schedule`` word.

    Raises:
        ConfigError: the word does not follow the syntax in the module
            docstring (the message names the part that does not).
    """
    key, sep, rest = flag.partition("=")
    kind, colon, body = rest.partition(":")
    if not sep or not key or not colon or kind not in ("step", "batch", "const"):
        raise ConfigError(
            f"--schedule {flag!r}: expected KEY=step:…, KEY=batch:… or KEY=const:… "
            "(e.g. lr=step:0.1,0.05/rate=0.1,0.2/at=2,4)"
        )
    parts = body.split("/")
    if kind == "const":
        if len(parts) != 1:
            raise ConfigError(f"--schedule {flag!r}: a const schedule takes only values")
        return key, [{"schedule": "constant", "value": v}
                     for v in _numbers(parts[0], flag, "values")]
    initials = _numbers(parts[0], flag, "initial values", integer=kind == "batch")
    rates: list[float] = []
    ats: list[list[int]] = []
    for part in parts[1:]:
        name, eq, values = part.partition("=")
        if name == _FIELDS[kind] and eq and not rates:
            rates = _numbers(values, flag, name)
        elif name == "at" and eq:
            ats.append(_numbers(values, flag, "at", integer=True))
        else:
            raise ConfigError(
                f"--schedule {flag!r}: unexpected {part!r} (a {kind} schedule takes "
                f"/{_FIELDS[kind]}=… once and /at=… per change point)"
            )
    if not rates or not ats:
        raise ConfigError(f"--schedule {flag!r}: needs /{_FIELDS[kind]}=… and at least one /at=…")
    out = []
    for initial, rate, *epochs in itertools.product(initials, rates, *ats):
        if list(epochs) != sorted(set(epochs)):
            continue
        config = {"schedule": kind, "initial": initial, _FIELDS[kind]: rate, "at": list(epochs)}
        parse(config)  # ConfigError for a bad value, named
        out.append(config)
    if not out:
        raise ConfigError(f"--schedule {flag!r}: no combination has ascending change epochs")
    return key, out


def schedule_grid(flags: Iterable[str]) -> list[dict[str, Any]]:
    """Every combination of the flags' schedules: one dict of hyperparameters
    per trial.

    Raises:
        ConfigError: a malformed flag, or two flags for one key.
    """
    keys: list[str] = []
    options: list[list[dict[str, Any]]] = []
    for flag in flags:
        key, values = parse_schedule_flag(flag)
        if key in keys:
            raise ConfigError(f"--schedule: {key!r} given twice")
        keys.append(key)
        options.append(values)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*options)]
