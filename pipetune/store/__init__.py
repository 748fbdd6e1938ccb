"""Time-series store: SQLite (embedded default), InfluxDB 1.x, InfluxDB 2.x.

``open_store(url)`` picks the backend from the URL scheme:

- ``sqlite:///ABS/PATH.db``
- ``influxdb://HOST:PORT/DB`` (1.x HTTP API; ``?user=…`` with the password in
  ``$PIPETUNE_INFLUX_PASSWORD``)
- ``influxdb2://HOST:PORT?org=…&bucket=…`` (token from ``$PIPETUNE_INFLUX_TOKEN``)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pipetune.errors import ConfigError
from pipetune.store.base import MEASUREMENT_TAGS, Backend, Point
from pipetune.store.store import METRIC_PREFIX, RATE_PREFIX, Store, prefixed

__all__ = [
    "MEASUREMENT_TAGS",
    "METRIC_PREFIX",
    "RATE_PREFIX",
    "Backend",
    "Point",
    "Store",
    "open_backend",
    "open_store",
    "prefixed",
]


def open_backend(url: str, *, timeout_s: float = 5.0) -> Backend:
    """The backend for ``url``; raises ConfigError for a URL it cannot use."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from pipetune.store.sqlite import SqliteBackend

        path = url[len("sqlite://") :]
        if path.startswith("/:memory:"):
            return SqliteBackend(":memory:")
        if not path.startswith("/") or path.strip("/") == "":
            raise ConfigError(f"store URL {url!r}: expected sqlite:///ABSOLUTE/PATH.db")
        # sqlite:///abs and sqlite:////abs (SQLAlchemy's spelling) are one file.
        return SqliteBackend("/" + path.lstrip("/"))
    if parts.scheme == "influxdb":
        from pipetune.store.influx import InfluxV1Backend

        return InfluxV1Backend.from_url(url, timeout_s=timeout_s)
    if parts.scheme == "influxdb2":
        from pipetune.store.influx2 import InfluxV2Backend

        return InfluxV2Backend.from_url(url, timeout_s=timeout_s)
    raise ConfigError(
        f"store URL {url!r}: unknown scheme {parts.scheme!r} "
        "(use sqlite:///PATH, influxdb://HOST:PORT/DB or influxdb2://HOST:PORT?org=…&bucket=…)"
    )


def open_store(url: str, *, spool_root: str | Path | None = None, **kwargs: object) -> Store:
    """A :class:`Store` on ``url``; spooled points go under ``spool_root``
    (default ``$PIPETUNE_HOME/spool``)."""
    if spool_root is None:
        from pipetune.config import default_home

        spool_root = default_home() / "spool"
    return Store(open_backend(url), spool_root, **kwargs)  # type: ignore[arg-type]
