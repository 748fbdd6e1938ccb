"""Node allocator."""

from __future__ import annotations

import logging

import pytest

from pipetune.control import (
    ControlInputError,
    CpuTopo,
    NodeAllocator,
    read_topology,
)

# 2 NUMA nodes x 1 package each x 2 cores x 2 SMT threads; Linux numbers the
# siblings apart (cpu0/cpu4 share core 0 of package 0).
TOPO = [
    CpuTopo(0, 0, 0, 0), CpuTopo(1, 0, 0, 1), CpuTopo(4, 0, 0, 0), CpuTopo(5, 0, 0, 1),
    CpuTopo(2, 1, 1, 0), CpuTopo(3, 1, 1, 1), CpuTopo(6, 1, 1, 0), CpuTopo(7, 1, 1, 1),
]


def test_disjoint_while_cores_last_and_topology_aware():
    a = NodeAllocator(topology=TOPO)
    t1 = a.allocate("t1", 2)
    assert t1 == [0, 1]  # one package, one thread per physical core
    t2 = a.allocate("t2", 2)
    assert t2 == [2, 3]  # the other (tightest-fitting) domain... not SMT siblings of t1
    t3 = a.allocate("t3", 4)
    assert sorted(t3) == [4, 5, 6, 7]
    assert not set(t1) & set(t2) and not set(t3) & (set(t1) | set(t2))


def test_fits_in_one_domain_when_it_can():
    a = NodeAllocator(topology=TOPO)
    a.allocate("small", 1)  # node 0 now has 3 free, node 1 has 4
    four = a.allocate("four", 4)
    assert {t.node for t in TOPO if t.cpu in four} == {1}


def test_oversubscribed_shares_and_says_so(caplog):
    a = NodeAllocator(topology=TOPO[:4])  # 4 CPUs
    a.allocate("t1", 2)
    a.allocate("t2", 2)
    with caplog.at_level(logging.WARNING, logger="pipetune.control.allocator"):
        alloc = a.allocate_detailed("t3", 1)
    assert alloc.shared and len(alloc.cpus) == 1
    assert alloc.shared_with in (("t1",), ("t2",))
    assert "oversubscribed" in caplog.text and "t3" in caplog.text
    a.release("t1")
    a.release("t3")
    again = a.allocate_detailed("t4", 2)
    assert not again.shared  # t1's CPUs are free again
    with pytest.raises(ControlInputError, match="node has 4"):
        a.allocate("t5", 5)


def test_reallocation_keeps_what_it_can():
    a = NodeAllocator(topology=TOPO)
    first = a.allocate("t", 2)
    a.allocate("other", 2)
    assert a.allocate("t", 1) == first[:1]
    grown = a.allocate("t", 3)
    assert first[0] in grown and len(grown) == 3
    assert not set(grown) & set(a.held()["other"])


def test_read_topology_from_sysfs(tmp_path):
    base = tmp_path / "devices/system"
    (base / "cpu").mkdir(parents=True)
    (base / "cpu/online").write_text("0-3\n")
    for cpu, pkg, core in [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]:
        d = base / f"cpu/cpu{cpu}/topology"
        d.mkdir(parents=True)
        (d / "physical_package_id").write_text(f"{pkg}\n")
        (d / "core_id").write_text(f"{core}\n")
    for node, cpus in [(0, "0-1"), (1, "2-3")]:
        (base / f"node/node{node}").mkdir(parents=True)
        (base / f"node/node{node}/cpulist").write_text(cpus + "\n")
    topo = read_topology(sysfs_root=tmp_path)
    assert topo[2] == CpuTopo(2, 1, 1, 0)
    a = NodeAllocator(sysfs_root=tmp_path)
    assert a.allocate("x", 2) == [0, 1]
    assert a.allocate("y", 2) == [2, 3]


def test_this_hosts_topology():
    topo = read_topology()
    assert [t.cpu for t in topo] == sorted(t.cpu for t in topo)
    assert len(topo) >= 1
