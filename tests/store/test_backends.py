"""Conformance suite: every store backend keeps the same data model.

Runs against SQLite, a real InfluxDB 1.x server, and the 2.x backend through
the 2.x API shim in front of that same real server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.influx2_shim import Influx2Shim
from support.influxd import InfluxServer, free_port

from pipetune.errors import ConfigError, StoreError, StoreUnavailableError
from pipetune.store import Point, open_backend
from pipetune.store.base import Backend

T0 = 1_790_000_000_000_000_000  # a fixed time (2026), ns


@pytest.fixture(params=["sqlite", "influxdb", "influxdb2"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    if request.param == "sqlite":
        b = open_backend(f"sqlite:///{tmp_path / 'store.db'}")
        yield b
        b.close()
        return
    server: InfluxServer = request.getfixturevalue("influx_server")
    db = "c_" + uuid.uuid4().hex[:10]
    server.create_database(db)
    if request.param == "influxdb":
        b = open_backend(server.url(db))
        yield b
        b.close()
        return
    monkeypatch.setenv("PIPETUNE_INFLUX_TOKEN", "secret-token")
    with Influx2Shim(server.http_port, token="secret-token") as shim:
        b = open_backend(shim.url("org", db))
        yield b
        b.close()


def _point(i: int, **tags: str) -> Point:
    return Point(
        "epoch",
        {"job": "j1", "trial": f"t{i % 2}", **tags},
        {"seconds": 1.5 + i, "metric.accuracy": 0.5, "energy_method": "estimated"},
        T0 + i * 1_000_000,
    )


def test_roundtrip_filters_by_tags_and_time(backend: Backend) -> None:
    backend.ping()
    backend.write_points([_point(i) for i in range(6)])
    df = backend.query("epoch", {"job": "j1", "trial": "t1"})
    assert list(df["time"]) == [T0 + i * 1_000_000 for i in (1, 3, 5)]
    assert list(df["seconds"]) == [2.5, 4.5, 6.5]
    assert set(df["trial"]) == {"t1"}
    assert df["energy_method"].iloc[0] == "estimated"
    df = backend.query("epoch", {"job": "j1"}, start_ns=T0 + 2_000_000, end_ns=T0 + 4_000_000)
    assert list(df["seconds"]) == [3.5, 4.5, 5.5]


def test_rewriting_a_point_keeps_one_copy(backend: Backend) -> None:
    """Replays depend on this: same measurement, tags and time = same point."""
    points = [_point(i) for i in range(4)]
    backend.write_points(points)
    backend.write_points(points)
    backend.write_points(points[:2])
    df = backend.query("epoch", {"job": "j1"})
    assert len(df) == 4
    assert df["time"].is_unique


def test_odd_characters_in_tags_and_fields(backend: Backend) -> None:
    tags = {"job": "my job, v2=ok", "trial": 'tr "1"'}
    p = Point("sample", tags, {"sched:sched_switch": 12.0, "rate.page-faults": 3.0}, T0)
    backend.write_points([p])
    df = backend.query("sample", {"trial": 'tr "1"'})
    assert len(df) == 1
    assert df["job"].iloc[0] == "my job, v2=ok"
    assert df["sched:sched_switch"].iloc[0] == 12.0
    assert df["rate.page-faults"].iloc[0] == 3.0


def test_nothing_matches_gives_empty_frame(backend: Backend) -> None:
    backend.write_points([_point(0)])
    assert backend.query("epoch", {"job": "other"}).empty
    assert backend.query("decision").empty


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown scheme 'postgres'"):
        open_backend("postgres://localhost/db")
    with pytest.raises(ConfigError, match="ABSOLUTE"):
        open_backend("sqlite://relative.db")


def test_closed_port_is_unavailable_not_refused() -> None:
    b = open_backend(f"influxdb://127.0.0.1:{free_port()}/db", timeout_s=1)
    with pytest.raises(StoreUnavailableError, match="cannot reach"):
        b.ping()
    with pytest.raises(StoreUnavailableError):
        b.write_points([_point(0)])


def test_missing_database_is_named(influx_server: InfluxServer) -> None:
    b = open_backend(influx_server.url("no_such_db"))
    with pytest.raises(StoreError, match="'no_such_db' does not exist"):
        b.ping()
    with pytest.raises(StoreError, match="does not exist"):
        b.write_points([_point(0)])


def test_influx2_without_token_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIPETUNE_INFLUX_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="PIPETUNE_INFLUX_TOKEN"):
        open_backend("influxdb2://127.0.0.1:8086?org=o&bucket=b")
    monkeypatch.setenv("PIPETUNE_INFLUX_TOKEN", "x")
    with pytest.raises(ConfigError, match="org"):
        open_backend("influxdb2://127.0.0.1:8086?bucket=b")


def test_influx2_wrong_token_is_refused(
    influx_server: InfluxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    influx_server.create_database("tokentest")
    with Influx2Shim(influx_server.http_port, token="right") as shim:
        monkeypatch.setenv("PIPETUNE_INFLUX_TOKEN", "wrong")
        b = open_backend(shim.url("org", "tokentest"))
        with pytest.raises(StoreError, match="401"):
            b.write_points([_point(0)])
