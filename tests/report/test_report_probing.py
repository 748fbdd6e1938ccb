"""How each trial's system config was chosen, as the report tells it.

The real SystemTuner probes, settles and later matches (fakes only for perf
and cgroups, as in tests/tuner; a fake clock so that it runs in a second)
and writes its decisions and epochs into a real SQLite store; the driver's
job points are written as PipeTuneCallback writes them.  The report must
say which trials were probed (with the candidates and the time each config
was in force), which matched (with the score), and how long probing took.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from tuner_fakes import C1, C2, RATES_A, RATES_B, FakeClock, make, speed, train

from pipetune.groundtruth import retrain
from pipetune.report import build_report, load_job
from pipetune.store import Point, open_store

T0 = 1_000_000.0
TAGS = {"job": "job1", "mode": "pipetune", "workload": "wl"}


def _trial(store, trial, rates, model, *, start_s, epochs=5):
    tuner, clock, _, _, _ = make(rates=rates, store=store, groundtruth=model, trial=trial,
                                 total_epochs=epochs, clock=FakeClock(start_s))
    tuner.start()
    train(tuner, clock, range(epochs), seconds_per_step=speed({C1: 0.5, C2: 1.0}))
    tuner.close()
    assert store.flush()
    return clock()


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/pipetune.db", spool_root=tmp_path / "spool")
    model = tmp_path / "gt.json"
    s.write(Point("job", TAGS, {"event": "start"}, int(T0 * 1e9)))
    _trial(s, "a1", RATES_A, model, start_s=T0 + 1)
    _trial(s, "b1", RATES_B, model, start_s=T0 + 1000)
    retrain(s, model)
    end = _trial(s, "a2", {k: v * 1.1 for k, v in RATES_A.items()}, model, start_s=T0 + 2000)
    s.write(Point("job", TAGS, {"event": "end", "tuning_s": end - T0, "trials": 3},
                  int(end * 1e9)))
    assert s.flush()
    yield s
    s.close()


def test_probed_trials_show_candidates_slots_and_probing_time(store):
    r = load_job(store, "job1")
    assert not r.partial and r.mode == "pipetune"
    a1 = next(t for t in r.trials if t.trial == "a1")
    dec = store.decisions("job1", "a1")
    probes = dec[dec["kind"] == "probe"]
    settled = dec[dec["kind"] == "settled"].iloc[0]
    assert a1.how == "probed" and a1.config == str(C1)
    assert settled["candidates"] in a1.how_detail
    assert [p.config for p in a1.probes] == list(probes["config"])
    # each probe's slot: until the next decision
    times = list(dec["time"])
    for p, (_, row) in zip(a1.probes, probes.iterrows(), strict=True):
        nxt = times[times.index(row["time"]) + 1]
        assert p.slot_s == pytest.approx((nxt - row["time"]) / 1e9)
    # time spent probing: the epochs the tuner spent in its probing phase
    ep = store.epochs("job1", "a1")
    probing = ep[ep["phase"] == "probing"]
    assert len(probing) >= 2 and a1.probe_s == pytest.approx(probing["seconds"].sum())
    # the probing epochs' mean time per config
    for p in a1.probes:
        secs = probing[probing["config"] == p.config]["seconds"]
        if len(secs):
            assert p.epoch_s == pytest.approx(secs.mean())
    assert r.probe_s == pytest.approx(sum(t.probe_s for t in r.trials))
    # a trial lasts at least as long as its epochs (it began when its first epoch did)
    assert all(t.wall_s >= t.seconds - 1e-6 for t in r.trials)


def test_matched_trial_shows_its_score(store):
    a2 = next(t for t in load_job(store, "job1").trials if t.trial == "a2")
    dec = store.decisions("job1", "a2")
    assert list(dec["kind"]) == ["matched"]
    assert a2.how == "matched" and a2.probe_s == 0.0 and a2.probes == ()
    assert f"score {dec['score'].iloc[0]:.3g}" in a2.how_detail
    assert a2.config == dec["config"].iloc[0]


def test_report_has_probe_table_and_figure(store, tmp_path: Path):
    out = tmp_path / "out"
    path, (r,) = build_report(store, ["job1"], out)
    text = path.read_text()
    assert "### Probed system configs" in text
    a1 = next(t for t in r.trials if t.trial == "a1")
    for p in a1.probes:
        assert f"| a1 | {p.config} | {p.slot_s:.1f} |" in text
    assert re.search(r"\| a2 \| n/a \|.*\| matched \| ground truth matched, score", text)
    with Image.open(out / "probe_times.png") as im:
        assert im.format == "PNG" and im.size[0] >= 300
    assert (out / "profile_1.png").exists()  # the profiles the tuner recorded
    assert f"| tuning time (s) | {r.tuning_s:.1f} |" in text
