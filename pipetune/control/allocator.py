"""Node allocator: how many CPUs each concurrent trial on a node gets, and which.

:class:`NodeAllocator` hands out disjoint CPU sets, picking them
topology-aware (one NUMA node / package first, one thread per physical core
before SMT siblings).  :meth:`NodeAllocator.share` packs the trials that
share a node: each gets its share of the CPUs by :func:`water_fill`
(marginal speed-up from the trials' own probes), up to what it would use,
and a trial that starts or ends moves the others' shares.
:meth:`NodeAllocator.allocate` gives exactly what is asked; when the node is
oversubscribed it shares the least-loaded CPUs and says so:
:class:`Allocation` carries the trials it shares with.
:func:`read_topology` reads the layout from sysfs (``sysfs_root`` is an
argument so tests can give a fake tree).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipetune.control.base import ControlInputError, format_cpus, parse_cpus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuTopo:
    """Where one CPU sits: NUMA node, package (socket), physical core."""

    cpu: int
    node: int = 0
    package: int = 0
    core: int = 0


@dataclass(frozen=True)
class Allocation:
    """CPUs given to one trial; ``shared_with`` names the trials that hold some
    of them too (empty while the node is not oversubscribed)."""

    trial_id: str
    cpus: tuple[int, ...]
    shared_with: tuple[str, ...] = ()

    @property
    def shared(self) -> bool:
        return bool(self.shared_with)


def read_topology(cpus: Sequence[int] | None = None, *,
                  sysfs_root: Path = Path("/sys")) -> list[CpuTopo]:
    """Topology of ``cpus`` (default: every online CPU) from sysfs.  Missing
    files count as node/package/core 0 (a flat host)."""
    base = Path(sysfs_root) / "devices/system"
    if cpus is None:
        try:
            cpus = parse_cpus((base / "cpu/online").read_text())
        except OSError:
            import os

            cpus = sorted(os.sched_getaffinity(0))
    node_of: dict[int, int] = {}
    for d in sorted((base / "node").glob("node[0-9]*")) if (base / "node").is_dir() else []:
        try:
            for c in parse_cpus((d / "cpulist").read_text()):
                node_of[c] = int(d.name[4:])
        except (OSError, ValueError):
            continue

    def _int(path: Path) -> int:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return 0

    out = []
    for c in cpus:
        topo = base / f"cpu/cpu{c}/topology"
        out.append(CpuTopo(c, node_of.get(c, 0), _int(topo / "physical_package_id"),
                           _int(topo / "core_id")))
    return out


def _gain(curve: Mapping[int, float], cores: int) -> float:
    """What one more core adds to a trial at ``cores``, relative to its speed
    at its fewest known cores: measured points, linear in between; unknown
    beyond the last point (0: no core is given on a guess).  No curve at
    all: a core adds as much as the first (linear)."""
    known = sorted(c for c, v in curve.items() if v and v > 0)
    if not known:
        return 1.0
    base = curve[known[0]]
    lo = max((c for c in known if c <= cores), default=None)
    hi = min((c for c in known if c > cores), default=None)
    if lo is None or hi is None:
        return 0.0
    return (curve[hi] - curve[lo]) / (hi - lo) / base


def water_fill(wants: Mapping[str, int], ncpus: int,
               speedups: Mapping[str, Mapping[int, float]] | None = None) -> dict[str, int]:
    """Cores per trial that maximise the node's training throughput.

    Every trial gets one core (the node runs them all: Ray admitted them);
    each remaining core goes to the trial whose next core adds the most of
    its own speed (``speedups``: trial -> {cores: speed}, from its probes),
    never beyond what the trial wants; a core that speeds nobody up stays
    idle.  Fluid packs trials onto GPUs the same way.  Without curves, cores
    are shared out evenly.  More trials than CPUs: one each (shared).
    """
    trials = sorted(wants)
    if not trials:
        return {}
    cores = {t: 1 for t in trials}
    left = ncpus - len(trials)
    curves = speedups or {}
    while left > 0:
        open_ = [t for t in trials if cores[t] < wants[t]]
        if not open_:
            break
        best = max(open_, key=lambda t: (_gain(curves.get(t) or {}, cores[t]), -cores[t]))
        if _gain(curves.get(best) or {}, cores[best]) <= 0:
            break
        cores[best] += 1
        left -= 1
    return cores


class NodeAllocator:
    """Disjoint CPU sets for the trials of one node.  Thread safe.

    ``cpus``: the CPUs it may hand out (default: every online CPU);
    ``topology``: their layout (default: read from ``sysfs_root``).
    """

    def __init__(self, cpus: Sequence[int] | None = None, *,
                 topology: Sequence[CpuTopo] | None = None,
                 sysfs_root: Path = Path("/sys")) -> None:
        topo = list(topology) if topology is not None else read_topology(cpus,
                                                                         sysfs_root=sysfs_root)
        if cpus is not None:
            wanted = set(cpus)
            topo = [t for t in topo if t.cpu in wanted]
        if not topo:
            raise ControlInputError("node allocator: no CPUs to hand out")
        self._topo = {t.cpu: t for t in topo}
        self._held: dict[str, tuple[int, ...]] = {}
        # Trials that share the node (:meth:`share`): the cores each would
        # use and its measured speed-ups, for the water-filling.
        self._wants: dict[str, int] = {}
        self._speedups: dict[str, dict[int, float]] = {}
        self._lock = threading.Lock()

    @property
    def cpus(self) -> list[int]:
        return sorted(self._topo)

    def allocate(self, trial_id: str, cores: int) -> list[int]:
        """CPUs for ``trial_id`` (see :meth:`allocate_detailed`)."""
        return list(self.allocate_detailed(trial_id, cores).cpus)

    def _check_cores(self, trial_id: str, cores: int) -> None:
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
            raise ControlInputError(f"cores={cores!r}: must be an integer >= 1")
        if cores > len(self._topo):
            raise ControlInputError(
                f"{cores} cores asked for trial {trial_id}; the node has {len(self._topo)} "
                f"({format_cpus(self._topo)})"
            )

    def allocate_detailed(self, trial_id: str, cores: int) -> Allocation:
        """Give ``trial_id`` ``cores`` CPUs, replacing what it held.

        A trial that asks again keeps as many of its CPUs as it can (no needless
        migration).  Raises ``ControlInputError`` for more cores than the node
        has.
        """
        self._check_cores(trial_id, cores)
        with self._lock:
            own = self._held.pop(trial_id, ())
            load = self._load()
            free = [c for c in self._topo if load.get(c, 0) == 0]
            keep = [c for c in own if c in free][:cores]
            need = cores - len(keep)
            picked = keep + self._pick([c for c in free if c not in keep], need, keep)
            shared_with: set[str] = set()
            if len(picked) < cores:
                # Oversubscribed: share the least-loaded CPUs.
                busy = sorted((c for c in self._topo if c not in picked),
                              key=lambda c: (load.get(c, 0), self._order_key(c)))
                picked += busy[: cores - len(picked)]
                for other, held in self._held.items():
                    if set(held) & set(picked):
                        shared_with.add(other)
            alloc = Allocation(trial_id, tuple(sorted(picked)), tuple(sorted(shared_with)))
            self._held[trial_id] = alloc.cpus
        if alloc.shared:
            log.warning("node oversubscribed: trial %s gets cpus %s shared with trial(s) %s",
                        trial_id, format_cpus(alloc.cpus), ", ".join(alloc.shared_with))
        else:
            log.info("trial %s gets cpus %s", trial_id, format_cpus(alloc.cpus))
        return alloc

    # -- packing (the node's share of each trial) ---------------------------------

    def share(self, trial_id: str, cores: int) -> list[int]:
        """Give ``trial_id`` up to ``cores`` CPUs: its share of the node among
        the trials sharing it, water-filled by the speed-ups they reported
        (:func:`water_fill`, :meth:`set_speedup`).  Every other sharing
        trial's CPUs are redistributed too (read them with :meth:`held`): a
        trial that starts shrinks the others, one that ends lets them grow.
        Raises ``ControlInputError`` for more cores than the node has."""
        self._check_cores(trial_id, cores)
        with self._lock:
            self._wants[trial_id] = cores
            self.rebalance()
            got = list(self._held[trial_id])
        log.info("trial %s gets cpus %s (%d of the %d it would use)", trial_id,
                 format_cpus(got), len(got), cores)
        return got

    def capacity(self, trial_id: str, cores: int) -> int:
        """How many of ``cores`` the trial would get if it asked now
        (nothing changes): what its tuner may probe."""
        with self._lock:
            wants = dict(self._wants)
            wants[trial_id] = min(max(1, cores), len(self._topo))
            return water_fill(wants, len(self._topo), self._speedups)[trial_id]

    def set_speedup(self, trial_id: str, curve: Mapping[int, float]) -> None:
        """The trial's measured speed at each core count it probed (any
        unit: only ratios count); the next redistribution uses it."""
        with self._lock:
            self._speedups[trial_id] = {int(c): float(v) for c, v in curve.items()}

    def rebalance(self) -> None:
        """Share the node out again among the sharing trials (call with the
        lock held, or on an allocator no other thread uses)."""
        self._assign(water_fill(self._wants, len(self._topo), self._speedups))

    def assigned(self, trial_id: str) -> list[int] | None:
        """The CPUs ``trial_id`` holds now (others' starts and ends move them)."""
        with self._lock:
            cpus = self._held.get(trial_id)
        return list(cpus) if cpus is not None else None

    def _assign(self, shares: Mapping[str, int]) -> None:
        """Disjoint CPU sets of the sizes ``shares``, each trial keeping what it
        can of its current CPUs (no needless migration); shared CPUs only when
        the node has fewer CPUs than trials."""
        old = self._held
        new: dict[str, list[int]] = {}
        taken: set[int] = set()
        for t in sorted(shares, key=lambda t: (-shares[t], t)):
            keep = [c for c in old.get(t, ()) if c in self._topo and c not in taken]
            new[t] = keep[: shares[t]]
            taken |= set(new[t])
        self._held = {t: tuple(c) for t, c in new.items()}
        for t in sorted(shares, key=lambda t: (-shares[t], t)):
            need = shares[t] - len(new[t])
            if need <= 0:
                continue
            free = [c for c in self._topo if c not in taken]
            picked = self._pick(free, need, new[t])
            if len(picked) < need:  # more trials than CPUs: share the least loaded
                load = self._load()
                busy = sorted((c for c in self._topo if c not in new[t] + picked),
                              key=lambda c: (load.get(c, 0), self._order_key(c)))
                picked += busy[: need - len(picked)]
            new[t] += picked
            taken |= set(picked)
            self._held[t] = tuple(sorted(new[t]))
        self._held = {t: tuple(sorted(c)) for t, c in new.items()}

    def adopt(self, held: Mapping[str, Sequence[int]],
              wants: Mapping[str, int] | None = None,
              speedups: Mapping[str, Mapping[int, float]] | None = None) -> None:
        """Take over what other holders already hold (a shared table read
        back), and what the sharing ones want; CPUs this allocator may not
        hand out are left out."""
        with self._lock:
            for trial_id, cpus in held.items():
                self._held[str(trial_id)] = tuple(sorted(c for c in cpus if c in self._topo))
            for trial_id, n in (wants or {}).items():
                self._wants[str(trial_id)] = int(n)
            for trial_id, curve in (speedups or {}).items():
                self._speedups[str(trial_id)] = {int(c): float(v) for c, v in curve.items()}

    def release(self, trial_id: str) -> None:
        """Give back what ``trial_id`` holds (nothing when it holds nothing);
        the trials sharing the node grow into it."""
        with self._lock:
            self._held.pop(trial_id, None)
            self._speedups.pop(trial_id, None)
            if self._wants.pop(trial_id, None) is not None and self._wants:
                self.rebalance()

    def wants(self) -> dict[str, int]:
        with self._lock:
            return dict(self._wants)

    def speedups(self) -> dict[str, dict[int, float]]:
        with self._lock:
            return {t: dict(c) for t, c in self._speedups.items()}

    def held(self) -> dict[str, tuple[int, ...]]:
        with self._lock:
            return dict(self._held)

    # -- choosing ----------------------------------------------------------------

    def _load(self) -> dict[int, int]:
        load: dict[int, int] = {}
        for held in self._held.values():
            for c in held:
                load[c] = load.get(c, 0) + 1
        return load

    def _order_key(self, cpu: int) -> tuple[int, int, int, int]:
        t = self._topo[cpu]
        return (t.node, t.package, t.core, cpu)

    def _pick(self, free: list[int], need: int, near: Sequence[int]) -> list[int]:
        """``need`` CPUs of ``free``: from one (node, package) domain when one
        can hold them (the one ``near`` already uses, else the one where they
        share the fewest physical cores with other trials, else the tightest
        fit), else the fullest domains first; within a domain one thread per
        physical core first."""
        if need <= 0 or not free:
            return []
        domains: dict[tuple[int, int], list[int]] = {}
        for c in free:
            t = self._topo[c]
            domains.setdefault((t.node, t.package), []).append(c)
        near_domains = {(self._topo[c].node, self._topo[c].package) for c in near}
        # Physical cores another trial already runs on: their SMT siblings
        # would fight it for the same execution units.
        busy = {(self._topo[c].package, self._topo[c].core) for held in self._held.values()
                for c in held}

        def contention(d: tuple[int, int]) -> int:
            return sum((self._topo[c].package, self._topo[c].core) in busy
                       for c in self._spread(domains[d])[:need])

        fitting = [d for d, cs in domains.items() if len(cs) >= need]
        if fitting:
            best = min(fitting, key=lambda d: (d not in near_domains, contention(d),
                                               len(domains[d]), d))
            order = [best]
        else:
            order = sorted(domains, key=lambda d: (-len(domains[d]), d))
        out: list[int] = []
        for d in order:
            out += self._spread(domains[d])
        return out[:need]

    def _spread(self, cpus: list[int]) -> list[int]:
        # First thread of every physical core, then the SMT siblings.
        seen: dict[tuple[int, int], int] = {}
        ranked = []
        for c in sorted(cpus, key=self._order_key):
            t = self._topo[c]
            rank = seen.get((t.package, t.core), 0)
            seen[(t.package, t.core)] = rank + 1
            ranked.append((rank, self._order_key(c), c))
        return [c for _, _, c in sorted(ranked)]
