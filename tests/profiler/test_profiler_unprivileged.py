"""perf as an unprivileged user, for real: ``nobody`` at this host's
kernel.perf_event_paranoid (2 here), without writable cgroups.

perf names the events it may count ``task-clock:u`` (user space only);
only tracepoints are denied.  The interpreter lives under /root (0700), so
each check runs in a private mount namespace (``unshare -m``) where /root is
a tmpfs holding only a bind mount of ~/.pyenv, then ``runuser -u nobody``
(tests/support/nobody.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.nobody import nobody_namespace

REPO = Path(__file__).resolve().parents[2]


def _paranoid() -> int:
    return int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())


@pytest.fixture
def as_nobody() -> Iterator[tuple[list[str], Path]]:
    """(command prefix, a folder nobody may write)."""
    if shutil.which("perf") is None:
        pytest.skip("perf is not installed")
    if _paranoid() > 2:
        pytest.skip("perf_event_paranoid > 2: no perf at all for other users here")
    with nobody_namespace() as (prefix, work):
        yield prefix, work


def _run(prefix: list[str], work: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": str(work),
           "PIPETUNE_HOME": str(work / "home"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=300,
                          env=env)


def test_doctor_as_nobody_finds_the_events_it_may_count(as_nobody) -> None:
    prefix, work = as_nobody
    who = _run(prefix, work, "id", "-u")
    assert who.stdout.strip() == "65534", who.stderr
    r = _run(prefix, work, sys.executable, "-m", "pipetune", "doctor", "--json")
    facts = json.loads(r.stdout)
    assert facts["user.root"] is False
    assert facts["perf.available"] is True, facts.get("perf.reason")
    assert facts["perf.software"] is True and "task-clock" in facts["perf.events"]
    assert "perf.reason" not in facts
    assert facts["perf.tracepoints"] is False and "perf_event_paranoid" in facts[
        "perf.tracepoints.reason"]
    assert "lower it to <= 2" not in r.stdout + r.stderr
    assert facts["cgroup.writable"] is False


SAMPLE = textwrap.dedent("""
    import json, subprocess, sys, time
    from pipetune.profiler import PerfStatSampler, available_events
    support = available_events()
    events = [e for e in support.default_events() if not e.startswith("rss")]
    busy = subprocess.Popen([sys.executable, "-c",
        "import time\\nt=time.time()\\nwhile time.time()-t<3: pass"])
    got = []
    s = PerfStatSampler(events, pids=[busy.pid], interval_ms=200,
                        on_interval=lambda iv, t: got.append(iv))
    s.start()
    time.sleep(1.5)
    s.stop()
    busy.wait()
    counts = {}
    for iv in got:
        for name, rec in iv.records.items():
            counts[name] = counts.get(name, 0.0) + rec.value
    print(json.dumps({"events": events, "counts": counts, "intervals": len(got)}))
""")


def test_a_sampler_as_nobody_counts_its_own_process(as_nobody) -> None:
    prefix, work = as_nobody
    r = _run(prefix, work, sys.executable, "-c", SAMPLE)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert "task-clock" in got["events"] and got["intervals"] >= 3
    assert set(got["counts"]) == set(got["events"]), "perf's ':u' names map to ours"
    assert got["counts"]["task-clock"] > 0
