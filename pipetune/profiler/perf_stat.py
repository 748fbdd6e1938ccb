"""``perf stat -I`` as a subprocess: the parser and the sampler that owns perf.

- :func:`parse_line` — one line of ``perf stat -x ';'`` output → :class:`PerfRecord`.
- :class:`IntervalAssembler` — groups interval lines into :class:`PerfInterval`\\ s.
- :class:`PerfStatSampler` — runs ``perf stat -I <ms> -x ';'`` attached to
  PIDs (``-p``) or a cgroup (``-G``), reads its output on a thread and hands
  each finished interval to a callback.

What perf does here, verified on this project's VM (perf 6.1, kernel 6.18):

- ``-p PID[,PID]`` opens the counters on every thread that exists at attach
  time, with inheritance: threads *and child processes created after attach*
  are counted (a two-thread loop started after attach reads ≈ 2 CPU-s/s of
  task-clock; a ``subprocess`` started after attach is counted).  Processes
  that already existed as *children* of the target before attach are not:
  list the whole process tree in ``pids``.
- A target that did not run at all in an interval prints ``<not counted>``
  (0 for that interval); ``<not supported>`` (no PMU on a VM) repeats every
  interval and the event is dropped.
- perf notices that every target has exited only at its next interval tick
  (the last sample is a full interval), and a zombie counts as alive, so
  whoever started the target must reap it.
- ``-G`` works here for cgroups of the cgroup2 hierarchy (``perf_event`` is
  bound to v2 on this VM, not mounted in v1): ``perf_event_cgroup_root``.
- The sampler starts perf with events disabled (``-D -1``) and enables them
  over ``--control fd:CTL,ACK``; the ack proves the counters are attached
  before :meth:`PerfStatSampler.start` returns, and perf's output goes to a
  pipe we own (``--log-fd``), never to the terminal.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipetune.errors import PerfUnavailableError, ProfilerError
from pipetune.procs import end_child, signals_unblocked
from pipetune.profiler.events import canonical

log = logging.getLogger(__name__)

NOT_COUNTED = "<not counted>"
NOT_SUPPORTED = "<not supported>"


@dataclass(frozen=True)
class PerfRecord:
    """One line of ``perf stat -x ';'`` output.

    ``value`` is in perf's unit (msec for task-clock and cpu-clock), already
    scaled by perf for multiplexing; ``running_pct`` is the share of the time
    the counter was on the PMU.  ``time_s`` is seconds since perf started
    counting (interval mode only).
    """

    event: str
    value: float
    unit: str = ""
    time_s: float | None = None
    running_pct: float = 100.0
    run_time: float = 0.0
    cgroup: str = ""
    not_counted: bool = False
    not_supported: bool = False


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_line(line: str, *, interval: bool = True, sep: str = ";") -> PerfRecord | None:
    """Parse one CSV line of ``perf stat -x SEP`` (``-I`` output when
    ``interval``).  Returns None for comments, blank and metric-only lines.

    Field layout (perf's documented CSV format)::

        [time;]value;unit;event[;cgroup];run-time;running-pct;metric;metric-unit
    """
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    fields = line.split(sep)
    time_s: float | None = None
    if interval:
        time_s = _float(fields[0])
        if time_s is None:
            return None
        fields = fields[1:]
    if len(fields) < 3:
        return None
    raw_value, unit, event = fields[0].strip(), fields[1].strip(), fields[2].strip()
    if not event:
        return None
    rest = fields[3:]
    cgroup = ""
    if rest and rest[0] and _float(rest[0]) is None:
        cgroup, rest = rest[0], rest[1:]
    run_time = _float(rest[0]) if rest else None
    pct = _float(rest[1]) if len(rest) > 1 else None
    not_counted = raw_value == NOT_COUNTED
    not_supported = raw_value == NOT_SUPPORTED
    if not_counted or not_supported:
        value = 0.0
    else:
        parsed = _float(raw_value)
        if parsed is None:
            return None
        value = parsed
    return PerfRecord(
        event=canonical(event),
        value=value,
        unit=unit,
        time_s=time_s,
        running_pct=100.0 if pct is None else pct,
        run_time=run_time or 0.0,
        cgroup=cgroup,
        not_counted=not_counted,
        not_supported=not_supported,
    )


@dataclass
class PerfInterval:
    """The lines of one ``-I`` interval, keyed by event (filled by the
    assembler, then only read)."""

    time_s: float
    records: dict[str, PerfRecord] = field(default_factory=dict)
    n_lines: int = 0

    def counts(self) -> dict[str, float]:
        """Values of the counted events (``<not counted>`` → 0, unsupported left out)."""
        return {e: r.value for e, r in self.records.items() if not r.not_supported}

    def running_pct(self) -> dict[str, float]:
        return {e: r.running_pct for e, r in self.records.items() if not r.not_supported}

    @property
    def unsupported(self) -> tuple[str, ...]:
        return tuple(e for e, r in self.records.items() if r.not_supported)


class IntervalAssembler:
    """Group interval lines by timestamp.

    An interval is complete when it has ``n_events`` lines (perf prints every
    event each interval), when a line of a later interval arrives, or at the
    end of the output (:meth:`flush`) — so a sample is handed on as soon as
    perf printed it, not one interval late.  Should perf print more lines per
    interval than events were asked for (an event expanded to several PMUs on
    a hybrid CPU), the late lines of an interval already handed on are
    dropped and the expected count grows, so later intervals are whole.
    """

    def __init__(self, n_events: int) -> None:
        self.n_events = n_events
        self._current: PerfInterval | None = None
        self._last_done: float | None = None
        self.dropped = 0

    def feed(self, line: str) -> list[PerfInterval]:
        rec = parse_line(line, interval=True)
        if rec is None or rec.time_s is None:
            return []
        if self._current is None and rec.time_s == self._last_done:
            self.dropped += 1
            self.n_events += 1
            log.debug("perf printed more lines per interval than events; expecting %d",
                      self.n_events)
            return []
        done: list[PerfInterval] = []
        if self._current is not None and rec.time_s != self._current.time_s:
            done.append(self._current)
            self._current = None
        if self._current is None:
            self._current = PerfInterval(rec.time_s)
        key = rec.event
        if key in self._current.records:  # same name from another PMU: sum them
            old = self._current.records[key]
            rec = PerfRecord(key, old.value + rec.value, rec.unit, rec.time_s,
                             min(old.running_pct, rec.running_pct), old.run_time + rec.run_time,
                             rec.cgroup, old.not_counted and rec.not_counted,
                             old.not_supported and rec.not_supported)
            self._current.records[key] = rec
            self._current.n_lines += 1
        else:
            self._current.records[key] = rec
            self._current.n_lines += 1
        if self._current.n_lines >= self.n_events:
            done.append(self._current)
            self._current = None
        if done:
            self._last_done = done[-1].time_s
        return done

    def flush(self) -> list[PerfInterval]:
        done = [self._current] if self._current is not None else []
        self._current = None
        return done


def perf_event_cgroup_root(
    proc_cgroups: str | os.PathLike[str] = "/proc/cgroups",
    proc_mounts: str | os.PathLike[str] = "/proc/mounts",
) -> str | None:
    """Where cgroups that ``perf stat -G`` can name live, or None.

    The ``perf_event`` controller is either mounted on a v1 hierarchy (its
    mount point) or — hierarchy 0 in ``/proc/cgroups`` — bound to the cgroup2
    hierarchy, where it needs no enabling (the cgroup2 mount point).  On this
    project's VM it is the latter: v1 has no perf_event mount, but ``-G``
    works for cgroups under ``/sys/fs/cgroup/unified``.
    """
    hierarchy = None
    try:
        for line in Path(proc_cgroups).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[0] == "perf_event" and parts[3] == "1":
                hierarchy = parts[1]
    except OSError:
        return None
    if hierarchy is None:
        return None
    try:
        mounts = [line.split() for line in Path(proc_mounts).read_text().splitlines()]
    except OSError:
        return None
    for m in mounts:
        if len(m) < 4:
            continue
        if hierarchy != "0" and m[2] == "cgroup" and "perf_event" in m[3].split(","):
            return m[1]
        if hierarchy == "0" and m[2] == "cgroup2":
            return m[1]
    return None


def perf_event_cgroup_available(
    proc_cgroups: str | os.PathLike[str] = "/proc/cgroups",
    proc_mounts: str | os.PathLike[str] = "/proc/mounts",
) -> bool:
    """Whether ``perf stat -G`` can work on this host (see :func:`perf_event_cgroup_root`)."""
    return perf_event_cgroup_root(proc_cgroups, proc_mounts) is not None


_live: weakref.WeakSet[PerfStatSampler] = weakref.WeakSet()


@atexit.register
def _stop_live_samplers() -> None:
    # perf runs in its own session (a Ctrl-C must not end it early), so an
    # owner that exits without stop() would leave it counting until the
    # target ends: stop what is left, by PID, on the way out.
    for sampler in list(_live):
        with contextlib.suppress(Exception):
            sampler.stop(timeout_s=2.0)


class PerfStatSampler:
    """Owns one ``perf stat -I`` subprocess and reads its intervals.

    Thread safety: :meth:`start` and :meth:`stop` are meant for the owner's
    thread; ``on_interval`` runs on the sampler's reader thread.  The sampler
    ends perf by its PID only (SIGINT, then SIGKILL), and :meth:`stop` is
    idempotent.  When perf ends by itself (every target exited, or perf
    failed), the reader calls ``on_end`` with the reason and ends cleanly.
    """

    def __init__(
        self,
        events: Sequence[str],
        *,
        pids: Sequence[int] = (),
        cgroup: str | None = None,
        interval_ms: int = 1000,
        perf_binary: str = "perf",
        on_interval: Callable[[PerfInterval, float], None] | None = None,
        on_end: Callable[[str], None] | None = None,
        start_timeout_s: float = 15.0,
    ) -> None:
        if not events:
            raise ProfilerError("perf sampler needs at least one event")
        if interval_ms < 10:
            raise ProfilerError(f"interval_ms={interval_ms}: perf needs >= 10 ms")
        if bool(pids) == bool(cgroup):
            raise ProfilerError("perf sampler needs either pids or a cgroup, not both")
        self.events = tuple(canonical(e) for e in events)
        self.pids = tuple(int(p) for p in pids)
        self.cgroup = cgroup
        self.interval_ms = int(interval_ms)
        self.perf_binary = perf_binary
        self.on_interval = on_interval
        self.on_end = on_end
        self.start_timeout_s = start_timeout_s
        self.unsupported: set[str] = set()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stderr_file: tempfile._TemporaryFileWrapper[bytes] | None = None
        self._log_r: int | None = None
        self._ctl_w: int | None = None
        self._ack_r: int | None = None
        self._lock = threading.Lock()
        self.enabled_at: float | None = None  # time.time() when counting began
        self._offset: float | None = None  # wall time of perf's t=0 (best estimate)

    @property
    def pid(self) -> int | None:
        """PID of our perf process (None before start)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, ctl_fd: int, ack_fd: int, log_fd: int) -> list[str]:
        path = shutil.which(self.perf_binary) or self.perf_binary
        cmd = [path, "stat", "-I", str(self.interval_ms), "-x", ";", "--log-fd", str(log_fd),
               "-D", "-1", "--control", f"fd:{ctl_fd},{ack_fd}", "-e", ",".join(self.events)]
        if self.cgroup:
            if not perf_event_cgroup_available():
                raise PerfUnavailableError(
                    f"cannot profile cgroup {self.cgroup!r}: this host has no mounted "
                    "perf_event cgroup hierarchy (attach to the trial's PIDs instead)")
            # -G names a cgroup relative to the perf_event hierarchy's mount and
            # must follow -e; one name applies to every event.
            cmd += ["-a", "-G", self.cgroup.lstrip("/") or "/"]
        else:
            cmd += ["-p", ",".join(str(p) for p in self.pids)]
        return cmd

    def start(self) -> None:
        """Start perf, enable its counters and return once they are attached.

        Raises:
            PerfUnavailableError: perf is missing or may not attach.
            ProfilerError: perf refused an event or a PID, or did not answer.
        """
        if self._proc is not None:
            raise ProfilerError("sampler already started")
        if shutil.which(self.perf_binary) is None:
            raise PerfUnavailableError(f"perf binary {self.perf_binary!r} not found")
        ctl_r, ctl_w = os.pipe()
        ack_r, ack_w = os.pipe()
        log_r, log_w = os.pipe()
        self._stderr_file = tempfile.TemporaryFile(prefix="pipetune-perf-")  # noqa: SIM115 (outlives this call)
        try:
            cmd = self.command(ctl_r, ack_w, log_w)
            log.debug("starting %s", " ".join(cmd))
            # Unblocked: Ray's trial threads block SIGINT, and perf would
            # inherit that and never see the SIGINT that stop() sends.
            with signals_unblocked():
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=self._stderr_file, pass_fds=(ctl_r, ack_w, log_w), close_fds=True,
                    start_new_session=True,  # a Ctrl-C to our terminal must not end perf early
                )
        except OSError as e:
            for fd in (ctl_r, ctl_w, ack_r, ack_w, log_r, log_w):
                os.close(fd)
            raise PerfUnavailableError(f"cannot run {self.perf_binary}: {e}") from e
        except BaseException:
            for fd in (ctl_r, ctl_w, ack_r, ack_w, log_r, log_w):
                os.close(fd)
            raise
        for fd in (ctl_r, ack_w, log_w):
            os.close(fd)
        self._ctl_w, self._ack_r, self._log_r = ctl_w, ack_r, log_r
        # If perf is already gone the write fails; the ack read below says why.
        with contextlib.suppress(OSError):
            os.write(ctl_w, b"enable\n")
        ack = self._read_ack(self.start_timeout_s)
        if not ack.startswith(b"ack"):
            why = self._perf_error() or "perf did not acknowledge the enable command"
            self._terminate()
            self._close_fds()
            raise self._classify(why)
        self.enabled_at = time.time()
        _live.add(self)
        self._thread = threading.Thread(target=self._read_loop, name=f"perf-stat-{self.pid}",
                                        daemon=True)
        self._thread.start()

    def _read_ack(self, timeout_s: float) -> bytes:
        assert self._ack_r is not None
        ready, _, _ = select.select([self._ack_r], [], [], timeout_s)
        if not ready:
            return b""
        try:
            return os.read(self._ack_r, 64)
        except OSError:
            return b""

    def _perf_error(self) -> str:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=2.0)
        if self._stderr_file is None:
            return ""
        self._stderr_file.seek(0)
        text = self._stderr_file.read().decode(errors="replace")
        lines = [ln.strip() for ln in text.splitlines()
                 if ln.strip() and not ln.lstrip().startswith(("Usage:", "-e,", "-p,", "-t,"))
                 and ln.strip() not in ("Events disabled", "Events enabled")]
        return " ".join(lines)[:400]

    def _classify(self, why: str) -> ProfilerError:
        target = f"cgroup {self.cgroup}" if self.cgroup else \
            "pid " + ",".join(str(p) for p in self.pids)
        if "ermission" in why or "paranoid" in why or "Access" in why:
            return PerfUnavailableError(f"perf may not attach to {target}: {why}")
        if "finding threads" in why or "No such process" in why:
            return ProfilerError(f"perf cannot attach to {target}: no such process ({why})")
        if "event syntax" in why or "unknown tracepoint" in why or "valid events" in why:
            return ProfilerError(f"perf rejected an event of {','.join(self.events)}: {why}")
        return ProfilerError(f"perf failed on {target}: {why}")

    def _read_loop(self) -> None:
        assert self._log_r is not None
        assembler = IntervalAssembler(len(self.events))
        reason = ""
        try:
            with os.fdopen(self._log_r, "r", errors="replace", closefd=True) as stream:
                self._log_r = None
                for line in stream:
                    now = time.time()
                    for interval in assembler.feed(line):
                        self._emit(interval, now)
                for interval in assembler.flush():
                    self._emit(interval, time.time())
        except Exception as e:  # the sampler must end cleanly, whatever perf printed
            log.exception("perf output reader failed")
            reason = f"reading perf output failed: {e}"
        if not self._stopping.is_set():
            rc = self._proc.wait() if self._proc is not None else None
            err = self._perf_error()
            reason = reason or (f"perf exited (rc={rc}): every target process ended"
                                if not err else f"perf exited (rc={rc}): {err}")
            log.info("perf sampler %s ended: %s", self.pid, reason)
            if self.on_end is not None:
                try:
                    self.on_end(reason)
                except Exception:
                    log.exception("profiler on_end callback failed")

    def _emit(self, interval: PerfInterval, received_at: float) -> None:
        # perf's timestamps count from its start; the smallest (arrival - t)
        # seen so far is the best estimate of that start in wall time.
        offset = received_at - interval.time_s
        if self._offset is None or offset < self._offset:
            self._offset = offset
        new = set(interval.unsupported) - self.unsupported
        if new:
            log.info("perf: events not supported on this host, dropped: %s", ", ".join(sorted(new)))
            self.unsupported |= new
        if self.on_interval is not None:
            try:
                self.on_interval(interval, self._offset + interval.time_s)
            except Exception:
                log.exception("profiler interval callback failed")

    def stop(self, timeout_s: float = 5.0) -> None:
        """End perf (by its PID) and the reader thread.  Idempotent."""
        _live.discard(self)
        with self._lock:
            self._stopping.set()
            self._terminate(timeout_s)
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(timeout_s)
            self._close_fds()

    def _terminate(self, timeout_s: float = 5.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        # SIGINT makes perf print the last partial interval and exit.  perf
        # is started with SIGINT unblocked (see start()); should it still not
        # end, it is our own child: killed by PID, and no news for the user.
        if not end_child(proc, sig=signal.SIGINT, timeout_s=timeout_s):
            log.debug("perf %d did not end on SIGINT within %.0f s; killed it",
                      proc.pid, timeout_s)

    def _close_fds(self) -> None:
        for name in ("_ctl_w", "_ack_r", "_log_r"):
            fd = getattr(self, name)
            if fd is not None and not (name == "_log_r" and self._thread is not None
                                       and self._thread.is_alive()):
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)
        if self._stderr_file is not None and not (self._thread and self._thread.is_alive()):
            self._stderr_file.close()
            self._stderr_file = None
