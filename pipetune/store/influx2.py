"""InfluxDB 2.x backend through influxdb-client: org, bucket, token.

``influxdb2://HOST:PORT?org=ORG&bucket=BUCKET[&ssl=1]``; the token comes from
``$PIPETUNE_INFLUX_TOKEN``.  Writes are synchronous *inside the store's
writer thread* (the Store already makes them asynchronous to training), so a
failed batch is known at once and goes to the spool.

No 2.x server can be installed on our CI hosts (Debian ships 1.6): the tests
run this backend against a small local HTTP server speaking the documented
``/api/v2/write`` and ``/api/v2/query`` protocol.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from pipetune.errors import ConfigError, StoreError, StoreUnavailableError
from pipetune.store.base import Backend, Point, points_frame

# A Flux string literal is quoted like an InfluxQL identifier.
from pipetune.store.influx import quote_ident, split_url, to_line

_META_COLUMNS = {"result", "table", "_start", "_stop", "_measurement"}


class InfluxV2Backend(Backend):
    """A bucket on an InfluxDB 2.x server (or 1.8+ with its 2.x API)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        org: str,
        bucket: str,
        token: str | None,
        ssl: bool = False,
        timeout_s: float = 5.0,
    ) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        if not org or not bucket:
            raise ConfigError("influxdb2 store URL needs ?org=ORG&bucket=BUCKET")
        if not token:
            raise ConfigError("influxdb2 store needs a token in $PIPETUNE_INFLUX_TOKEN")
        self.org, self.bucket = org, bucket
        self.url = f"influxdb2://{host}:{port}?org={org}&bucket={bucket}"
        self._client = InfluxDBClient(
            url=f"{'https' if ssl else 'http'}://{host}:{port}",
            token=token,
            org=org,
            timeout=int(timeout_s * 1000),
        )
        self._write = self._client.write_api(write_options=SYNCHRONOUS)
        self._query = self._client.query_api()

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 5.0) -> InfluxV2Backend:
        host, port, _, query = split_url(url, "influxdb2://HOST:PORT?org=…&bucket=…")
        return cls(
            host,
            port,
            org=query.get("org", ""),
            bucket=query.get("bucket", ""),
            token=os.environ.get("PIPETUNE_INFLUX_TOKEN"),
            ssl=query.get("ssl") in ("1", "true"),
            timeout_s=timeout_s,
        )

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from influxdb_client.rest import ApiException

        try:
            return fn(*args, **kwargs)
        except ApiException as e:
            status = e.status or 0
            message = (
                (e.body or e.reason or "").strip() if isinstance(e.body or "", str) else e.reason
            )
            if status >= 500 or status == 0:
                raise StoreUnavailableError(f"{self.url}: {what}: server error {status}") from e
            raise StoreError(f"{self.url}: {what} refused ({status}): {message}") from e
        except OSError as e:
            raise StoreUnavailableError(f"{self.url}: cannot reach server: {e}") from e
        except Exception as e:  # urllib3 wraps connection failures in its own types
            if type(e).__module__.startswith("urllib3"):
                raise StoreUnavailableError(f"{self.url}: cannot reach server: {e}") from e
            raise

    def write_points(self, points: Sequence[Point]) -> None:
        from influxdb_client import WritePrecision

        lines = [to_line(p) for p in points if p.fields]
        if lines:
            self._call(
                "write",
                self._write.write,
                bucket=self.bucket,
                org=self.org,
                record="\n".join(lines),
                write_precision=WritePrecision.NS,
            )

    def query(
        self,
        measurement: str,
        tags: Mapping[str, str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> pd.DataFrame:
        start = f"time(v: {int(start_ns)})" if start_ns is not None else "0"
        stop = f", stop: time(v: {int(end_ns) + 1})" if end_ns is not None else ""
        conds = [f"r._measurement == {quote_ident(measurement)}"]
        conds += [
            f"r[{quote_ident(k)}] == {quote_ident(str(v))}" for k, v in (tags or {}).items()
        ]
        flux = (
            f"from(bucket: {quote_ident(self.bucket)})"
            f" |> range(start: {start}{stop})"
            f" |> filter(fn: (r) => {' and '.join(conds)})"
            ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
        )
        tables = self._call("query", self._query.query, flux, org=self.org)
        rows: list[dict[str, Any]] = []
        for table in tables:
            for record in table.records:
                row = {
                    k: v
                    for k, v in record.values.items()
                    if k not in _META_COLUMNS and v is not None
                }
                t = row.pop("_time")
                row["time"] = int(pd.Timestamp(t).value)
                rows.append(row)
        return points_frame(rows)

    def ping(self) -> None:
        ok = self._call("ping", self._client.ping)
        if not ok:
            raise StoreUnavailableError(f"{self.url}: server does not answer /ping")

    def close(self) -> None:
        self._client.close()
