"""Energy/runtime reports of tuning jobs: ``pipetune report`` (DESIGN §12).

- :func:`load_job` (:mod:`.data`) — one job's points in the store as a
  :class:`JobReport` of plain numbers (tuning time, best trial, per-trial
  energy with its method, how each trial's system config was chosen);
- :mod:`.plots` — the figures as PNG (paper Figs. 9 and 10, energy per job,
  time per probed config, profile heatmaps, a stage job's stage tree);
- :mod:`.render` — the same content as Markdown or one self-contained HTML;
- :func:`build_report` — all of it for one or more jobs into a folder.

Note on the name: ``pipetune.report(metrics)`` is also the trial-side call
that ends an epoch (:func:`pipetune.tune.report`).  Importing this package
makes Python bind ``pipetune.report`` to the package, which would break that
call in any process that also builds reports; so this module is callable and
forwards such calls to :func:`pipetune.tune.report`.
"""

from __future__ import annotations

import sys
import tempfile
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipetune.errors import UsageError
from pipetune.report.data import (
    JobReport,
    ProbeSlot,
    StageSummary,
    TrialReport,
    UnknownJobError,
    load_job,
)

__all__ = [
    "FORMATS",
    "JobReport",
    "ProbeSlot",
    "StageSummary",
    "TrialReport",
    "UnknownJobError",
    "build_report",
    "load_job",
]

FORMATS = ("md", "html")


def build_report(
    store: Any,
    jobs: Sequence[str],
    out_dir: Path,
    *,
    fmt: str = "md",
    store_url: str | None = None,
) -> tuple[Path, list[JobReport]]:
    """Write the report of ``jobs`` (read from ``store``) into ``out_dir``.

    ``md`` writes ``report.md`` and its PNGs beside it; ``html`` writes one
    ``report.html`` with the PNGs embedded.  Returns the report's path and
    the jobs as loaded.  ``store_url`` is the URL shown in the report
    (default the store's own).

    Raises:
        UsageError: an unknown format, no job named, an ``out_dir`` that
            cannot be created or written (exit 2).
        UnknownJobError: a job the store does not hold.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    if not jobs:
        raise UsageError("name at least one job")
    reports = [load_job(store, job) for job in jobs]
    try:
        return _write(reports, out_dir, fmt, store_url or str(store.url)), reports
    except OSError as e:
        # An --out the user cannot write (/proc/foo, a read-only disk, a file
        # in the way) is a usage error, not a bug: one line, exit 2.
        where = f" {str(e.filename)!r}" if e.filename and str(e.filename) != str(out_dir) else ""
        raise UsageError(f"--out {str(out_dir)!r}: cannot write{where}: {e.strerror or e}") from e


def _write(reports: list[JobReport], out_dir: Path, fmt: str, store_url: str) -> Path:
    from pipetune.report import plots
    from pipetune.report.render import build_blocks, to_html, to_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pipetune-report-") as tmp:
        fig_dir = out_dir if fmt == "md" else Path(tmp)
        figures: dict[str, Path] = {}
        made = {
            "accuracy": plots.plot_accuracy(reports, fig_dir / "accuracy.png"),
            "durations": plots.plot_trial_durations(reports, fig_dir / "trial_durations.png"),
            "energy": plots.plot_energy(reports, fig_dir / "energy.png"),
            "probes": plots.plot_probe_times(reports, fig_dir / "probe_times.png"),
        }
        for i, r in enumerate(reports):
            made[f"profile:{r.job}"] = plots.plot_profile(r, fig_dir / f"profile_{i + 1}.png")
            made[f"stages:{r.job}"] = plots.plot_stage_tree(r, fig_dir / f"stage_tree_{i + 1}.png")
        figures = {k: p for k, p in made.items() if p is not None}
        blocks = build_blocks(reports, figures, store_url=store_url)
        if fmt == "md":
            path = out_dir / "report.md"
            path.write_text(to_markdown(blocks, out_dir), encoding="utf-8")
        else:
            path = out_dir / "report.html"
            path.write_text(to_html(blocks), encoding="utf-8")
    return path


class _CallableReportModule(types.ModuleType):
    """Keeps ``pipetune.report(metrics, ...)`` working once this package is
    imported (see the module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from pipetune.tune import report

        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableReportModule
