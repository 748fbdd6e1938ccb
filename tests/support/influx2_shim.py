"""The InfluxDB 2.x HTTP API in front of a real 1.x server, for tests.

No 2.x server can be installed on our hosts, so the 2.x backend is tested
through this shim: ``/api/v2/write`` passes the client's line protocol
unchanged to the real server's ``/write`` (bucket = database), and
``/api/v2/query`` understands the one Flux shape pipetune sends (measurement,
tag equality, time range, pivot), runs the equivalent InfluxQL on the real
server and answers in Flux's annotated CSV.  The token is checked, so a
client that forgets it fails as it would against a real server.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipetune.store.influx import quote_ident, quote_literal


def _rfc3339(ns: int) -> str:
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000:09d}Z"


def _unquote(s: str) -> str:
    return s.replace('\\"', '"').replace("\\\\", "\\")


class Influx2Shim:
    def __init__(self, upstream_http_port: int, token: str) -> None:
        self.upstream = f"http://127.0.0.1:{upstream_http_port}"
        self.token = token
        shim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") != f"Token {shim.token}":
                    self._reply(
                        401,
                        "application/json",
                        b'{"code":"unauthorized","message":"unauthorized access"}',
                    )
                    return False
                return True

            def _reply(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/ping"):
                    self.send_response(204)
                    self.end_headers()
                else:
                    self._reply(404, "text/plain", b"not found")

            do_HEAD = do_GET  # noqa: N815

            def do_POST(self) -> None:  # noqa: N802
                url = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(url.query))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self._authorised():
                    return
                if url.path == "/api/v2/write":
                    code, out = shim._upstream(
                        "/write", {"db": params["bucket"], "precision": "ns"}, body
                    )
                    self._reply(204 if code == 204 else code, "application/json", out)
                elif url.path == "/api/v2/query":
                    flux = json.loads(body)["query"]
                    self._reply(200, "text/csv", shim._flux(flux).encode())
                else:
                    self._reply(404, "text/plain", b"not found")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, org: str, bucket: str) -> str:
        return f"influxdb2://127.0.0.1:{self.port}?org={org}&bucket={bucket}"

    def _upstream(self, path: str, params: dict[str, str], body: bytes) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"{self.upstream}{path}?{urllib.parse.urlencode(params)}", data=body, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _flux(self, flux: str) -> str:
        bucket = _unquote(re.search(r'from\(bucket: "((?:[^"\\]|\\.)*)"\)', flux).group(1))
        measurement = _unquote(re.search(r'r\._measurement == "((?:[^"\\]|\\.)*)"', flux).group(1))
        tags = {
            _unquote(k): _unquote(v)
            for k, v in re.findall(r'r\["((?:[^"\\]|\\.)*)"\] == "((?:[^"\\]|\\.)*)"', flux)
        }
        where = [f"{quote_ident(k)} = {quote_literal(v)}" for k, v in tags.items()]
        m = re.search(r"range\(start: time\(v: (\d+)\)", flux)
        if m:
            where.append(f"time >= {m.group(1)}")
        m = re.search(r"stop: time\(v: (\d+)\)", flux)
        if m:
            where.append(f"time < {m.group(1)}")
        q = f"SELECT * FROM {quote_ident(measurement)}" + (
            " WHERE " + " AND ".join(where) if where else ""
        )
        _, out = self._upstream("/query", {"db": bucket, "q": q, "epoch": "ns"}, b"")
        series = json.loads(out)["results"][0].get("series", [])
        if not series:
            return ""
        cols = series[0]["columns"]
        rows = series[0]["values"]
        value_cols = [c for c in cols if c != "time"]
        tag_cols = self._tag_keys(bucket, measurement)

        def kind(col: str) -> str:
            for r in rows:
                v = r[cols.index(col)]
                if isinstance(v, bool):
                    return "boolean"
                if isinstance(v, (int, float)):
                    return "double"
                if v is not None:
                    return "string"
            return "string"

        header = ["result", "table", "_start", "_stop", "_time", "_measurement", *value_cols]
        types = [
            "string",
            "long",
            "dateTime:RFC3339",
            "dateTime:RFC3339",
            "dateTime:RFC3339",
            "string",
        ] + ["string" if c in tag_cols else kind(c) for c in value_cols]
        group = ["false", "false", "true", "true", "false", "true"] + [
            "true" if c in tag_cols else "false" for c in value_cols
        ]
        lines = [
            "#datatype," + ",".join(types),
            "#group," + ",".join(group),
            "#default,_result" + "," * (len(header) - 1),
            "," + ",".join(header),
        ]
        for r in rows:
            cells = [
                "",
                "0",
                _rfc3339(0),
                _rfc3339(4_000_000_000 * 10**9),
                _rfc3339(r[0]),
                measurement,
            ]
            for c in value_cols:
                v = r[cols.index(c)]
                if v is None:
                    cells.append("")
                elif isinstance(v, bool):
                    cells.append("true" if v else "false")
                else:
                    s = str(v)
                    cells.append('"' + s.replace('"', '""') + '"' if ("," in s or '"' in s) else s)
            lines.append("," + ",".join(cells))
        return "\r\n".join(lines) + "\r\n\r\n"

    def _tag_keys(self, bucket: str, measurement: str) -> set[str]:
        _, out = self._upstream(
            "/query", {"db": bucket, "q": f"SHOW TAG KEYS FROM {quote_ident(measurement)}"}, b""
        )
        series = json.loads(out)["results"][0].get("series", [])
        return {v[0] for s in series for v in s["values"]}

    def __enter__(self) -> Influx2Shim:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
