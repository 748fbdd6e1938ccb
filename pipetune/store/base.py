"""The store interface: points in, DataFrames out.

- :class:`Point` — one time-series point (measurement, tags, fields, time in ns),
  the same data model as InfluxDB so every backend stores the same thing.
- :class:`Backend` — the small abstract core a backend implements:
  ``write_points`` (idempotent!), ``query`` and ``ping``.
- :class:`Store` — what the rest of pipetune uses: non-blocking ``write`` through
  a bounded queue and a writer thread, spooling to disk while the backend is
  down, and the typed helpers (``write_sample``, ``epochs()`` …) built on the
  core, so a new backend writes little.

Contract of a backend: ``write_points`` either stores every point of the batch
or raises; writing a point again with the same measurement, tags and time
*replaces* it (InfluxDB's own rule, a unique key in SQLite).  That is what
makes a spool replay safe: nothing is lost, and nothing is written twice.
Backends are used from the writer thread and from query callers at once, so
they must be thread-safe.
"""

from __future__ import annotations

import abc
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

#: The measurements of DESIGN §11, with the tags each one carries.
MEASUREMENT_TAGS: dict[str, tuple[str, ...]] = {
    "sample": ("node", "job", "trial", "phase", "config"),
    "epoch": ("node", "job", "trial", "epoch", "phase", "config"),
    "decision": ("node", "job", "trial", "kind"),
    "groundtruth": ("workload", "config", "objective"),
    "power": ("node", "source"),
    "job": ("job", "mode", "workload"),
    "trial": ("job", "trial", "mode"),
    "stage": ("space", "prefix"),  # a trained epoch of a stage job (pipetune.stages.ledger)
    "stage_job": ("job",),  # a stage job's tree and figures
}

FieldValue = float | int | str | bool


@dataclass(frozen=True)
class Point:
    """One time-series point.  ``time_ns`` is explicit, never "now at the
    server": it is the point's identity for idempotent replays."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ns: int = field(default_factory=time.time_ns)

    def to_json(self) -> str:
        return json.dumps(
            {
                "m": self.measurement,
                "t": dict(self.tags),
                "f": dict(self.fields),
                "ns": self.time_ns,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, line: str) -> Point:
        d = json.loads(line)
        return cls(d["m"], d["t"], d["f"], int(d["ns"]))

    def clean(self) -> Point:
        """Drop empty tags and fields that no backend can store (None, NaN)."""
        tags = {k: str(v) for k, v in self.tags.items() if v is not None and str(v) != ""}
        fields = {
            k: v
            for k, v in self.fields.items()
            if v is not None and not (isinstance(v, float) and not math.isfinite(v))
        }
        return Point(self.measurement, tags, fields, self.time_ns)


class Backend(abc.ABC):
    """A place points are kept.  See the module docstring for the contract."""

    #: The URL the backend was opened with (no secrets in it).
    url: str

    @abc.abstractmethod
    def write_points(self, points: Sequence[Point]) -> None:
        """Store all points or raise.

        Raises:
            StoreUnavailableError: the backend cannot be reached (retry later).
            StoreError: the backend refused the points (retrying will not help).
        """

    @abc.abstractmethod
    def query(
        self,
        measurement: str,
        tags: Mapping[str, str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> pd.DataFrame:
        """Points of one measurement whose tags equal ``tags``, as a DataFrame
        with a ``time`` column (ns, int), one column per tag and per field,
        sorted by time.  Empty DataFrame (no columns needed) when none match."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Return if the backend is reachable and usable, else raise StoreError."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; optional."""


def points_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows (dicts with ``time`` and columns) → the DataFrame queries return."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        return df
    df["time"] = df["time"].astype("int64")
    return df.sort_values("time", kind="stable").reset_index(drop=True)
