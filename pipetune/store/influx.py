"""InfluxDB 1.x backend: ``/write`` line protocol, ``/query`` InfluxQL.

``influxdb://HOST:PORT/DB[?user=NAME&rp=POLICY&ssl=1]``; the password comes
from ``$PIPETUNE_INFLUX_PASSWORD`` so it never sits in a URL that is logged.

Line protocol is built with influxdb-client's ``Point`` (its escaping of
spaces, commas and ``=`` in tags and field keys is the tested one).  Integer
fields are written as floats: a metric that is ``1`` in one epoch and ``0.97``
in the next would otherwise hit InfluxDB's "field type conflict" and be
refused.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from influxdb_client import Point as LinePoint
from influxdb_client import WritePrecision

from pipetune.errors import ConfigError, StoreError, StoreUnavailableError
from pipetune.store.base import Backend, Point, points_frame


def to_line(p: Point) -> str:
    """One point as InfluxDB line protocol (ns precision)."""
    lp = LinePoint(p.measurement)
    for k, v in sorted(p.tags.items()):
        lp.tag(k, v)
    for k, v in p.fields.items():
        if isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        lp.field(k, v)
    lp.time(p.time_ns, WritePrecision.NS)
    return lp.to_line_protocol()


def split_url(url: str, expected: str) -> tuple[str, int, str, dict[str, str]]:
    """``(host, port, path, query)`` of an InfluxDB store URL (port 8086 by
    default); ConfigError naming ``expected`` when it has no host or a bad port."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or 8086
    except ValueError as e:
        raise ConfigError(f"store URL {url!r}: bad port") from e
    if not parts.hostname:
        raise ConfigError(f"store URL {url!r}: expected {expected}")
    return parts.hostname, port, parts.path.strip("/"), dict(urllib.parse.parse_qsl(parts.query))


def quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxV1Backend(Backend):
    """A database on an InfluxDB 1.x server."""

    def __init__(
        self,
        host: str,
        port: int,
        database: str,
        *,
        user: str | None = None,
        password: str | None = None,
        retention_policy: str | None = None,
        ssl: bool = False,
        timeout_s: float = 5.0,
    ) -> None:
        if not database:
            raise ConfigError("influxdb store URL needs a database: influxdb://HOST:PORT/DB")
        self.host, self.port, self.database = host, port, database
        self._base = f"{'https' if ssl else 'http'}://{host}:{port}"
        self.url = f"influxdb://{host}:{port}/{database}"
        self._auth = {"u": user, "p": password or ""} if user else {}
        self._rp = retention_policy
        self._timeout_s = timeout_s

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 5.0) -> InfluxV1Backend:
        host, port, path, query = split_url(url, "influxdb://HOST:PORT/DB")
        return cls(
            host,
            port,
            path,
            user=query.get("user"),
            password=os.environ.get("PIPETUNE_INFLUX_PASSWORD"),
            retention_policy=query.get("rp"),
            ssl=query.get("ssl") in ("1", "true"),
            timeout_s=timeout_s,
        )

    def _request(self, path: str, params: Mapping[str, str], body: bytes | None = None) -> bytes:
        params = {**params, **self._auth}
        req = urllib.request.Request(
            f"{self._base}{path}?{urllib.parse.urlencode(params)}",
            data=body,
            method="POST" if body is not None else "GET",
        )
        try:
            with urllib.request.urlopen(req, timeout=self._timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            message = _error_message(e)
            if e.code >= 500:
                raise StoreUnavailableError(f"{self.url}: server error {e.code}: {message}") from e
            if e.code == 404 and "database not found" in message:
                raise StoreError(
                    f"{self.url}: database {self.database!r} does not exist "
                    f"(create it: influx -execute 'CREATE DATABASE {self.database}')"
                ) from e
            if e.code in (401, 403):
                raise StoreError(f"{self.url}: not authorised ({message})") from e
            raise StoreError(f"{self.url}: refused ({e.code}): {message}") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise StoreUnavailableError(f"{self.url}: cannot reach server: {reason}") from e

    def write_points(self, points: Sequence[Point]) -> None:
        if not points:
            return
        body = "\n".join(to_line(p) for p in points if p.fields).encode()
        params = {"db": self.database, "precision": "ns"}
        if self._rp:
            params["rp"] = self._rp
        self._request("/write", params, body)

    def _influxql(self, q: str) -> list[dict[str, Any]]:
        params = {"db": self.database, "q": q, "epoch": "ns"}
        data = json.loads(self._request("/query", params))
        results = data.get("results", [])
        for r in results:
            if "error" in r:
                if "database not found" in r["error"]:
                    raise StoreError(f"{self.url}: database {self.database!r} does not exist")
                raise StoreError(f"{self.url}: query failed: {r['error']}")
        return results

    def query(
        self,
        measurement: str,
        tags: Mapping[str, str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> pd.DataFrame:
        where = [f"{quote_ident(k)} = {quote_literal(str(v))}" for k, v in (tags or {}).items()]
        if start_ns is not None:
            where.append(f"time >= {int(start_ns)}")
        if end_ns is not None:
            where.append(f"time <= {int(end_ns)}")
        q = f"SELECT * FROM {quote_ident(measurement)}"
        if where:
            q += " WHERE " + " AND ".join(where)
        rows: list[dict[str, Any]] = []
        for result in self._influxql(q):
            for series in result.get("series", []):
                cols = series["columns"]
                for values in series["values"]:
                    rows.append({c: v for c, v in zip(cols, values, strict=True) if v is not None})
        return points_frame(rows)

    def ping(self) -> None:
        self._request("/ping", {})
        dbs = self._influxql("SHOW DATABASES")
        names = {v[0] for r in dbs for s in r.get("series", []) for v in s.get("values", [])}
        if self.database not in names:
            raise StoreError(
                f"{self.url}: database {self.database!r} does not exist "
                f"(create it: influx -execute 'CREATE DATABASE {self.database}')"
            )

    def create_database(self) -> None:
        """Create the database (idempotent); for set-up scripts and tests."""
        self._request("/query", {"q": f"CREATE DATABASE {quote_ident(self.database)}"}, b"")


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read().decode(errors="replace")
        return json.loads(body).get("error", body).strip()
    except (ValueError, OSError, AttributeError):
        return str(e.reason)
