"""``pipetune report`` on real small tuning jobs in a real SQLite store.

Two real jobs (V1 and pipetune, lenet5 on 256 MNIST images) run once for the
module; every test reads them back.  The report must show the numbers the
store holds: each figure is recomputed here from the store's own points and
looked for in the report.  A partial job is a real job's points without its
end point (a job that died); an energy-less job is a real job's points
without their energy fields (a host with no meter).
"""

from __future__ import annotations

import base64
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from pipetune.cli import main
from pipetune.config import Settings
from pipetune.report import build_report, load_job
from pipetune.report.data import UnknownJobError
from pipetune.store import MEASUREMENT_TAGS, Point, Store, open_store
from pipetune.tune.job import JobSpec, run_job
from pipetune.types import SystemSpace

pytestmark = pytest.mark.slow

V1, PT = "rep-t-v1", "rep-t-pt"


@pytest.fixture(scope="module")
def jobs_store(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Iterator[str]:
    """The URL of a SQLite store holding one real V1 and one real pipetune job."""
    home = tmp_path_factory.mktemp("report-home")
    settings = Settings.load({"home": str(home)}, env={})
    for mode, job in (("v1", V1), ("pipetune", PT)):
        spec = JobSpec(
            "lenet5-mnist",
            mode,
            samples=2,
            epochs=2,
            space=SystemSpace.parse(["cores=1,2"]),
            job=job,
            fixed_hparams={"max_train_samples": 256},
        )
        run_job(spec, settings, verbose=0)
    yield settings.store


def _open(url: str, tmp_path: Path) -> Store:
    return open_store(url, spool_root=tmp_path / "spool")


@pytest.fixture
def store(jobs_store: str, tmp_path: Path) -> Iterator[Store]:
    s = _open(jobs_store, tmp_path)
    yield s
    s.close()


def _copy_job(src: Store, dst: Store, job: str, *, keep: Any = None) -> int:
    """Copy every point of ``job`` from ``src`` to ``dst``; ``keep(point)``
    returns the point to write (possibly changed) or None to drop it."""
    n = 0
    for measurement in ("job", "trial", "epoch", "decision", "sample"):
        df = src.query(measurement, {"job": job})
        tag_names = MEASUREMENT_TAGS[measurement]
        for row in df.to_dict("records"):
            tags = {k: str(row[k]) for k in tag_names if k in row and not _na(row[k])}
            fields = {
                k: v for k, v in row.items() if k not in tag_names and k != "time" and not _na(v)
            }
            p = Point(measurement, tags, fields, int(row["time"]))
            p = keep(p) if keep else p
            if p is not None:
                dst.write(p)
                n += 1
    power = src.power()
    for row in power.to_dict("records"):
        dst.write(Point("power", {"node": row["node"], "source": row["source"]},
                        {"watts": row["watts"]}, int(row["time"])))
    assert dst.flush()
    return n


def _na(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _valid_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


# -- the numbers ------------------------------------------------------------------------------


def test_report_shows_the_numbers_the_store_holds(store: Store, tmp_path: Path) -> None:
    path, (report,) = build_report(store, [V1], tmp_path / "out")
    text = path.read_text()
    jobs = store.query("job", {"job": V1})
    end = jobs[jobs["event"] == "end"].iloc[-1]
    epochs = store.epochs(V1)

    # tuning time: the driver's own figure
    assert report.tuning_s == pytest.approx(float(end["tuning_s"]))
    assert f"| tuning time (s) | {float(end['tuning_s']):.1f} |" in text
    # best trial and its accuracy
    assert report.best_trial == end["best_trial"]
    assert report.best_value == pytest.approx(float(end["best_accuracy"]))
    assert f"| best accuracy | {float(end['best_accuracy']):.4g} |" in text
    # per trial: energy (sum of its epochs) with its method, accuracy, training time
    assert len(report.trials) == 2
    for t in report.trials:
        ep = epochs[epochs["trial"] == t.trial]
        assert t.energy_j == pytest.approx(ep["energy_j"].sum())
        assert t.energy_method == "estimated"
        assert t.metric == pytest.approx(ep["metric.accuracy"].max())
        assert t.seconds == pytest.approx(ep["seconds"].sum())
        assert t.how == "fixed"  # V1: the baseline fixes the config
        row = next(line for line in text.splitlines() if line.startswith(f"| {t.trial}"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[10] == f"{ep['energy_j'].sum():.1f}" and cells[11] == "estimated"
        assert cells[6] == f"{ep['metric.accuracy'].max():.4g}"
        assert cells[8] == f"{ep['seconds'].sum():.1f}"
    total = epochs["energy_j"].sum()
    assert report.energy_j == pytest.approx(total)
    assert f"{total:.1f} J (estimated)" in text
    # node energy: the power samples integrated over the job, labelled
    assert report.node_energy_method == "estimated" and report.node_energy_j > 0
    assert "PARTIAL" not in text


def test_figures_are_valid_pngs_and_linked(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "out"
    path, _ = build_report(store, [V1, PT], out)
    text = path.read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    names = {Path(p).name for p in linked}
    assert {"accuracy.png", "trial_durations.png", "energy.png"} <= names
    for rel in linked:
        w, h = _valid_png(out / rel)
        assert w >= 300 and h >= 200
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)


def test_side_by_side_with_ratios_and_how_configs_were_chosen(
    store: Store, tmp_path: Path
) -> None:
    path, (v1, pt) = build_report(store, [V1, PT], tmp_path / "out")
    text = path.read_text()
    assert "| tuning time | " in text and f"{PT} / {V1}" in text
    ratio_row = next(line for line in text.splitlines() if line.startswith("| tuning time |"))
    assert ratio_row == f"| tuning time | {pt.tuning_s / v1.tuning_s:.2f} |"
    energy_row = next(
        line for line in text.splitlines() if line.startswith("| energy of the node |")
    )
    assert energy_row == f"| energy of the node | {pt.node_energy_j / v1.node_energy_j:.2f} |"
    # pipetune's epoch records (written by its tuner) carry energy too
    assert pt.energy_method == "estimated" and pt.energy_j > 0
    assert f"{pt.energy_j:.1f} J (estimated)" in text
    # pipetune: each trial's config came from a tuner decision, in its own words
    decisions = store.decisions(PT)
    assert set(decisions["kind"]) - {"fixed"}, "pipetune trials are not fixed by a baseline"
    for t in pt.trials:
        kinds = set(decisions[decisions["trial"] == t.trial]["kind"])
        assert t.how in {"matched", "probed", "fallback", "degraded", "probing"}
        if "probe" in kinds:
            probes = decisions[(decisions["trial"] == t.trial) & (decisions["kind"] == "probe")]
            assert [p.config for p in t.probes] == list(probes["config"])
            assert t.probe_s > 0
    assert pt.probe_s == pytest.approx(sum(t.probe_s for t in pt.trials))
    # the pipetune job has profiles: a heatmap of events x epochs
    if pt.has_profiles:
        assert (tmp_path / "out" / "profile_2.png").exists()
        _valid_png(tmp_path / "out" / "profile_2.png")


# -- bad input ----------------------------------------------------------------------------------


def test_unknown_job_exits_2_with_one_line(
    jobs_store: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc = main(["report", "no-such-job", "--store", jobs_store, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert "no-such-job" in err and V1 in err  # says which jobs exist
    assert not (tmp_path / "o" / "report.md").exists()


def test_empty_or_missing_store_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nothing.db"
    assert main(["report", "j", "--store", f"sqlite:///{missing}"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not missing.exists()  # a report does not create a store
    empty = _open(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path)
    with pytest.raises(UnknownJobError, match="empty store"):
        load_job(empty, "j")
    empty.close()
    rc = main(["report", "j", "--store", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert rc == 2 and "empty store" in capsys.readouterr().err


def test_a_job_without_its_end_is_reported_as_partial(store: Store, tmp_path: Path) -> None:
    partial = _open(f"sqlite:///{tmp_path / 'partial.db'}", tmp_path)
    # The job died after its first trial: no end point, nothing after that trial.
    trials = store.query("trial", {"job": V1})
    first_done = int(trials[trials["status"] == "done"]["time"].min())

    def keep(p: Point) -> Point | None:
        if p.measurement == "job" and p.fields.get("event") == "end":
            return None
        return p if p.time_ns <= first_done else None

    _copy_job(store, partial, V1, keep=keep)
    path, (r,) = build_report(partial, [V1], tmp_path / "out")
    partial.close()
    text = path.read_text()
    assert r.partial and "PARTIAL" in text
    jobs = store.query("job", {"job": V1})
    start = int(jobs[jobs["event"] == "start"]["time"].iloc[0])
    assert r.tuning_s == pytest.approx((first_done - start) / 1e9)
    assert len(r.trials) == 1 and r.trials[0].status == "done"
    assert r.best_trial == r.trials[0].trial  # from the epochs, as no end point says


def test_missing_energy_is_labelled_not_invented(store: Store, tmp_path: Path) -> None:
    dst = _open(f"sqlite:///{tmp_path / 'noenergy.db'}", tmp_path)

    def keep(p: Point) -> Point:
        if p.measurement != "epoch":
            return p
        fields = {k: v for k, v in p.fields.items() if not k.startswith("energy")}
        return Point(p.measurement, p.tags, fields, p.time_ns)

    _copy_job(store, dst, V1, keep=keep)
    path, (r,) = build_report(dst, [V1], tmp_path / "out")
    dst.close()
    assert r.energy_j is None and all(t.energy_j is None for t in r.trials)
    text = path.read_text()
    assert "| energy of the trials | n/a |" in text
    for t in r.trials:
        row = next(line for line in text.splitlines() if line.startswith(f"| {t.trial}"))
        assert "| n/a | n/a |" in row  # energy J, energy method


# -- HTML ---------------------------------------------------------------------------------------


def test_html_is_one_self_contained_file(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "html"
    path, _ = build_report(store, [V1, PT], out, fmt="html")
    assert [p.name for p in out.iterdir()] == ["report.html"]
    page = path.read_text()
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) >= 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        png = base64.b64decode(s.split(",", 1)[1])
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert "<link" not in page and "<script" not in page  # nothing fetched


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _chromium() is None, reason="chromium is not installed (Debian: apt-get install chromium)"
)
def test_html_renders_in_headless_chromium(store: Store, tmp_path: Path) -> None:
    path, _ = build_report(store, [V1, PT], tmp_path / "html", fmt="html")
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory(prefix="pipetune-chromium-") as profile:
        subprocess.run(
            [
                _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={shot}",
                "--window-size=1280,2000", path.resolve().as_uri(),
            ],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    assert _valid_png(shot) == (1280, 2000)
    with Image.open(shot) as im:
        gray = im.convert("L")
        hist = gray.histogram()
    # A page with text, tables and figures: far from one flat colour.
    assert max(hist) < 0.97 * sum(hist)
    assert sum(hist[:128]) > 0.001 * sum(hist)  # dark pixels: text, plot lines


def test_the_package_name_keeps_pipetune_report_callable(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipetune
    import pipetune.report  # binds pipetune.report to the package
    import pipetune.tune

    calls: list[Any] = []
    monkeypatch.setattr(pipetune.tune, "report", lambda m, **kw: calls.append((m, kw)) or m)
    assert pipetune.report({"accuracy": 0.5}, steps=3) == {"accuracy": 0.5}
    assert calls == [({"accuracy": 0.5}, {"steps": 3})]


def test_pandas_frames_are_not_leaked_into_the_text(store: Store, tmp_path: Path) -> None:
    path, _ = build_report(store, [PT], tmp_path / "out")
    text = path.read_text()
    assert "nan" not in text.lower().split() and "None" not in text
    assert isinstance(load_job(store, PT).epochs, pd.DataFrame)


def test_cli_writes_the_report_and_prints_one_line_per_job(
    jobs_store: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "cli"
    rc = main(["report", V1, PT, "--store", jobs_store, "--out", str(out), "--format", "html"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert lines[0].startswith(f"{V1} (v1): tuning ") and lines[1].startswith(f"{PT} (pipetune)")
    assert "(estimated)" in lines[0] and lines[-1] == f"report: {out / 'report.html'}"
    assert (out / "report.html").stat().st_size > 10_000
