"""Embedded SQLite backend (the default): one file, no server.

Points keep InfluxDB's data model: the key is (measurement, series, time)
where the series is the canonical tag set, and writing the same key again
merges the fields, exactly as InfluxDB does.  That makes spool replays
idempotent.  WAL mode lets a report read while trials write.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from pipetune.errors import StoreError, StoreUnavailableError
from pipetune.store.base import Backend, Point, points_frame

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    measurement TEXT NOT NULL,
    series TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    tags TEXT NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (measurement, series, time_ns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_by_time ON points (measurement, time_ns);
"""


class SqliteBackend(Backend):
    """``sqlite:///ABS/PATH.db`` (or ``sqlite:///:memory:`` for throwaway use)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        # Canonical spelling, as Settings writes it: "sqlite:///" + the absolute path.
        self.url = f"sqlite:///{self.path}" if self.path != ":memory:" else "sqlite:///:memory:"
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                self._db.commit()
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.url}: schema version {row[0]} is newer than this pipetune "
                    f"understands ({SCHEMA_VERSION}); upgrade pipetune"
                )
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{self.url}: cannot open: {e}") from e

    def write_points(self, points: Sequence[Point]) -> None:
        rows = []
        for p in points:
            tags = dict(sorted(p.tags.items()))
            series = ",".join(f"{k}={v}" for k, v in tags.items())
            rows.append(
                (p.measurement, series, p.time_ns, json.dumps(tags), json.dumps(dict(p.fields)))
            )
        try:
            with self._lock, self._db:
                self._db.executemany(
                    "INSERT INTO points VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (measurement, series, time_ns) "
                    "DO UPDATE SET fields = json_patch(fields, excluded.fields)",
                    rows,
                )
        except sqlite3.OperationalError as e:
            # locked / disk full / I/O: may pass, so spool and retry
            raise StoreUnavailableError(f"{self.url}: {e}") from e
        except sqlite3.Error as e:
            raise StoreError(f"{self.url}: {e}") from e

    def query(
        self,
        measurement: str,
        tags: Mapping[str, str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> pd.DataFrame:
        sql = "SELECT time_ns, tags, fields FROM points WHERE measurement = ?"
        args: list[object] = [measurement]
        for k, v in (tags or {}).items():
            sql += " AND json_extract(tags, ?) = ?"
            args += [f'$."{k}"', str(v)]
        if start_ns is not None:
            sql += " AND time_ns >= ?"
            args.append(start_ns)
        if end_ns is not None:
            sql += " AND time_ns <= ?"
            args.append(end_ns)
        sql += " ORDER BY time_ns"
        try:
            with self._lock:
                rows = self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"{self.url}: query failed: {e}") from e
        return points_frame({"time": t, **json.loads(tg), **json.loads(fl)} for t, tg, fl in rows)

    def ping(self) -> None:
        try:
            with self._lock:
                self._db.execute("SELECT 1 FROM points LIMIT 1").fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"{self.url}: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._db.close()
