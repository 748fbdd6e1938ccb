"""What outlives a stage job: its trained epochs and its tree, in the pipetune store.

:class:`StageLedger` is the stage store's link to the pipetune store
(:mod:`pipetune.store`; SQLite by default, InfluxDB optional).  It writes
two measurements:

- ``stage`` (tags ``space``, ``prefix``) — one point per trained epoch:
  ``prefix`` is the epoch key (:meth:`TrialPlan.epoch_keys`: the hash of the
  namespace and of every hyperparameter value of every epoch up to this
  one), ``space`` a hash of the namespace alone (workload, data, seed), so a
  later job loads the epochs of its own namespace in one query.  Fields: the
  epoch's metrics (``metrics``, JSON), the checkpoint written after it
  (``checkpoint``, a path; absent when none was), ``job``, ``trial``,
  ``epoch``, ``seconds``, ``cpu_s``, ``schema_version`` and, since version
  2, ``system`` (JSON: the config the trial's system policy had in force at
  the epoch's end, its state, its last decision and its profile's rates;
  absent for a trial without facts), from which a later job's child stage
  is decided (:class:`~pipetune.tuner.records.StageHint`).  Version-1
  points have no ``system``: their children are profiled afresh.
- ``stage_job`` (tag ``job``) — one point at the end of a stage job: its
  tree (``tree``, JSON rows of :meth:`StageStore.tree_rows` made compact by
  :func:`compact_tree`: the values that differ between nodes, the Tune
  trials each serves; ``tree_fixed``, the values every node shares) and its
  figures (epochs trained, replayed and reused, CPU-seconds, …).
  ``pipetune report`` reads it.

Checkpoint files are *not* in the store, only their paths: a file that is
gone when a later job loads the records (its job folder was removed) leaves
its epoch's metrics usable but its state not, and the epochs after the last
checkpoint still there are retrained (one warning line per load).  A file
that is there but unreadable is found by the trial that loads it, which
tells the stage store to forget it (:meth:`StageStore.forget_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["MAX_TREE_CHARS", "SCHEMA_VERSION", "StageLedger", "compact_tree", "space_of"]

#: Version of the fields of ``stage`` and ``stage_job`` points (2: ``stage``
#: points carry ``system``; version-1 points are read as before, without it).
SCHEMA_VERSION = 2


def space_of(namespace: str) -> str:
    """The ``space`` tag of a namespace (a short hash: no tag-escaping worries)."""
    return hashlib.sha256(namespace.encode()).hexdigest()[:16]


#: The longest stored tree (InfluxDB's string fields end at 64 KB).
MAX_TREE_CHARS = 60_000


def compact_tree(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows, fixed)``: each row's ``values`` reduced to the hyperparameters
    that differ between nodes, ``fixed`` the ones every node has alike, and
    the plan ids through each node (``trials``) left out (``tune_trials``
    name them as Tune does)."""
    keys = sorted({k for r in rows for k in r.get("values", {})})
    varying = {k for k in keys
               if len({repr(r.get("values", {}).get(k)) for r in rows}) > 1}
    fixed = {k: v for k, v in (rows[0].get("values", {}) if rows else {}).items()
             if k not in varying}
    out = []
    for r in rows:
        row = {k: v for k, v in r.items() if k != "trials"}
        row["values"] = {k: v for k, v in r.get("values", {}).items() if k in varying}
        out.append(row)
    return out, fixed


def _system_of(raw: Any) -> dict[str, Any] | None:
    """A ``stage`` point's ``system`` field read back; None when absent (a
    version-1 point) or unreadable."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class StageLedger:
    """Reads and writes stage records in the store at ``url``; see the module
    docstring.  The store is opened on first use (the ledger travels to the
    stage-store actor as two strings) and closed by :meth:`close`.

    Args:
        url: the pipetune store URL.
        spool_dir: where points wait while the store is down.
    """

    def __init__(self, url: str, spool_dir: str | Path) -> None:
        self.url = url
        self.spool_dir = str(spool_dir)
        self._store: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "spool_dir": self.spool_dir, "_store": None}

    @property
    def store(self) -> Any:
        if self._store is None:
            from pipetune.store import open_store

            self._store = open_store(self.url, spool_root=self.spool_dir)
        return self._store

    def write_epoch(
        self,
        *,
        namespace: str,
        key: str,
        epoch: int,
        metrics: Mapping[str, Any],
        checkpoint: str | None,
        job: str,
        trial: str,
        seconds: float,
        cpu_s: float,
        system: Mapping[str, Any] | None = None,
    ) -> None:
        """One trained epoch (never blocks: the store queues it); ``system``:
        the trial's system facts at its end (see the module docstring)."""
        from pipetune.store import Point

        fields: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "namespace": namespace,
            "metrics": json.dumps(dict(metrics), sort_keys=True),
            "job": job,
            "trial": trial,
            "epoch": int(epoch),
            "seconds": float(seconds),
            "cpu_s": float(cpu_s),
        }
        if checkpoint:
            fields["checkpoint"] = str(checkpoint)
        if system:
            fields["system"] = json.dumps(dict(system), sort_keys=True, default=repr)
        self.store.write(Point("stage", {"space": space_of(namespace), "prefix": key}, fields))

    def load(self, namespace: str) -> dict[str, dict[str, Any]]:
        """The trained epochs of ``namespace`` recorded by earlier jobs, by
        epoch key: ``{"metrics", "checkpoint" (None if gone), "job",
        "cpu_s", "system" (None in version-1 points)}``.  Per key, the
        latest record whose checkpoint file still exists wins, else the
        latest (its metrics alone)."""
        self.store.flush()
        df = self.store.query("stage", {"space": space_of(namespace)})
        out: dict[str, dict[str, Any]] = {}
        gone: list[str] = []
        if df.empty or "prefix" not in df.columns:
            return out
        for row in df.sort_values("time").to_dict("records"):
            if str(row.get("namespace")) != namespace:
                continue  # a hash collision of the space tag: not ours
            try:
                metrics = json.loads(row["metrics"])
            except (KeyError, TypeError, ValueError):
                continue  # not a record this version can read
            ckpt = row.get("checkpoint")
            ckpt = ckpt if isinstance(ckpt, str) and ckpt else None
            if ckpt is not None and not os.path.isfile(ckpt):
                gone.append(ckpt)
                ckpt = None
            key = str(row["prefix"])
            old = out.get(key)
            if old is not None and old["checkpoint"] and not ckpt:
                continue
            cpu = row.get("cpu_s")
            out[key] = {
                "metrics": metrics,
                "checkpoint": ckpt,
                "job": str(row.get("job", "")),
                "cpu_s": float(cpu) if isinstance(cpu, (int, float)) else None,
                "system": _system_of(row.get("system")),
            }
        gone = [g for g in gone if not any(r["checkpoint"] == g for r in out.values())]
        if gone:
            log.warning(
                "%d stage checkpoint(s) recorded in the store are gone (e.g. %s): the epochs "
                "after the last checkpoint still there are retrained", len(gone), gone[0]
            )
        return out

    def write_job(self, job: str, tree: list[dict[str, Any]], figures: Mapping[str, Any]) -> None:
        """The job's stage tree and figures (``figures``: plain numbers).

        The tree is stored compactly (:func:`compact_tree`): InfluxDB keeps
        a string field of at most 64 KB, so a tree still larger than
        :data:`MAX_TREE_CHARS` is left out (one warning line; its figures
        are still written)."""
        from pipetune.store import Point

        rows, fixed = compact_tree(tree)
        text = json.dumps(rows, sort_keys=True, default=repr)
        if len(text) > MAX_TREE_CHARS:
            log.warning("job %s: stage tree of %d nodes too large for the store (%d chars); "
                        "its figures are recorded, its tree is not", job, len(tree), len(text))
            text = "[]"
        fields: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "tree": text,
            "tree_fixed": json.dumps(fixed, sort_keys=True, default=repr),
        }
        fields.update({k: v for k, v in figures.items()
                       if isinstance(v, (int, float, str)) and not isinstance(v, bool)})
        self.store.write(Point("stage_job", {"job": job}, fields))

    def close(self) -> None:
        """Flush what is queued and close the store (what cannot be sent
        stays in the spool for the next process)."""
        if self._store is not None:
            self._store.close()
            self._store = None
