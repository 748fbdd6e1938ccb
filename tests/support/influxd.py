"""A real InfluxDB 1.x server (Debian's ``influxd``) for tests.

Started on free loopback ports with a temporary data folder; stopped by PID
(this process started it, so this process ends it).  It can be stopped and
started again on the same ports and data, which is how outage tests work.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from pipetune.procs import end_child

_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
[ifql]
  enabled = false
[logging]
  level = "warn"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InfluxServer:
    """``with InfluxServer(tmp_path) as srv: srv.url("db")``."""

    def __init__(self, root: Path, binary: str = "influxd") -> None:
        self.binary = shutil.which(binary) or binary
        self.root = root
        self.http_port = free_port()
        self.rpc_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "influxdb.conf"
        self.config.write_text(
            _CONFIG.format(root=root, rpc_port=self.rpc_port, http_port=self.http_port)
        )
        self.log = root / "influxd.log"

    def url(self, database: str) -> str:
        return f"influxdb://127.0.0.1:{self.http_port}/{database}"

    def start(self, timeout_s: float = 30.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/ping", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"influxd did not answer within {timeout_s}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        end_child(self.proc, timeout_s=15)
        self.proc = None

    def query(self, q: str, database: str | None = None) -> bytes:
        params = f"q={urllib.request.quote(q)}" + (f"&db={database}" if database else "")
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/query?{params}", data=b"", method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read()

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def __enter__(self) -> InfluxServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
