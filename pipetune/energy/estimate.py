"""An energy estimate where no counter exists: :class:`EstimatedMeter`.

Model (stated in every meter's :attr:`EstimatedMeter.model_description`)::

    energy_j = busy CPU seconds x watts per logical CPU
    watts per logical CPU = TDP of the CPU package / hardware threads per package

The TDP comes from :data:`TDP_TABLE` (vendor spec sheets) matched against the
``model name`` in ``/proc/cpuinfo``; an unknown model (a VM often shows only
"Intel(R) Xeon(R) Processor") uses :data:`DEFAULT_WATTS_PER_CPU`.  It counts
only the dynamic share a workload adds at full TDP per busy thread: no idle
power, no DRAM, no turbo above TDP.  It is a comparison tool between trials
on the same host, not a measurement; every figure it produces says
``estimated``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from pipetune.energy.base import EnergyMeter
from pipetune.energy.cputime import PidsSource, ProcessTreeCpu, node_busy_s


@dataclass(frozen=True)
class CpuPower:
    """A CPU model's TDP and hardware threads per package (vendor spec sheets)."""

    pattern: str  # regex searched in /proc/cpuinfo's "model name"
    tdp_w: float
    threads_per_package: int

    @property
    def watts_per_cpu(self) -> float:
        return self.tdp_w / self.threads_per_package


#: A small table of common server and desktop CPUs; extend as hosts need.
TDP_TABLE: tuple[CpuPower, ...] = (
    CpuPower(r"Xeon\(R\) Platinum 8480\+", 350.0, 112),
    CpuPower(r"Xeon\(R\) Platinum 8380\b", 270.0, 80),
    CpuPower(r"Xeon\(R\) Gold 6248\b", 150.0, 40),
    CpuPower(r"Xeon\(R\) CPU E5-2680 v4", 120.0, 28),
    CpuPower(r"Xeon\(R\) CPU E5-2630 v4", 85.0, 20),
    CpuPower(r"EPYC 9654\b", 360.0, 192),
    CpuPower(r"EPYC 7763\b", 280.0, 128),
    CpuPower(r"EPYC 7742\b", 225.0, 128),
    CpuPower(r"Core\(TM\) i7-8700\b", 65.0, 12),
)

#: Watts per busy logical CPU for a model not in the table: a little above the
#: table's median TDP per hardware thread (about 3.4 W), so an unknown host
#: is not flattered.
DEFAULT_WATTS_PER_CPU = 4.0


def cpu_model(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> str:
    """The first ``model name`` in cpuinfo ("" if there is none, e.g. on ARM)."""
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
    except OSError:
        return ""
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else ""


def watts_per_cpu_for(model: str) -> tuple[float, str]:
    """Watts per busy logical CPU for ``model``, and a sentence saying where it came from."""
    for entry in TDP_TABLE:
        if re.search(entry.pattern, model):
            return entry.watts_per_cpu, (
                f"TDP {entry.tdp_w:g} W / {entry.threads_per_package} threads of {model!r}"
            )
    shown = model or "unknown"
    return DEFAULT_WATTS_PER_CPU, f"default; CPU model {shown!r} is not in the TDP table"


class EstimatedMeter(EnergyMeter):
    """Energy estimated from CPU time: of the whole node, or of given processes.

    Args:
        pids: root PIDs (or a callable returning them) whose CPU time, with
            their descendants', is counted; default: the whole node.
        watts_per_cpu: override the table (say, a value measured with a wall
            meter); default: looked up from ``cpuinfo_path``.
        cpuinfo_path: where the CPU model is read.
    """

    method = "estimated"

    def __init__(
        self,
        pids: PidsSource | None = None,
        *,
        watts_per_cpu: float | None = None,
        cpuinfo_path: Path = Path("/proc/cpuinfo"),
    ) -> None:
        if watts_per_cpu is not None:
            if not watts_per_cpu > 0:
                from pipetune.errors import ConfigError

                raise ConfigError(f"watts_per_cpu must be > 0, got {watts_per_cpu!r}")
            self.watts_per_cpu, source = float(watts_per_cpu), "given"
        else:
            self.watts_per_cpu, source = watts_per_cpu_for(cpu_model(cpuinfo_path))
        scope = "the node's busy CPU time" if pids is None else "the processes' CPU time"
        self.model_description = (
            f"{scope} x {self.watts_per_cpu:.2f} W per logical CPU ({source})"
        )
        self._lock = threading.Lock()
        self._tree = ProcessTreeCpu(pids) if pids is not None else None
        self._start_busy_s = node_busy_s() if self._tree is None else 0.0
        self._last_j = 0.0

    @property
    def description(self) -> str:
        return "estimated: " + self.model_description

    def cpu_s(self) -> float:
        """CPU seconds counted since the meter started."""
        if self._tree is not None:
            return self._tree.sample()
        return node_busy_s() - self._start_busy_s

    def read_j(self) -> float:
        with self._lock:
            # max(): /proc/stat counters are per-CPU sums and can step back by
            # a tick when a CPU goes offline; the contract is monotonic.
            self._last_j = max(self._last_j, self.cpu_s() * self.watts_per_cpu)
            return self._last_j
