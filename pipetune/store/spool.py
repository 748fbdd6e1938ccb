"""On-disk spool for points that could not reach the backend.

Each writing process appends to its own JSON-lines file and holds an
exclusive ``flock`` on it for as long as it lives.  A replayer may take over a
file only if it can lock it, i.e. only files whose writer is gone (crashed or
finished while the backend was down).  Replays are safe to repeat because
backends replace a point with the same series and time (see
:mod:`pipetune.store.base`): a crash between "written" and "spool truncated"
writes the points again, and the store still holds each once.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pipetune.store.base import Point

log = logging.getLogger(__name__)


def spool_dir_for(root: str | Path, url: str) -> Path:
    """One spool folder per store URL, so points only replay where they belong."""
    digest = hashlib.sha1(url.encode()).hexdigest()[:12]
    return Path(root) / digest


class Spool:
    """This process's spool file for one store, plus replay of dead writers' files.

    Thread-safe: the writer thread and a caller whose queue is full may append
    at once.
    """

    def __init__(self, directory: Path, url: str) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "url").write_text(url + "\n")
        self._lock = threading.Lock()
        name = f"spool-{os.getpid()}-{time.time_ns()}.jsonl"
        self.path = self.directory / name
        self._fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - lives with the spool
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, points: Sequence[Point]) -> None:
        if not points:
            return
        with self._lock:
            self._fh.write("".join(p.to_json() + "\n" for p in points))
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._count += len(points)

    def reject(self, points: Sequence[Point]) -> Path:
        """Keep points the backend refused in a file that is never replayed."""
        path = self.directory / f"rejected-{os.getpid()}.jsonl"
        with self._lock, open(path, "a", encoding="utf-8") as fh:
            fh.write("".join(p.to_json() + "\n" for p in points))
        return path

    def replay_own(self, write: Callable[[Sequence[Point]], None], batch_size: int) -> int:
        """Send this process's spooled points; truncate once all went through.

        ``write`` raising leaves the file as it was (it is retried later).
        """
        with self._lock:
            if self._count == 0:
                return 0
            self._fh.seek(0)
            points = [Point.from_json(line) for line in self._fh if line.strip()]
            for batch in _batches(points, batch_size):
                write(batch)
            self._fh.seek(0)
            self._fh.truncate()
            self._count = 0
            return len(points)

    def replay_orphans(self, write: Callable[[Sequence[Point]], None], batch_size: int) -> int:
        """Send the files of writers that are gone, then delete them."""
        sent = 0
        for path in sorted(self.directory.glob("spool-*.jsonl")):
            if path == self.path:
                continue
            try:
                fh = open(path, "r+", encoding="utf-8")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                continue  # another replayer took it
            with fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its writer is alive and replays it itself
                if not path.exists():
                    continue  # replayed and deleted while we waited
                points = [Point.from_json(line) for line in fh if line.strip()]
                for batch in _batches(points, batch_size):
                    write(batch)
                path.unlink()
                sent += len(points)
                log.info("replayed %d spooled points from %s", len(points), path.name)
        return sent

    def orphan_count(self) -> int:
        """Points in other files of this spool (for ``doctor`` and tests)."""
        n = 0
        for path in self.directory.glob("spool-*.jsonl"):
            if path != self.path:
                with open(path, encoding="utf-8") as fh:
                    n += sum(1 for line in fh if line.strip())
        return n

    def close(self) -> None:
        """Release the file; delete it when empty so the folder stays clean."""
        with self._lock:
            empty = self._count == 0
            self._fh.close()
            if empty:
                self.path.unlink(missing_ok=True)


def spooled_points(root: str | Path, url: str) -> int:
    """Points waiting in every spool file of ``url`` under ``root`` (every
    writer's, alive or gone), without creating anything: what a job's summary
    says is still to be replayed."""
    n = 0
    for path in spool_dir_for(root, url).glob("spool-*.jsonl"):
        try:
            with open(path, encoding="utf-8") as fh:
                n += sum(1 for line in fh if line.strip())
        except FileNotFoundError:
            continue  # replayed and deleted meanwhile
    return n


def _batches(points: Sequence[Point], size: int) -> Iterator[Sequence[Point]]:
    for i in range(0, len(points), size):
        yield points[i : i + size]
