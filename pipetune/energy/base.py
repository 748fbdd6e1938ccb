"""The energy-meter interface: :class:`EnergyMeter`, its method labels and errors.

A meter measures one *source* of node energy (RAPL's package and DRAM
counters, NVML's per-GPU counters, or an estimate from CPU time) and answers
one question: how many joules has this node used since the meter started.
Everything else — power samples, per-trial attribution — is built on top of
that cumulative reading by taking differences, so any number of consumers can
share one meter without coordinating.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Iterable
from typing import ClassVar

from pipetune.errors import PipetuneError

log = logging.getLogger(__name__)

#: The method labels a figure can carry, in the order labels are joined
#: (CPU side first, then GPUs: "rapl+nvml", "estimated+nvml").
METHODS: tuple[str, ...] = ("rapl", "estimated", "nvml")


class EnergyError(PipetuneError):
    """An energy source could not be read."""


class EnergyUnavailableError(EnergyError, OSError):
    """This host lacks the energy source (no RAPL zones, no NVML, no permission).

    The message says why, in words a user can act on.
    """


class EnergyMeter(abc.ABC):
    """Cumulative energy of one source on this node.

    Contract:

    - :meth:`read_j` returns joules used since the meter was constructed; the
      value never decreases (hardware counter wrap-arounds and resets are
      absorbed by the backend).
    - All methods are thread-safe: one meter is shared by the power sampler
      and every trial's :class:`~pipetune.energy.TrialEnergy`.
    - The meter owns whatever it opened (a poll thread, an NVML session) and
      releases it in :meth:`close`; reading after ``close`` never fails and
      never goes back (counter meters return their last value).
    - A transient read failure never raises out of :meth:`read_j` (training
      must not fail because of pipetune): it is logged once and the last good
      value is kept.
    """

    #: "rapl", "nvml" or "estimated": carried with every figure into the store.
    method: ClassVar[str]

    @abc.abstractmethod
    def read_j(self) -> float:
        """Joules this source used since the meter started (monotonic)."""

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release threads and handles; idempotent."""

    @property
    def description(self) -> str:
        """One line saying what this meter measures (for logs and reports)."""
        return self.method

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


def method_label(methods: Iterable[str]) -> str:
    """Join method names into one label in a fixed order: ``"rapl+nvml"``.

    Unknown names sort after the known ones; duplicates collapse.  An empty
    input gives ``"none"`` so a figure without a source says so rather than
    pretending to be measured.
    """
    unique = set(methods)
    ordered = [m for m in METHODS if m in unique] + sorted(unique - set(METHODS))
    return "+".join(ordered) if ordered else "none"


class PollThread:
    """A daemon thread calling ``poll()`` every ``interval_s`` until stopped.

    Counter-based meters need it so a counter is read often enough that a
    wrap-around (RAPL) or a power level (NVML without an energy counter) is
    never missed, however rarely the consumers call ``read_j``.  A failing
    ``poll`` is logged once and the thread goes on.
    """

    def __init__(self, poll: Callable[[], object], interval_s: float, name: str) -> None:
        self._poll = poll
        self.interval_s = float(interval_s)
        self._stop = threading.Event()
        self._failed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._poll()
            except Exception:  # noqa: BLE001 - a poll thread must not die silently or loudly
                if not self._failed:
                    log.warning("%s: poll failed; will keep trying", self._thread.name,
                                exc_info=True)
                    self._failed = True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
