"""Detection of the cgroup layout and choice of controller."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
from control_helpers import FakeCgroupV2Fs

from pipetune.control import (
    AffinityController,
    CgroupFs,
    CgroupV1Controller,
    CgroupV2Controller,
    DryRunController,
    cgroups_writable,
    detect_cgroups,
    detect_controller,
    own_cgroups,
)
from pipetune.errors import ConfigError, ControlError, PrivilegeError

# Recorded from this host (cgroup v1 + an empty cgroup2 mount).
HOST_V1 = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HOST_PROC = """\
9:name=systemd:/
4:memory:/process_api/abc
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""
# A typical systemd host in pure v2 mode.
PURE_V2 = """\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
"""
# Older hybrid systemd with co-mounted cpu,cpuacct and a container root.
COMOUNT = """\
30 25 0:26 /docker/xyz /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 /docker/xyz /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
"""


def test_detect_host_layout():
    info = detect_cgroups(HOST_V1)
    assert info.version == "hybrid"
    assert info.v1_mounts["cpuset"] == Path("/sys/fs/cgroup/cpuset")
    assert info.v1_mounts["memory"] == Path("/sys/fs/cgroup/memory")
    assert info.unified == Path("/sys/fs/cgroup/unified")
    assert detect_cgroups(HOST_V1.replace(
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n", "")).version \
        == "v1"


def test_detect_pure_v2_comount_and_none(tmp_path):
    v2 = detect_cgroups(PURE_V2)
    assert v2.version == "v2" and v2.unified == Path("/sys/fs/cgroup") and not v2.v1_mounts
    co = detect_cgroups(COMOUNT)
    assert co.version == "hybrid"
    assert co.v1_mounts["cpu"] == co.v1_mounts["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert co.v1_roots["memory"] == "/docker/xyz"
    assert "cpu" in co.read_only
    assert detect_cgroups("22 1 0:21 / /sys rw - sysfs sysfs rw\n").version == "none"
    assert detect_cgroups(tmp_path / "missing").version == "none"


def test_detect_reads_this_hosts_mountinfo():
    info = detect_cgroups()
    assert info.version in ("v1", "v2", "hybrid", "none")
    if Path("/sys/fs/cgroup/cpuset/cpuset.cpus").exists():
        assert info.v1_mounts["cpuset"] == Path("/sys/fs/cgroup/cpuset")


def test_own_cgroups_per_controller():
    own = own_cgroups(HOST_PROC)
    assert own["memory"] == "/process_api/abc" and own["cpuset"] == "/"
    assert own["unified"] == "/"
    assert own["name=systemd"] == "/"


def test_v1_from_host_places_groups_in_own_cgroup(tmp_path):
    ctl = CgroupV1Controller.from_host(detect_cgroups(HOST_V1), proc_cgroup=HOST_PROC,
                                       cgroup_root=tmp_path)
    assert ctl.controller_dirs["memory"] == tmp_path / "memory/process_api/abc"
    assert ctl.parent_dir("memory") == tmp_path / "memory/process_api/abc/pipetune"
    assert ctl.controller_dirs["cpuset"] == tmp_path / "cpuset"


def test_container_root_is_stripped(tmp_path):
    ctl = CgroupV1Controller.from_host(
        detect_cgroups(COMOUNT),
        proc_cgroup="3:cpu,cpuacct:/docker/xyz/sub\n2:memory:/docker/xyz\n",
        cgroup_root=tmp_path)
    assert ctl.controller_dirs["cpu"] == tmp_path / "cpu,cpuacct/sub"
    assert ctl.controller_dirs["memory"] == tmp_path / "memory"
    assert len(ctl.own_dirs) == 2  # cpu and cpuacct share one hierarchy


def test_this_host_is_writable_and_auto_picks_cgroups(no_cgroup_left):
    ok = cgroups_writable()
    if ok is not True:
        pytest.skip(f"not writable here: {ok}")
    assert detect_controller("auto").name.startswith("cgroup")
    assert detect_controller("auto").degraded == ""
    assert isinstance(detect_controller("dry-run"), DryRunController)
    assert isinstance(detect_controller("affinity"), AffinityController)
    with pytest.raises(ConfigError, match="expected one of"):
        detect_controller("systemd")


def _fake_v2_host(tmp_path):
    root = tmp_path / "cg"
    fs = FakeCgroupV2Fs(root)
    (root / "me").mkdir()
    fs._populate(root / "me")
    mountinfo = "26 22 0:23 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    return dict(cgroup_root=root, mountinfo=mountinfo, proc_cgroup="0::/me\n", fs=fs)


def test_auto_on_a_v2_host_gives_the_v2_backend(tmp_path):
    kw = _fake_v2_host(tmp_path)
    assert cgroups_writable(**kw) is True
    ctl = detect_controller("auto", **kw)
    assert isinstance(ctl, CgroupV2Controller)
    assert ctl.own_dir == kw["cgroup_root"] / "me"
    # Probing left nothing behind, and enabled the controllers for children.
    assert not (ctl.own_dir / "pipetune").exists()
    assert set((ctl.own_dir / "cgroup.subtree_control").read_text().split()) == {
        "cpu", "cpuset", "memory"}


class ReadOnlyFs(CgroupFs):
    def mkdir(self, path):
        raise self._error("create", path, OSError(errno.EROFS, os.strerror(errno.EROFS)))


def test_read_only_cgroupfs_falls_back_to_affinity_and_says_why(tmp_path, caplog):
    kw = _fake_v2_host(tmp_path)
    ro = ReadOnlyFs()
    kw["fs"] = ro
    why = cgroups_writable(**kw)
    assert isinstance(why, str) and "Read-only file system" in why
    with pytest.raises(PrivilegeError, match="not writable"):
        detect_controller("cgroup", **kw)
    with caplog.at_level(logging.WARNING, logger="pipetune.control"):
        ctl = detect_controller("auto", **kw)
    assert isinstance(ctl, AffinityController)
    assert "falling back to CPU affinity" in caplog.text and "Read-only" in caplog.text
    # ... and the controller itself says what a trial loses, for the trial to report
    assert "Read-only" in ctl.degraded and "no memory limit" in ctl.degraded
    assert detect_controller("affinity").degraded == ""  # asked for: nothing lost


def test_v2_without_controllers_is_unusable(tmp_path):
    kw = _fake_v2_host(tmp_path)
    (kw["cgroup_root"] / "me" / "cgroup.controllers").write_text("\n")
    assert "no controllers" in cgroups_writable(**kw)
    with pytest.raises(ControlError, match="no controllers"):
        detect_controller("cgroup", **kw)


def test_v2_internal_process_rule_is_explained(tmp_path):
    kw = _fake_v2_host(tmp_path)

    class BusyFs(FakeCgroupV2Fs):
        def write(self, path, value):
            if path.name == "cgroup.subtree_control" and path.parent.name == "me":
                raise self._error("write to", path, OSError(errno.EBUSY, "busy"))
            super().write(path, value)

    fs = BusyFs.__new__(BusyFs)
    fs.__dict__.update(kw["fs"].__dict__)
    kw["fs"] = fs
    why = cgroups_writable(**kw)
    assert "no internal processes" in why and "Delegate=yes" in why
    assert not (kw["cgroup_root"] / "me" / "pipetune").exists()  # nothing left half-made


def test_no_cgroups_at_all(tmp_path):
    why = cgroups_writable(mountinfo="22 1 0:21 / /sys rw - sysfs sysfs rw\n",
                           proc_cgroup="0::/\n")
    assert "no usable cgroup hierarchy" in why
    assert isinstance(detect_controller("auto", mountinfo="22 1 0:21 / /sys rw - sysfs s rw\n",
                                        proc_cgroup="0::/\n"), AffinityController)
