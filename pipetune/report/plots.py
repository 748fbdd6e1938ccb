"""The report's figures, as PNG files (matplotlib, Agg backend: no display).

Each function takes :class:`~pipetune.report.data.JobReport` objects and a
path, writes one PNG and returns its path, or returns ``None`` when the jobs
hold nothing to plot (e.g. no probed configs in a V1 job): a missing figure
is left out of the report, never drawn empty.

- :func:`plot_accuracy` — the job metric over tuning time (paper Fig. 9);
- :func:`plot_trial_durations` — trial duration over tuning time (Fig. 10);
- :func:`plot_energy` — energy per job, labelled with its method;
- :func:`plot_probe_times` — epoch time per probed config;
- :func:`plot_profile` — a job's profile heatmap (events × epochs);
- :func:`plot_stage_tree` — a stage job's stage tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: a report runs on headless nodes

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipetune.report.data import JobReport  # noqa: E402

_DPI = 100


def _label(r: JobReport) -> str:
    return f"{r.job} ({r.mode})"


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI, format="png")
    plt.close(fig)
    return path


def plot_accuracy(reports: Sequence[JobReport], path: Path) -> Path | None:
    """Each epoch's metric (dots) and the job's best so far (step line) over
    the time since the job started."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    metric = reports[0].metric if reports else "accuracy"
    for r in reports:
        col = "metric." + r.metric
        if r.epochs.empty or col not in r.epochs.columns:
            continue
        df = r.epochs[["time", col]].dropna().sort_values("time")
        if df.empty:
            continue
        t = (df["time"].to_numpy(dtype="float64") - r.start_ns) / 1e9
        v = df[col].to_numpy(dtype="float64")
        best = np.maximum.accumulate(v) if r.metric_mode == "max" else np.minimum.accumulate(v)
        (line,) = ax.step(t, best, where="post", label=f"{_label(r)} best so far")
        ax.plot(t, v, "o", color=line.get_color(), alpha=0.4, markersize=4)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("tuning time (s)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} over tuning time (dots: epochs)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_trial_durations(reports: Sequence[JobReport], path: Path) -> Path | None:
    """Each trial's duration, placed at the time it ended."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for r in reports:
        pts = [
            ((t.end_ns - r.start_ns) / 1e9, t.wall_s)
            for t in r.trials
            if t.end_ns is not None and t.wall_s is not None
        ]
        if not pts:
            continue
        x, y = zip(*pts, strict=True)
        ax.plot(x, y, "o-", label=_label(r))
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("tuning time at trial end (s)")
    ax.set_ylabel("trial duration (s)")
    ax.set_title("trial duration over tuning time")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_energy(reports: Sequence[JobReport], path: Path) -> Path | None:
    """Per job: the trials' energy and the node's energy over the job, each
    bar labelled with its method; a figure the store lacks is marked n/a."""
    if not reports:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(reports))
    width = 0.38
    series = [
        ("trials", [r.energy_j for r in reports], [r.energy_method for r in reports]),
        ("node", [r.node_energy_j for r in reports], [r.node_energy_method for r in reports]),
    ]
    if all(v is None for _, vals, _ in series for v in vals):
        plt.close(fig)
        return None
    for i, (name, vals, methods) in enumerate(series):
        pos = x + (i - 0.5) * width
        heights = [v if v is not None else 0.0 for v in vals]
        bars = ax.bar(pos, heights, width, label=f"{name} energy")
        for bar, v, m in zip(bars, vals, methods, strict=True):
            text = "n/a" if v is None else f"{v:.0f} J\n{m}"
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(x, [_label(r) for r in reports], fontsize=8)
    ax.set_ylabel("energy (J)")
    ax.set_title("energy per job (trials: their share; node: all its processes)")
    ax.margins(y=0.2)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_probe_times(reports: Sequence[JobReport], path: Path) -> Path | None:
    """Mean epoch time per probed config (probing-phase epochs), per job; a
    probe shorter than an epoch uses its slot time instead."""
    rows: list[tuple[str, str, float, str]] = []
    for r in reports:
        acc: dict[str, list[tuple[float, str]]] = {}
        for t in r.trials:
            for p in t.probes:
                if p.epoch_s is not None:
                    acc.setdefault(p.config, []).append((p.epoch_s, "epoch"))
                elif p.slot_s is not None:
                    acc.setdefault(p.config, []).append((p.slot_s, "slot"))
        for cfg, vals in sorted(acc.items()):
            kinds = {k for _, k in vals}
            rows.append(
                (_label(r), cfg, float(np.mean([v for v, _ in vals])), "/".join(sorted(kinds)))
            )
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.5 * len(rows) + 1.5)))
    labels = [f"{job}: {cfg} ({kind})" for job, cfg, _, kind in rows]
    ax.barh(range(len(rows)), [v for _, _, v, _ in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean time per probed config (s)")
    ax.set_title("epoch time per probed config")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_profile(report: JobReport, path: Path) -> Path | None:
    """The job's profiles: event rates per profiled epoch, each row divided by
    its maximum so that events of different magnitude share one scale."""
    ep = report.epochs
    cols = sorted(c for c in ep.columns if c.startswith("rate."))
    if not cols:
        return None
    df = ep.dropna(subset=cols, how="all").sort_values("time")
    if df.empty:
        return None
    m = df[cols].to_numpy(dtype="float64").T  # events × epochs
    m = np.nan_to_num(m, nan=0.0)
    peak = np.abs(m).max(axis=1, keepdims=True)
    m = np.divide(m, peak, out=np.zeros_like(m), where=peak > 0)
    events = [c[len("rate.") :] for c in cols]
    epochs = [f"{str(t)[-5:]}/e{e}" for t, e in zip(df["trial"], df["epoch"], strict=True)]
    fig, ax = plt.subplots(figsize=(max(7, 0.6 * len(epochs) + 4), max(3, 0.3 * len(events) + 1.5)))
    im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(events)), events, fontsize=7)
    ax.set_xticks(range(len(epochs)), epochs, fontsize=7, rotation=45, ha="right")
    ax.set_xlabel("trial/epoch")
    ax.set_title(
        f"profile of {_label(report)}\n(event rates; each row divided by its max)", fontsize=10
    )
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _save(fig, path)


def _stage_label(values: dict[str, Any], varying: list[str]) -> str:
    parts = []
    for k in varying:
        v = values.get(k)
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def plot_stage_tree(report: JobReport, path: Path) -> Path | None:
    """A stage job's tree: each node a bar over its epochs ``[start, stop)``
    (coloured per epoch: trained by this job, reused from an earlier one,
    never trained) labelled with the hyperparameter values that differ between nodes, an
    edge from each parent's end to its children, and at each node where
    trials end, the Tune trials it serves.  None for a job without stages."""
    s = report.stages
    if s is None or not s.tree:
        return None
    rows = {int(r["node"]): r for r in s.tree}
    children: dict[int | None, list[int]] = {}
    for n, r in rows.items():
        children.setdefault(r["parent"], []).append(n)
    keys = sorted({k for r in rows.values() for k in r["values"]})
    varying = [k for k in keys if len({repr(r["values"].get(k)) for r in rows.values()}) > 1]
    # Leaves get rows top-down in depth-first order; a parent sits at the mean of its children.
    y: dict[int, float] = {}
    next_row = [0.0]

    def place(n: int) -> float:
        kids = children.get(n, [])
        if not kids:
            y[n] = next_row[0]
            next_row[0] += 1
        else:
            ys = [place(k) for k in kids]
            y[n] = (min(ys) + max(ys)) / 2
        return y[n]

    for root in children.get(None, []):
        place(root)
    height = max(2.5, 0.55 * next_row[0] + 1.5)
    stop_max = max(int(r["stop"]) for r in rows.values())
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * stop_max + 4), height))
    colors = {"trained": "tab:blue", "reused": "tab:orange", "not trained": "lightgray"}
    used: set[str] = set()
    for n, r in rows.items():
        start, stop = int(r["start"]), int(r["stop"])
        # Epoch by epoch: trained here, reused from an earlier job, never trained.
        marks = str(r.get("epoch_marks") or "t" * (stop - start))
        for e, mark in enumerate(marks):
            kind = {"t": "trained", "r": "reused"}.get(mark, "not trained")
            used.add(kind)
            ax.plot([start + e, start + e + 1], [y[n], y[n]], "-", linewidth=6,
                    solid_capstyle="butt", color=colors[kind], alpha=0.85)
        ax.annotate(f"e{start}-{stop - 1}: {_stage_label(r['values'], varying)}",
                    ((start + stop) / 2, y[n]), xytext=(0, 6), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7)
        if r["parent"] is not None:
            p = int(r["parent"])
            ax.plot([int(rows[p]["stop"]), start], [y[p], y[n]], "-", color="gray", linewidth=1)
        served = r.get("tune_ending") or r.get("ending") or []
        if served:
            shown = ", ".join(str(t) for t in served[:3]) + (
                f" +{len(served) - 3}" if len(served) > 3 else "")
            ax.annotate(shown, (stop, y[n]), xytext=(4, -3), textcoords="offset points",
                        ha="left", va="top", fontsize=7, color="tab:green")
    for kind in colors:
        if kind in used:
            ax.plot([], [], "-", linewidth=6, color=colors[kind], label=kind)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_xlim(-0.2, stop_max + 1.5)
    ax.set_ylim(next_row[0] - 0.4, -0.8)
    ax.set_yticks([])
    ax.set_xlabel("epoch")
    ax.set_title(
        f"stage tree of {_label(report)}: {s.nodes} stages, {s.epochs_trained} epochs trained "
        f"of {s.epochs_reported} reported\n(bars: stages; green: the trials ending there)",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
