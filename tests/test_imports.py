"""The core imports on its own (issue 14, item 3; docs/architecture.md).

The leaf packages — profiler, groundtruth, probing, control, energy, store —
must be importable without the Tune layer, the daemon or Ray, so that they
can be used and tested without them; and they must not depend on one
another in a circle.  The first check imports them for real in a fresh
interpreter (the test process has long imported everything); the second
reads every ``import`` statement, deferred ones included, because a
function-level import of ``pipetune.tune`` is the same dependency, only
later.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pipetune

ROOT = Path(pipetune.__file__).parent
LEAVES = ("profiler", "groundtruth", "probing", "control", "energy", "store")
#: What a leaf may never import: the layers above it, and Ray.
ABOVE = ("tune", "daemon", "tuner", "policy", "cli", "stages", "report", "parallel")

_NOTHING_ABOVE = (
    "import sys\n"
    "import {modules}\n"
    "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')"
    " or m.startswith(('pipetune.tune', 'pipetune.daemon', 'pipetune.tuner',"
    " 'pipetune.policy')))\n"
    "assert not bad, bad\n"
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=ROOT.parent,
    )  # fmt: skip


def test_the_issue_check_passes_in_a_fresh_interpreter() -> None:
    """The exact command issue 14 gives as its acceptance check."""
    done = _run(
        "import sys, pipetune.groundtruth, pipetune.profiler, pipetune.store, pipetune.control; "
        "assert not [m for m in sys.modules if m == 'ray' or "
        "m.startswith(('pipetune.tune', 'pipetune.daemon'))]"
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("leaf", LEAVES)
def test_each_leaf_alone_imports_neither_tune_daemon_nor_ray(leaf: str) -> None:
    done = _run(_NOTHING_ABOVE.format(modules=f"pipetune.{leaf}"))
    assert done.returncode == 0, done.stderr


def test_the_root_imports_the_tune_layer_on_first_use() -> None:
    """``pipetune.wrap`` and friends are the Tune layer's own objects, imported
    only when asked for; an unknown name is still an AttributeError."""
    done = _run(
        "import sys, pipetune\n"
        "assert 'pipetune.tune' not in sys.modules\n"
        "import pipetune.tune as t\n"
        "for name in ('wrap', 'report', 'window', 'current_session'):\n"
        "    assert getattr(pipetune, name) is getattr(t, name), name\n"
        "from pipetune import wrap, SystemSpace, SystemConfig\n"
        "assert SystemSpace.__module__ == 'pipetune.types'\n"
        "try:\n"
        "    pipetune.no_such_name\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('pipetune.no_such_name did not raise')\n"
    )
    assert done.returncode == 0, done.stderr


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            # ``from pipetune import stages`` names a subpackage.
            if node.module == "pipetune":
                found.update(f"pipetune.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import (the code base uses absolute ones)")
    return found


def _part(module: str) -> str | None:
    """``pipetune.control.base`` -> ``control``; outside pipetune -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "pipetune" and len(parts) > 1 else None


def _leaf_graph() -> dict[str, dict[str, set[str]]]:
    """leaf -> {part it imports -> the files that do}."""
    graph: dict[str, dict[str, set[str]]] = {}
    for leaf in LEAVES:
        edges: dict[str, set[str]] = {}
        for path in sorted((ROOT / leaf).rglob("*.py")):
            for module in _imported(path):
                target = "ray" if module.split(".")[0] == "ray" else _part(module)
                if target is not None and target != leaf:
                    edges.setdefault(target, set()).add(str(path.relative_to(ROOT.parent)))
        graph[leaf] = edges
    return graph


def test_no_leaf_imports_a_layer_above_it_even_deferred() -> None:
    bad = {
        f"{leaf} -> {target}": sorted(files)
        for leaf, edges in _leaf_graph().items()
        for target, files in edges.items()
        if target in ABOVE or target == "ray"
    }
    assert not bad


def test_the_leaves_import_each_other_without_a_cycle() -> None:
    graph = {
        leaf: {t for t in edges if t in LEAVES} for leaf, edges in _leaf_graph().items()
    }
    done: set[str] = set()
    cycles: list[str] = []

    def visit(leaf: str, path: tuple[str, ...]) -> None:
        if leaf in path:
            cycles.append(" -> ".join((*path, leaf)))
            return
        if leaf in done:
            return
        for target in sorted(graph[leaf]):
            visit(target, (*path, leaf))
        done.add(leaf)

    for leaf in LEAVES:
        visit(leaf, ())
    assert not cycles, cycles


def test_the_cycle_check_can_see_a_cycle(tmp_path: Path) -> None:
    """The AST reader finds deferred imports (what the two checks above rely on)."""
    sample = tmp_path / "m.py"
    sample.write_text(
        "import os\n"
        "def f():\n"
        "    from pipetune.tune import wrap\n"
        "    from pipetune import stages\n"
    )
    assert {"pipetune.tune", "pipetune.stages"} <= _imported(sample)


def test_the_tuner_never_imports_the_policy_or_the_tune_layer() -> None:
    """The policy ⇄ tuner cycle is gone (issue 14): the policy adapts the
    tuner, never the other way round."""
    bad = {
        str(path.relative_to(ROOT.parent)): sorted(
            m for m in _imported(path) if _part(m) in ("policy", "tune", "daemon", "cli")
        )
        for path in sorted((ROOT / "tuner").rglob("*.py"))
    }
    assert not {k: v for k, v in bad.items() if v}


#: What the pure state machine's modules may not import: threads, clocks, I/O.
_IMPURE = ("threading", "time", "os", "queue", "subprocess", "socket", "logging",
           "pipetune.control", "pipetune.profiler", "pipetune.energy", "pipetune.store")


@pytest.mark.parametrize("module", ["machine", "records", "profiling", "rules"])
def test_the_state_machine_imports_no_threads_clocks_or_io(module: str) -> None:
    found = _imported(ROOT / "tuner" / f"{module}.py")
    bad = sorted(m for m in found if m in _IMPURE or m.startswith(_IMPURE[6:]))
    assert not bad
