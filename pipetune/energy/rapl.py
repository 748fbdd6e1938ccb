"""RAPL energy through the Linux powercap interface: :class:`RaplMeter`.

Layout the kernel exposes (``intel_rapl_common``; AMD Zen uses the same names)::

    /sys/class/powercap/intel-rapl:0/          name=package-0, energy_uj, max_energy_range_uj
    /sys/class/powercap/intel-rapl:0:0/        name=core     (inside the package: not added)
    /sys/class/powercap/intel-rapl:0:1/        name=uncore   (inside the package: not added)
    /sys/class/powercap/intel-rapl:0:2/        name=dram     (outside the package: added)
    /sys/class/powercap/intel-rapl:1/          name=psys     (whole SoC, overlaps: not added)
    /sys/class/powercap/intel-rapl-mmio:0/     same package again via MMIO: not added

Node energy = every ``package-N`` zone + every ``dram`` zone (sub-zone or top
level).  ``energy_uj`` is a counter that wraps at ``max_energy_range_uj``
(about 262 kJ on many Xeons: a few minutes at full power), so a poll thread
reads it at least four times per shortest possible wrap period.  Since Linux
5.10 ``energy_uj`` is readable by root only (CVE-2020-8694); a non-root
process gets a clear :class:`EnergyUnavailableError` saying so.

The tree root is an argument (``sysfs_root``) so tests run against a fake
tree in a temporary directory.
"""

from __future__ import annotations

import errno
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from pipetune.energy.base import EnergyMeter, EnergyUnavailableError, PollThread

log = logging.getLogger(__name__)

POWERCAP_DIR = "sys/class/powercap"
#: A zone directory of the intel-rapl control type: intel-rapl:P or intel-rapl:P:S.
_ZONE_RE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")
#: Power assumed for a zone that does not state its maximum, to size the poll
#: interval (generous: a bigger value only polls more often).
ASSUMED_MAX_ZONE_POWER_W = 500.0
#: Polls per shortest wrap period: one missed poll still leaves three.
POLLS_PER_WRAP = 4
MAX_POLL_INTERVAL_S = 60.0
MIN_POLL_INTERVAL_S = 0.05


@dataclass(frozen=True)
class RaplZone:
    """One counted RAPL zone: ``label`` is ``package-0`` or ``package-0/dram``."""

    path: Path
    label: str
    max_energy_range_uj: int
    max_power_w: float | None = None

    @property
    def energy_file(self) -> Path:
        return self.path / "energy_uj"

    def read_uj(self) -> int:
        """The raw counter; raises OSError or ValueError as the file does."""
        return int(self.energy_file.read_text().strip())

    @property
    def wrap_period_s(self) -> float:
        """Shortest time the counter can take to wrap, at the zone's maximum power."""
        power_w = self.max_power_w or ASSUMED_MAX_ZONE_POWER_W
        return self.max_energy_range_uj / 1e6 / power_w


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def rapl_zones(sysfs_root: Path = Path("/")) -> list[RaplZone]:
    """The zones whose sum is node energy (packages and DRAM), sorted.

    Raises :class:`EnergyUnavailableError` with the reason when there are
    none.  Does not read ``energy_uj`` (see :func:`rapl_available`).
    """
    base = Path(sysfs_root) / POWERCAP_DIR
    if not base.is_dir():
        raise EnergyUnavailableError(
            f"no RAPL: {base} does not exist (no powercap support in this kernel or VM)"
        )
    zones: list[tuple[tuple[int, int], RaplZone]] = []
    found = []  # (package, sub-zone or None, path, name)
    for path in sorted(base.iterdir()):
        m = _ZONE_RE.match(path.name)
        if m is not None:
            sub = None if m.group(2) is None else int(m.group(2))
            found.append((int(m.group(1)), sub, path, _read_text(path / "name") or ""))
    names = {pkg: name for pkg, sub, _, name in found if sub is None}
    for pkg, sub, path, name in found:
        if sub is None and not (name.startswith("package") or name == "dram"):
            continue  # psys overlaps the packages; unknown zones are not node energy
        if sub is not None and name != "dram":
            continue  # core/uncore are already inside their package
        label = name if sub is None else f"{names.get(pkg, f'zone-{pkg}')}/{name}"
        range_text = _read_text(path / "max_energy_range_uj")
        try:
            max_range = int(range_text) if range_text is not None else 0
        except ValueError:
            max_range = 0
        if max_range <= 0:
            raise EnergyUnavailableError(
                f"RAPL zone {path}: max_energy_range_uj is missing or unreadable, "
                "so wrap-arounds could not be corrected"
            )
        power_text = _read_text(path / "constraint_0_max_power_uw")
        max_power_w = None
        if power_text and power_text.isdigit() and int(power_text) > 0:
            max_power_w = int(power_text) / 1e6
        key = (pkg, -1 if sub is None else sub)
        zones.append((key, RaplZone(path, label, max_range, max_power_w)))
    if not zones:
        raise EnergyUnavailableError(
            f"no RAPL: no intel-rapl package zones under {base} "
            "(CPU without RAPL, a VM that hides it, or intel_rapl_common not loaded)"
        )
    return [z for _, z in sorted(zones, key=lambda kz: kz[0])]


def _unreadable_reason(zone: RaplZone, e: OSError) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return (
            f"RAPL counter {zone.energy_file} is not readable: permission denied "
            "(since Linux 5.10 only root may read energy_uj; run as root or through "
            "`pipetune daemon`)"
        )
    return f"RAPL counter {zone.energy_file} is not readable: {e.strerror or e}"


def rapl_available(sysfs_root: Path = Path("/")) -> bool | str:
    """``True`` if every counted RAPL zone can be read now, else the reason why not."""
    try:
        zones = rapl_zones(sysfs_root)
    except OSError as e:  # EnergyUnavailableError included
        return str(e)
    for zone in zones:
        try:
            zone.read_uj()
        except OSError as e:
            return _unreadable_reason(zone, e)
        except ValueError as e:
            return f"RAPL counter {zone.energy_file} holds no number: {e}"
    return True


class RaplMeter(EnergyMeter):
    """Node CPU-package + DRAM energy from RAPL counters, wrap-around safe.

    Args:
        sysfs_root: root of the tree holding ``sys/class/powercap`` (``/`` on
            a real host, a temporary directory in tests).
        poll_interval_s: how often the background thread reads the counters;
            default: a quarter of the shortest wrap period, at most 60 s.
            ``0`` starts no thread (the caller must call :meth:`poll` often
            enough itself; tests use this).

    Raises:
        EnergyUnavailableError: no counted zones, or a counter is unreadable
            (the message says which and why).
    """

    method = "rapl"

    def __init__(self, sysfs_root: Path = Path("/"), *, poll_interval_s: float | None = None
                 ) -> None:
        self.sysfs_root = Path(sysfs_root)
        self.zones = rapl_zones(self.sysfs_root)
        self._lock = threading.Lock()
        self._last_uj: list[int] = []
        for zone in self.zones:
            try:
                self._last_uj.append(zone.read_uj())
            except OSError as e:
                raise EnergyUnavailableError(_unreadable_reason(zone, e)) from e
            except ValueError as e:
                raise EnergyUnavailableError(
                    f"RAPL counter {zone.energy_file} holds no number: {e}") from e
        self._total_uj = [0] * len(self.zones)
        self._warned: set[int] = set()
        self.wraps = 0  # counter wrap-arounds seen, all zones together
        self.polls = 0  # completed polls (lets a caller wait for one)
        if poll_interval_s is None:
            shortest = min(z.wrap_period_s for z in self.zones)
            poll_interval_s = max(MIN_POLL_INTERVAL_S,
                                  min(MAX_POLL_INTERVAL_S, shortest / POLLS_PER_WRAP))
        self.poll_interval_s = float(poll_interval_s)
        self._poller = (PollThread(self.poll, self.poll_interval_s, "pipetune-rapl-poll")
                        if self.poll_interval_s > 0 else None)
        log.debug("RAPL meter on %s, polling every %.2f s", self.description,
                  self.poll_interval_s)

    @property
    def description(self) -> str:
        return "RAPL " + ", ".join(z.label for z in self.zones)

    def poll(self) -> None:
        """Read every counter once and fold its increase into the totals."""
        with self._lock:
            for i, zone in enumerate(self.zones):
                try:
                    raw = zone.read_uj()
                except (OSError, ValueError) as e:
                    if i not in self._warned:
                        log.warning("RAPL zone %s unreadable (%s); keeping its last value",
                                    zone.label, e)
                        self._warned.add(i)
                    continue
                delta = raw - self._last_uj[i]
                if delta < 0:
                    # The counter wrapped at max_energy_range_uj once (the poll
                    # interval guarantees not twice).
                    delta += zone.max_energy_range_uj
                    self.wraps += 1
                    if delta < 0:  # a value above the stated range: treat as a reset
                        delta = raw
                self._total_uj[i] += delta
                self._last_uj[i] = raw
            self.polls += 1

    def read_j(self) -> float:
        self.poll()
        with self._lock:
            return sum(self._total_uj) / 1e6

    def read_zones_j(self) -> dict[str, float]:
        """Joules per zone label since the meter started."""
        self.poll()
        with self._lock:
            return {z.label: t / 1e6 for z, t in zip(self.zones, self._total_uj, strict=True)}

    def close(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
