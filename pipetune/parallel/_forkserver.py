"""Warm rank starts: this process's ``multiprocessing`` forkserver with torch preloaded.

A worker group restarts into another strategy at an epoch boundary, and a
rank started with ``spawn`` is a fresh interpreter that imports torch: 4–5 s
on this project's hosts, per group, paid again at every restart (measured
``restart_s`` 6.4–8.7 s).  A rank forked from a forkserver that has already
imported torch, ``torch.distributed`` and the strategy and workload modules
starts in a few hundredths of a second; only the first group of a trial pays
for the forkserver's own imports (once, not once per rank).

:class:`WarmForkserver` is the handle a :class:`~pipetune.parallel.group.GroupRunner`
holds from its first group of ranks to the end of its ``run``: :func:`acquire_forkserver` starts the
forkserver on first use, :meth:`WarmForkserver.release` stops it when its
last holder lets go.  Why its lifetime is a run, not the process's:

* it is started by the trial process (``spawn_workers`` runs there), so it is
  born in the trial's cgroup and cpuset and its ranks are born there too; the
  controllers move and limit a trial's process tree (``with_descendants``),
  which contains it and the ranks (its children);
* stopped when the trial's training returns, it cannot sit in a trial's
  cgroup after the trial (a Ray worker reused for another trial starts a
  new one, inside the new trial's cgroup), and it holds no memory (torch
  imported: ~0.2–0.3 GB) between trials;
* the environment it was started with is the trial's; ranks still get the
  trial process's environment and CPU affinity *at the group's start*, as
  ``spawn`` gives them (:func:`pipetune.parallel._runtime._worker_main`).

One case is not covered: a trial Tune stops without its ``finally`` (its
thread never returns from ``run``) keeps its hold, so a Ray worker reused
for the next trial goes on with that forkserver.  It is then still a
descendant of the trial process, which the next trial's ``open_trial``
moves into the new cgroup with its descendants (and the old cgroup's close
moves every process out before removing it), and its ranks take the new
trial's environment and affinity; only its preloaded modules are the old
trial's (the same workload's, in one job).

``multiprocessing`` has one forkserver per process and no public way to stop
it or learn its pid; both go through ``multiprocessing.forkserver._forkserver``
(``_stop``, ``_forkserver_pid``, ``_forkserver_alive_fd``: CPython 3.4–3.13,
used by CPython's own tests).  Where those are missing, :func:`acquire_forkserver`
returns None and ranks are spawned as before.

Why ranks still die with the trial process: a rank asks for ``SIGTERM`` when
its parent — the forkserver — dies (``PR_SET_PDEATHSIG``).  The forkserver
exits when every holder of its "alive" pipe's write end has closed it; each
forked child inherits a copy, so a rank closes its copy first thing
(:func:`detach_from_forkserver`): then the trial process is the only holder,
and its death ends the forkserver, which ends the ranks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

#: Modules every rank imports whatever its strategy (the workload's module is added).
PRELOAD: tuple[str, ...] = (
    "torch",
    # torch.optim's first optimizer imports it (1.2-1.8 s here): every rank builds one
    "torch._dynamo",
    "torch.distributed",
    "pipetune.parallel._runtime",
    "pipetune.parallel.local",
    "pipetune.parallel.ddp",
    "pipetune.parallel.mp",
    "pipetune.parallel.gpipe",
)

_LOCK = threading.Lock()
_holders = 0
#: Whether the forkserver running now was started by :func:`acquire_forkserver`
#: (one someone else started in this process is used, never stopped).
_started_here = False


def _stdlib_server() -> Any:
    """``multiprocessing.forkserver._forkserver`` if it has what we use, else None."""
    try:
        from multiprocessing import forkserver
    except ImportError:  # pragma: no cover - not POSIX
        return None
    server = getattr(forkserver, "_forkserver", None)
    needed = ("_stop", "ensure_running", "_forkserver_pid", "_forkserver_alive_fd")
    if server is None or not all(hasattr(server, name) for name in needed):
        return None
    return server


class WarmForkserver:
    """One holder's handle on the forkserver; :meth:`release` once when done.

    Thread-safe (holders in several threads of one process share one server).
    """

    def __init__(self, server: Any, context: Any) -> None:
        self._server = server
        self.context = context
        self._released = False

    def pid(self) -> int:
        """The forkserver's pid, started again if it died (ranks' parent).

        Raises:
            OSError: it could not be started.
        """
        from pipetune.procs import signals_unblocked

        with _LOCK:
            # Started from a Ray trial thread, it would inherit that thread's
            # blocked signals; its loop needs SIGCHLD to reap ranks.
            with signals_unblocked(frozenset({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT})):
                self._server.ensure_running()
            return int(self._server._forkserver_pid)

    def release(self) -> None:
        """Let go; the last holder stops the forkserver if it was started here.

        Call only once this holder's ranks have ended: stopping waits for the
        forkserver to exit, which it does once no rank holds its pipe open.
        """
        global _holders, _started_here
        with _LOCK:
            if self._released:
                return
            self._released = True
            _holders -= 1
            if _holders > 0 or not _started_here:
                return
            _started_here = False
            pid = self._server._forkserver_pid
            try:
                self._server._stop()
            except OSError as e:  # already gone and reaped
                log.debug("forkserver %s: stop: %s", pid, e)
                self._server._forkserver_pid = None
            log.debug("forkserver %s stopped", pid)


def acquire_forkserver(modules: Iterable[str] = ()) -> WarmForkserver | None:
    """A handle on this process's forkserver with :data:`PRELOAD` and ``modules``
    preloaded (its start is lazy: the first rank's start waits for the imports).

    Returns None where the forkserver cannot be used (then spawn ranks).
    The preload list applies when the server starts; a module that fails to
    import there is imported by each rank instead.
    """
    global _holders, _started_here
    server = _stdlib_server()
    if server is None:
        log.info("no usable multiprocessing forkserver here: ranks are spawned")
        return None
    import torch.multiprocessing as tmp

    context = tmp.get_context("forkserver")
    with _LOCK:
        if _holders == 0:
            _started_here = server._forkserver_pid is None
            if _started_here:
                # Not "__main__": the forkserver would run the main script (in a
                # Ray worker, Ray's own); a rank imports it as a spawned one does.
                names = [m for m in dict.fromkeys([*PRELOAD, *modules]) if m != "__main__"]
                context.set_forkserver_preload(found_alike(names))
        _holders += 1
    return WarmForkserver(server, context)


_FIND = """
import importlib.util, json, sys
out = {}
for name in sys.argv[1:]:
    try:
        spec = importlib.util.find_spec(name)
        out[name] = spec.origin if spec is not None else None
    except Exception:
        out[name] = None
print(json.dumps(out))
"""


def found_alike(modules: Iterable[str]) -> list[str]:
    """Those of ``modules`` whose top-level package a fresh interpreter finds
    where this process found it.

    Why: the forkserver is a fresh interpreter (this executable, environment
    and working directory) and, on CPython 3.11, does not take this process's
    ``sys.path``; a module it preloads from elsewhere (this process added a
    path at run time) is the one its ranks would run, where a spawned rank
    takes the trial's ``sys.path`` first.  A module left out is imported by
    each rank from the trial's ``sys.path``.  Costs one ``python -c`` (~50 ms).
    """
    import importlib.util
    import json
    import subprocess
    import sys
    from multiprocessing import util

    names = list(modules)
    tops = sorted({m.split(".")[0] for m in names})
    mine: dict[str, str | None] = {}
    for top in tops:
        try:
            spec = importlib.util.find_spec(top)
            mine[top] = spec.origin if spec is not None else None
        except (ImportError, ValueError):
            mine[top] = None
    try:
        done = subprocess.run(
            [sys.executable, *util._args_from_interpreter_flags(), "-c", _FIND, *tops],
            capture_output=True, text=True, timeout=60, check=True)
        fresh = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        log.info("forkserver preload: could not check where modules come from (%s): "
                 "nothing preloaded", e)
        return []

    def same(name: str) -> bool:
        top = name.split(".")[0]
        return mine.get(top) is not None and mine[top] == fresh.get(top)

    alike = [m for m in names if same(m)]
    if len(alike) < len(names):
        log.info("forkserver preload leaves out %s: a fresh interpreter finds them elsewhere",
                 ", ".join(m for m in names if m not in alike))
    return alike


def detach_from_forkserver() -> None:
    """In a rank the forkserver forked: close its copy of the forkserver's
    "alive" pipe, so that the forkserver ends when the trial process does
    (and the rank with it, by its parent-death signal).  No-op elsewhere."""
    server = _stdlib_server()
    fd = getattr(server, "_forkserver_alive_fd", None) if server is not None else None
    if fd is None or getattr(server, "_forkserver_pid", None) is not None:
        return  # not a forkserver child (a process that started a forkserver has its pid)
    with contextlib.suppress(OSError):
        os.close(fd)
    server._forkserver_alive_fd = None


def forkserver_pid() -> int | None:
    """The pid of this process's forkserver, if it runs (for tests and logs)."""
    server = _stdlib_server()
    return None if server is None else server._forkserver_pid
