"""Report what this host supports, by trying each thing rather than guessing.

Exit status: 0 when the store is reachable, 1 when it is not (so a node
set-up script can wait on it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipetune import __version__
from pipetune.config import Settings

COMMAND = "doctor"
HELP = "check what this host supports (cgroups, perf, energy, store, Ray, torch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", metavar="URL", help="store to check (default: the configured one)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _probe(facts: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    """Run one check; a failing check is a fact ("error: …"), not a crash."""
    try:
        facts[key] = fn()
    except Exception as e:  # noqa: BLE001 - doctor reports every failure as a finding
        facts[key] = False
        facts[key + ".error"] = f"{type(e).__name__}: {e}"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cgroup_facts(facts: dict[str, Any]) -> None:
    from pipetune.control import cgroups_writable, detect_cgroups

    info = detect_cgroups()
    facts["cgroup.version"] = info.effective_version()
    facts["cgroup.mounts"] = info.version
    writable = cgroups_writable()
    facts["cgroup.writable"] = writable is True
    if writable is not True:
        facts["cgroup.writable.reason"] = str(writable)


def _perf_facts(facts: dict[str, Any]) -> None:
    from pipetune.profiler import available_events

    support = available_events()
    facts["perf.available"] = support.perf_available
    facts["perf.pmu"] = support.pmu
    facts["perf.software"] = bool(support.software)
    facts["perf.tracepoints"] = bool(support.tracepoints)
    facts["perf.events"] = list(support.default_events())
    if support.reason:
        facts["perf.reason"] = support.reason
    if support.perf_available and support.tracepoints_reason:
        facts["perf.tracepoints.reason"] = support.tracepoints_reason


def _energy_facts(facts: dict[str, Any]) -> None:
    from pipetune.energy import nvml_available, rapl_available

    for key, fn in (("energy.rapl", rapl_available), ("energy.nvml", nvml_available)):
        result = fn()
        facts[key] = result is True
        if result is not True:
            facts[key + ".reason"] = str(result)


def _sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other stores and ``:memory:``)."""
    if not url.startswith("sqlite://"):
        return None
    rest = url[len("sqlite://") :]
    if rest.startswith("/:memory:") or not rest.startswith("/") or rest.strip("/") == "":
        return None  # open_backend says what is wrong with it
    return Path("/" + rest.lstrip("/"))


def _sqlite_facts(facts: dict[str, Any], path: Path) -> None:
    """Check a SQLite store without creating or changing anything: opening
    one the normal way creates the file, its folders and its tables."""
    from pipetune.store.sqlite import SCHEMA_VERSION

    if not path.exists():
        parent = next(p for p in path.parents if p.exists())
        ok = parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)
        facts["store.exists"] = False
        facts["store.reachable"] = ok
        if ok:
            facts["store.note"] = "no file yet: the first job creates it"
        else:
            facts["store.error"] = f"{path}: no such file, and {parent} is not a writable folder"
        return
    facts["store.exists"] = True
    # Read-only, and without a -wal file (no writer, all in the main file)
    # immutable too: a plain read-only open of a WAL database leaves -wal
    # and -shm files behind.
    wal = Path(f"{path}-wal").exists()
    mode = "mode=ro" if wal else "mode=ro&immutable=1"
    try:
        db = sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True, timeout=3.0)
        try:
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        finally:
            db.close()
    except sqlite3.Error as e:
        facts["store.reachable"] = False
        facts["store.error"] = f"{path}: not a pipetune store ({e})"
        return
    if row is None or int(row[0]) > SCHEMA_VERSION:
        facts["store.reachable"] = False
        facts["store.error"] = f"{path}: schema version {row and row[0]} is not one this reads"
        return
    facts["store.reachable"] = True


def _store_facts(facts: dict[str, Any], url: str) -> None:
    from pipetune.store import open_backend

    facts["store.url"] = url
    path = _sqlite_path(url)
    if path is not None:
        _sqlite_facts(facts, path)
        return
    try:
        backend = open_backend(url, timeout_s=3.0)
        try:
            backend.ping()
        finally:
            backend.close()
        facts["store.reachable"] = True
    except Exception as e:  # noqa: BLE001 - reported, and the exit code says it
        facts["store.reachable"] = False
        facts["store.error"] = str(e)


def collect(settings: Settings, store_url: str | None = None) -> dict[str, Any]:
    """All facts as a flat dict with dotted keys (the ``--json`` output)."""
    facts: dict[str, Any] = {
        "pipetune.version": __version__,
        "python.version": platform.python_version(),
        "node.name": settings.node,
        "node.cpus": os.cpu_count(),
        "user.root": os.geteuid() == 0,
    }
    for name, fn in (("cgroup", _cgroup_facts), ("perf", _perf_facts), ("energy", _energy_facts)):
        _probe(facts, f"{name}.check", lambda fn=fn: fn(facts) or True)
        if facts.get(f"{name}.check") is True:
            del facts[f"{name}.check"]
    _store_facts(facts, store_url or settings.store)
    facts["ray.version"] = _version("ray")
    facts["torch.version"] = _version("torch")
    return facts


def run(args: argparse.Namespace, settings: Settings) -> int:
    facts = collect(settings, args.store)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        width = max(len(k) for k in facts)
        for key, value in facts.items():
            if isinstance(value, bool):
                value = "yes" if value else "no"
            elif isinstance(value, list):
                value = ", ".join(value) if value else "-"
            print(f"{key:<{width}}  {value}")
    return 0 if facts["store.reachable"] else 1
