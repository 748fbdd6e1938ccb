"""Node power into the store while a job runs: :class:`PowerSampler`.

Once a second (by default) the sampler reads the node's meters, turns the
energy since the previous tick into watts and writes one point to the
store's ``power`` measurement, tagged with the node and the method label
(``source``).  Store writes never block (the store queues them), so the
sampler cannot slow training.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from pipetune.energy.base import EnergyMeter, method_label

log = logging.getLogger(__name__)


class PowerSink(Protocol):
    """What the sampler needs of a store (``pipetune.store.Store`` is one)."""

    def write_power(self, node: str, watts: float, *, source: str,
                    time_s: float | None = None) -> None: ...


class PowerSampler:
    """Background thread writing node watts to ``store.write_power`` every ``interval_s``.

    Args:
        store: where points go (``write_power(node, watts, source=...)``).
        meters: the node's meters; their sum is the node's power.
        node: the ``node`` tag; default the host name.
        interval_s: sampling period (1 Hz by default, per DESIGN §12).

    ``start`` and ``stop`` are idempotent; ``stop`` writes no further points
    and does not close the meters (the caller owns them).  Also a context
    manager.
    """

    def __init__(self, store: PowerSink, meters: Sequence[EnergyMeter], *,
                 node: str | None = None, interval_s: float = 1.0) -> None:
        if not interval_s > 0:
            from pipetune.errors import ConfigError

            raise ConfigError(f"interval_s must be > 0, got {interval_s!r}")
        self.store = store
        self.meters = list(meters)
        self.node = node or socket.gethostname()
        self.interval_s = float(interval_s)
        self.method = method_label(m.method for m in self.meters)
        self.points_written = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    def start(self) -> PowerSampler:
        if self._thread is None and self.meters:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="pipetune-power-sampler",
                                            daemon=True)
            self._thread.start()
        elif not self.meters:
            log.info("no energy meter on node %s: no power samples", self.node)
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=5.0 + self.interval_s)

    def __enter__(self) -> PowerSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read_j(self) -> float:
        return sum(m.read_j() for m in self.meters)

    def _run(self) -> None:
        last_j, last_t = self._read_j(), time.monotonic()
        # Ticks on a fixed grid, so a slow write does not stretch the period.
        next_t = last_t + self.interval_s
        while not self._stop.wait(max(0.0, next_t - time.monotonic())):
            next_t = max(next_t + self.interval_s, time.monotonic())  # no catch-up bursts
            try:
                now_j, now_t = self._read_j(), time.monotonic()
                if now_t > last_t:
                    watts = max(0.0, now_j - last_j) / (now_t - last_t)
                    self.store.write_power(self.node, watts, source=self.method,
                                           time_s=time.time())
                    self.points_written += 1
                last_j, last_t = now_j, now_t
            except Exception:  # noqa: BLE001 - the sampler must outlive a bad read
                if not self._failed:
                    log.warning("power sampling on %s failed; will keep trying", self.node,
                                exc_info=True)
                    self._failed = True
