"""The perf output parser on recorded real output of this VM and on lines
built from perf's documented CSV format (PMU and cgroup: this VM has neither)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipetune.profiler import IntervalAssembler, parse_line

DATA = Path(__file__).resolve().parent.parent / "data" / "perf"


def _intervals(name: str, n_events: int):
    asm = IntervalAssembler(n_events)
    out = []
    for line in (DATA / name).read_text().splitlines():
        out.extend(asm.feed(line))
    return out + asm.flush()


def _n_events(name: str) -> int:
    first = None
    names = []
    for line in (DATA / name).read_text().splitlines():
        rec = parse_line(line)
        if rec is None:
            continue
        if first is None:
            first = rec.time_s
        if rec.time_s != first:
            break
        names.append(rec.event)
    return len(names)


def test_recorded_vm_output_software_and_tracepoints():
    # Recorded on this VM: perf stat -I 300 -x ';' -p PID with the host's
    # default events plus cycles,instructions (which this VM cannot count).
    n = _n_events("vm_interval_sw_tp.csv")
    intervals = _intervals("vm_interval_sw_tp.csv", n)
    assert n == 26
    assert len(intervals) >= 5
    times = [iv.time_s for iv in intervals]
    assert times == sorted(times) and len(set(times)) == len(times)
    for iv in intervals:
        assert len(iv.records) == n
        # No PMU here: cycles/instructions are <not supported> every interval and dropped.
        assert set(iv.unsupported) == {"cycles", "instructions"}
        assert "cycles" not in iv.counts()
        assert all(v >= 0 for v in iv.counts().values())
    busy = max(intervals, key=lambda iv: iv.counts()["task-clock"])
    # task-clock is in msec (the recording was made on the contended 2-core VM).
    assert busy.counts()["task-clock"] == pytest.approx(121.94)
    assert busy.time_s == pytest.approx(1.218858598)
    assert busy.records["task-clock"].unit == "msec"
    assert busy.running_pct()["task-clock"] == 100.0
    # The recorded run fsyncs 20 writes: the fsync tracepoint counted them.
    assert sum(iv.counts()["syscalls:sys_enter_fsync"] for iv in intervals) == 20


def test_not_counted_is_zero_for_that_interval():
    text = (DATA / "vm_interval_sw_tp.csv").read_text().splitlines()
    not_counted = [line for line in text if "<not counted>" in line]
    assert not_counted, "the recording has intervals where the target did not run"
    rec = parse_line(not_counted[0])
    assert rec is not None and rec.not_counted and rec.value == 0.0 and not rec.not_supported


def test_recorded_probe_output_without_interval():
    lines = (DATA / "vm_probe.csv").read_text().splitlines()
    recs = [r for r in (parse_line(line, interval=False) for line in lines) if r]
    by = {r.event: r for r in recs}
    assert set(by) == {"task-clock", "context-switches", "cycles", "sched:sched_switch",
                       "kmem:mm_page_alloc"}
    assert by["cycles"].not_supported
    assert by["kmem:mm_page_alloc"].value == 33
    assert by["task-clock"].time_s is None


def test_constructed_pmu_lines_keep_running_pct():
    # Constructed from perf-stat(1)'s documented format (file header says so).
    intervals = _intervals("pmu_constructed_interval.csv", 7)
    assert len(intervals) == 2
    first, second = intervals
    assert first.counts()["cycles"] == 2013456789
    assert first.running_pct()["cycles"] == pytest.approx(62.5)
    assert first.running_pct()["cache-misses"] == pytest.approx(31.25)
    assert first.counts()["LLC-load-misses"] == 0.0  # <not counted>
    assert second.counts()["LLC-load-misses"] == 4321
    assert first.counts()["cpu/mem-loads/"] == 98765
    assert second.counts()["task-clock"] == pytest.approx(999.75)


def test_recorded_cgroup2_lines():
    # Recorded on this VM: perf stat -e ... -a -G pipetune-rec -I 400 -x ';' with
    # a busy loop in the cgroup2 group (perf_event is bound to cgroup2 here).
    intervals = _intervals("vm_cgroup2_interval.csv", 4)
    assert len(intervals) == 4
    recs = [r for iv in intervals for r in iv.records.values()]
    assert {r.cgroup for r in recs} == {"pipetune-rec"}
    assert intervals[1].counts()["task-clock"] == pytest.approx(250.03)
    assert intervals[1].records["task-clock"].run_time == 250032868
    assert intervals[0].unsupported == ("cycles",)
    assert intervals[2].counts()["sched:sched_switch"] == 38


@pytest.mark.parametrize("line", ["", "# started on x", "garbage", "1.0;;;", "x;1;;cycles;1;100;;",
                                  "     1.0;abc;;cycles;1;100.00;;"])
def test_junk_lines_are_ignored(line):
    assert parse_line(line) is None


def test_aliases_are_canonical():
    rec = parse_line("1.0;5;;cs;1000;100.00;5.0;/sec")
    assert rec is not None and rec.event == "context-switches"


def test_interval_is_emitted_when_complete_not_one_late():
    asm = IntervalAssembler(2)
    assert asm.feed("1.0;10;;context-switches;1;100.00;;") == []
    done = asm.feed("1.0;2.5;msec;task-clock;1;100.00;;")
    assert len(done) == 1 and done[0].counts() == {"context-switches": 10, "task-clock": 2.5}
    # A short interval (an event missing) is closed by the next timestamp.
    assert asm.feed("2.0;3;;context-switches;1;100.00;;") == []
    assert asm.feed("3.0;4;;context-switches;1;100.00;;")[0].time_s == 2.0
    assert asm.flush()[0].time_s == 3.0


def test_more_lines_than_events_are_learnt():
    # e.g. a hybrid CPU printing cycles for two PMUs although one event was asked.
    asm = IntervalAssembler(1)
    assert len(asm.feed("1.0;100;;cycles;1;100.00;;")) == 1
    assert asm.feed("1.0;50;;cycles;1;100.00;;") == []  # late line of a finished interval
    assert asm.dropped == 1 and asm.n_events == 2
    assert asm.feed("2.0;100;;cycles;1;100.00;;") == []
    done = asm.feed("2.0;50;;cycles;1;50.00;;")
    assert len(done) == 1 and done[0].counts() == {"cycles": 150}
    assert done[0].running_pct() == {"cycles": 50.0}


def test_user_space_modifier_is_not_part_of_the_name() -> None:
    """perf prints ``task-clock:u`` at perf_event_paranoid=2 (non-root): the
    same event as ``task-clock``; a tracepoint's colon is its own."""
    from pipetune.profiler.events import canonical
    from pipetune.profiler.perf_stat import parse_line

    rec = parse_line("     0.504181484;2.01;msec;task-clock:u;2011294;100.00;0.502;CPUs utilized")
    assert rec is not None and rec.event == "task-clock" and rec.value == 2.01
    assert canonical("cycles:u") == "cycles" and canonical("cs:u") == "context-switches"
    assert canonical("cpu/mem-loads/:pp") == "cpu/mem-loads/"
    for tp in ("sched:sched_switch", "syscalls:sys_enter_read", "irq:softirq_entry"):
        assert canonical(tp) == tp
