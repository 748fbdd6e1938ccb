"""Reports as Markdown (+ PNG files) or one self-contained HTML file.

:func:`build_blocks` lays a report out once, as a list of small blocks
(headings, paragraphs, tables, figures); :func:`to_markdown` and
:func:`to_html` only render those blocks, so both formats always say the
same thing.  The HTML embeds its figures as ``data:`` URIs: one file that
opens in a browser anywhere, with nothing beside it.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipetune.report.data import JobReport, TrialReport

NA = "n/a"


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str
    warn: bool = False


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


Block = Heading | Para | Table | Figure


# -- formatting ---------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 3) -> str:
    """A number for a table: ``n/a`` when missing, else ``digits`` significant."""
    if v is None:
        return NA
    if abs(v) >= 10**digits:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def fmt_s(v: float | None) -> str:
    return NA if v is None else f"{v:.1f}"


def fmt_energy(j: float | None, method: str | None) -> str:
    return NA if j is None else f"{j:.1f} J ({method or 'method unknown'})"


def fmt_hparams(hp: dict[str, Any]) -> str:
    if not hp:
        return NA
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in hp.items())


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return NA
    return f"{a / b:.2f}"


# -- layout -------------------------------------------------------------------------------------


def build_blocks(
    reports: Sequence[JobReport], figures: dict[str, Path], *, store_url: str
) -> list[Block]:
    """The report's content.  ``figures`` maps a figure's key (``accuracy``,
    ``durations``, ``energy``, ``probes``, ``profile:JOB``) to its PNG."""
    names = ", ".join(r.job for r in reports)
    blocks: list[Block] = [
        Heading(1, f"pipetune report: {names}"),
        Para(
            f"Store {store_url}; written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. "
            "Figures the store does not hold are shown as n/a; every energy figure "
            "names its method (rapl, nvml or estimated)."
        ),
    ]
    for r in reports:
        if r.interrupted:
            blocks.append(
                Para(
                    f"PARTIAL: job {r.job} was interrupted (Ctrl-C) before all its trials "
                    f"ended. Its figures cover the points written until then "
                    f"({fmt_s(r.tuning_s)} s after its start).",
                    warn=True,
                )
            )
        elif r.partial:
            blocks.append(
                Para(
                    f"PARTIAL: job {r.job} has a start but no end in the store: it is still "
                    f"running or it died. Its figures cover the points written so far "
                    f"({fmt_s(r.tuning_s)} s after its start).",
                    warn=True,
                )
            )
    blocks.append(Heading(2, "Summary" if len(reports) == 1 else "Jobs side by side"))
    blocks.append(_summary_table(reports))
    if len(reports) > 1:
        ref = reports[0]
        blocks.append(Heading(2, f"Ratios to {ref.job} ({ref.mode})"))
        blocks.append(_ratio_table(reports))
    blocks.append(Heading(2, "Figures"))
    for key, caption in (
        ("accuracy", "Job metric over tuning time (cf. paper Fig. 9)"),
        ("durations", "Trial duration over tuning time (cf. paper Fig. 10)"),
        ("energy", "Energy per job"),
        ("probes", "Time per probed system config"),
    ):
        if key in figures:
            blocks.append(Figure(figures[key], caption))
    for r in reports:
        blocks.extend(_job_blocks(r, figures.get(f"profile:{r.job}")))
        if r.stages is not None:
            blocks.extend(_stage_blocks(r, figures.get(f"stages:{r.job}")))
    return blocks


def _summary_table(reports: Sequence[JobReport]) -> Table:
    def best(r: JobReport) -> TrialReport | None:
        return r.best

    rows: list[tuple[str, ...]] = []

    def row(name: str, f: Any) -> None:
        rows.append((name, *(f(r) for r in reports)))

    row("workload", lambda r: r.workload)
    row(
        "status",
        lambda r: "PARTIAL (interrupted)"
        if r.interrupted
        else "PARTIAL (no end point)"
        if r.partial
        else "complete",
    )
    row("tuning time (s)", lambda r: fmt_s(r.tuning_s))
    row(
        "trials (failed)",
        lambda r: f"{len(r.trials)} ({sum(t.status == 'failed' for t in r.trials)})",
    )
    row("best trial", lambda r: r.best_trial or NA)
    row("best " + reports[0].metric, lambda r: fmt(r.best_value, 4))
    row("best trial: system config", lambda r: (best(r).config if best(r) else None) or NA)
    row("best trial: hyperparameters", lambda r: fmt_hparams(best(r).hparams) if best(r) else NA)
    row("best trial: training time (s)", lambda r: fmt_s(best(r).seconds) if best(r) else NA)
    row("energy of the trials", lambda r: fmt_energy(r.energy_j, r.energy_method))
    row(
        "energy of the node over the job",
        lambda r: fmt_energy(r.node_energy_j, r.node_energy_method),
    )
    row("time spent probing (s)", lambda r: fmt_s(r.probe_s))
    return Table(("", *(f"{r.job} ({r.mode})" for r in reports)), tuple(rows))


def _ratio_table(reports: Sequence[JobReport]) -> Table:
    ref = reports[0]
    others = reports[1:]
    rows = (
        ("tuning time", *(ratio(r.tuning_s, ref.tuning_s) for r in others)),
        ("best " + ref.metric, *(ratio(r.best_value, ref.best_value) for r in others)),
        (
            "best trial's training time",
            *(
                ratio(r.best.seconds if r.best else None, ref.best.seconds if ref.best else None)
                for r in others
            ),
        ),
        ("energy of the trials", *(ratio(r.energy_j, ref.energy_j) for r in others)),
        ("energy of the node", *(ratio(r.node_energy_j, ref.node_energy_j) for r in others)),
    )
    return Table(("", *(f"{r.job} / {ref.job}" for r in others)), rows)


def _job_blocks(r: JobReport, profile: Path | None) -> list[Block]:
    out: list[Block] = [Heading(2, f"Job {r.job} ({r.mode}, {r.workload})")]
    out.append(
        Para(
            f"Tuning time {fmt_s(r.tuning_s)} s{' (partial)' if r.partial else ''}; "
            f"{len(r.trials)} trial(s); best {r.best_trial or NA} with {r.metric} "
            f"{fmt(r.best_value, 4)}; energy of the trials "
            f"{fmt_energy(r.energy_j, r.energy_method)}; time spent probing "
            f"{fmt_s(r.probe_s)} s."
        )
    )
    rows = tuple(
        (
            t.trial + (" (best)" if t.trial == r.best_trial else ""),
            t.status + (f": {t.error}" if t.error else ""),
            fmt_hparams(t.hparams),
            t.config or NA,
            t.how,
            t.how_detail or NA,
            fmt(t.metric, 4),
            str(t.epochs),
            fmt_s(t.seconds),
            fmt_s(t.wall_s),
            NA if t.energy_j is None else f"{t.energy_j:.1f}",
            t.energy_method or NA,
            fmt_s(t.probe_s),
        )
        for t in r.trials
    )
    out.append(
        Table(
            (
                "trial",
                "status",
                "hyperparameters",
                "system config",
                "chosen by",
                "how",
                r.metric,
                "epochs",
                "training s",
                "wall s",
                "energy J",
                "energy method",
                "probing s",
            ),
            rows,
        )
    )
    probes = [(t.trial, p) for t in r.trials for p in t.probes]
    if probes:
        out.append(Heading(3, "Probed system configs"))
        out.append(
            Table(
                ("trial", "config", "slot s (config in force)", "mean probing-epoch s"),
                tuple((tid, p.config, fmt_s(p.slot_s), fmt_s(p.epoch_s)) for tid, p in probes),
            )
        )
    if profile is not None:
        out.append(Figure(profile, f"Profile of {r.job}: event rates per epoch"))
    return out


def _stage_blocks(r: JobReport, tree: Path | None) -> list[Block]:
    """A stage job's compute saved and its tree."""
    s = r.stages
    if s is None:
        return []
    ratio_text = NA if s.compute_ratio is None else f"{s.compute_ratio:.2f}x"
    out: list[Block] = [
        Heading(3, f"Stage tree of {r.job}"),
        Para(
            f"Stage-based execution trained {s.epochs_trained} epochs where trial-based "
            f"execution of the same trials (stopped at the same epochs) trains "
            f"{s.epochs_reported}: {s.epochs_saved} epochs saved ({ratio_text}). "
            f"{s.epochs_replayed} epochs were replayed from stages trained once"
            + (f", {s.epochs_reused} of them by earlier jobs (--reuse)" if s.epochs_reused
               else "")
            + "."
        ),
    ]
    rows = (
        ("stages in the tree", str(s.nodes)),
        ("epochs trained", str(s.epochs_trained)),
        ("epochs reported to Tune (trial-based for the same trials)", str(s.epochs_reported)),
        ("epochs saved", str(s.epochs_saved)),
        ("epochs replayed", str(s.epochs_replayed)),
        ("epochs reused from earlier jobs", str(s.epochs_reused)),
        ("every trial's full schedule, trial-based / unique",
         f"{s.grid_epochs} / {s.unique_epochs}"),
        ("CPU-seconds of the trials", fmt_s(s.cpu_s)),
        ("CPU-seconds trial-based (estimated: each epoch's recorded CPU-s per trial)",
         fmt_s(s.cpu_s_trial_based)),
        ("compute ratio (epochs)", ratio_text),
    )
    out.append(Table(("", r.job), rows))
    if s.fixed:
        out.append(Para("Values every stage shares: " + fmt_hparams(s.fixed) + "."))
    if not s.tree and s.nodes:
        out.append(Para(f"The tree ({s.nodes} stages) was too large for the store: no figure."))
    if tree is not None:
        out.append(Figure(tree, f"Stage tree of {r.job}: stages (bars, with their epochs and "
                                "values), parent to child, the trials each serves"))
    return out


# -- rendering ----------------------------------------------------------------------------------


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block], base: Path) -> str:
    """Markdown; figures are linked relative to ``base`` (the output folder)."""
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [("> **" + b.text + "**") if b.warn else b.text, ""]
        elif isinstance(b, Table):
            lines.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
            lines.append("|" + "---|" * len(b.headers))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif isinstance(b, Figure):
            rel = b.path.relative_to(base) if b.path.is_relative_to(base) else b.path
            lines += [f"![{b.caption}]({rel.as_posix()})", "", f"*{b.caption}*", ""]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #eef; } tr:nth-child(even) td { background: #f8f8f8; }
.warn { background: #fff3cd; border: 1px solid #e0b000; padding: 0.6em; font-weight: bold; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-style: italic; color: #555; }
"""


def to_html(blocks: Sequence[Block]) -> str:
    """One HTML page; figures embedded as base64 ``data:image/png`` URIs."""
    title = next((b.text for b in blocks if isinstance(b, Heading)), "pipetune report")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    e = html.escape
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f'<p class="warn">{e(b.text)}</p>' if b.warn else f"<p>{e(b.text)}</p>")
        elif isinstance(b, Table):
            parts.append("<table><thead><tr>")
            parts += [f"<th>{e(h)}</th>" for h in b.headers]
            parts.append("</tr></thead><tbody>")
            for row in b.rows:
                parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
            parts.append("</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{e(b.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(b.caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)
