"""`pipetune groundtruth retrain|show` on a real SQLite store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipetune.cli import main
from pipetune.store import open_store
from pipetune.types import EpochProfile, SystemConfig

EVENTS = ["task-clock", "context-switches", "page-faults", "sched:sched_wakeup",
          "syscalls:sys_enter_read", "rss_mb"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fill(url, tmp_path, n_workloads=3, runs=4):
    rng = np.random.default_rng(0)
    store = open_store(url, spool_root=tmp_path / "spool")
    t = 1_000.0
    for w in range(n_workloads):
        base = np.exp(rng.uniform(2, 9, len(EVENTS)))
        for _ in range(runs):
            rates = {e: float(b * math.exp(rng.normal(0, 0.05)))
                     for e, b in zip(EVENTS, base, strict=True)}
            t += 1
            store.write_groundtruth(workload=f"w{w}", profile=EpochProfile(rates, 0, 1, 1),
                                    config=SystemConfig(w + 1), objective="runtime",
                                    value=1.0 + w, time_s=t)
    assert store.flush()
    store.close()


def test_retrain_writes_a_model_that_separates_the_workloads(env, capsys):
    url = f"sqlite:///{env}/s.db"
    fill(url, env)
    out = env / "models" / "gt.json"
    assert main(["groundtruth", "retrain", "--store", url, "--out", str(out), "--k", "auto"]) == 0
    text = capsys.readouterr().out
    assert "3 clusters from 12 records" in text and "silhouette" in text
    for w in range(3):
        assert f"best {w + 1}c/-m/0g" in text and f"w{w}×4" in text
    assert f"wrote {out}" in text
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 1 and len(doc["model"]["clusters"]) == 3

    assert main(["groundtruth", "show", str(out)]) == 0
    assert "3 clusters from 12 records" in capsys.readouterr().out

    assert main(["groundtruth", "retrain", "--store", url, "--out", str(out), "--k", "2",
                 "--clusterer", "agglomerative"]) == 0
    assert "2 clusters" in capsys.readouterr().out


def test_retrain_default_out_is_the_model_setting(env, capsys):
    url = f"sqlite:///{env}/s.db"
    fill(url, env, n_workloads=2, runs=2)
    assert main(["groundtruth", "retrain", "--store", url]) == 0
    assert (env / "home" / "groundtruth.json").is_file()


def test_retrain_errors_are_one_line(env, capsys):
    url = f"sqlite:///{env}/empty.db"
    out = env / "gt.json"
    assert main(["groundtruth", "retrain", "--store", url, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pipetune groundtruth: error: no ground-truth records")
    assert "\n" not in err and not out.exists()

    fill(f"sqlite:///{env}/s.db", env, n_workloads=2, runs=2)
    url = f"sqlite:///{env}/s.db"
    assert main(["groundtruth", "retrain", "--store", url, "--out", str(out), "--k", "9"]) == 2
    assert "k=9: larger than the 4 records" in capsys.readouterr().err
    assert main(["groundtruth", "retrain", "--store", url, "--out", str(out),
                 "--clusterer", "magic"]) == 2
    assert "clusterer 'magic': unknown" in capsys.readouterr().err
    assert main(["groundtruth", "retrain", "--store", url, "--out", str(out),
                 "--objective", "speed"]) == 2
    assert "objective 'speed'" in capsys.readouterr().err
    assert not out.exists()


def test_show_errors(env, capsys):
    bad = env / "bad.json"
    bad.write_text("{")
    assert main(["groundtruth", "show", str(bad)]) == 1
    assert "corrupt" in capsys.readouterr().err
    newer = env / "newer.json"
    newer.write_text(json.dumps({"format": "pipetune-groundtruth", "schema_version": 99,
                                 "model": {}}))
    assert main(["groundtruth", "show", str(newer)]) == 1
    assert "newer than this pipetune" in capsys.readouterr().err


def test_threshold_outside_0_1_is_a_usage_error(env, capsys, monkeypatch):
    monkeypatch.setenv("PIPETUNE_THRESHOLD", "1.5")
    assert main(["groundtruth", "show", str(env / "x.json")]) == 2
    assert "threshold" in capsys.readouterr().err


def test_a_clusterer_that_cannot_label_records_is_one_line(env, capsys):
    url = f"sqlite:///{env}/s.db"
    fill(url, env, n_workloads=2, runs=3)
    out = env / "gt.json"
    for name in ("spectralbiclustering", "SpectralCoclustering", "featureagglomeration",
                 "estimate_bandwidth"):
        rc = main(["groundtruth", "retrain", "--store", url, "--out", str(out),
                   "--clusterer", name])
        err = capsys.readouterr().err.strip()
        assert rc == 2, err
        assert len(err.splitlines()) == 1 and f"clusterer {name!r}" in err, err
        offered = err.split("known: " if "known: " in err else "use one of: ", 1)[1]
        assert "estimate_bandwidth" not in offered and "spectralbiclustering" not in offered
    assert not out.exists()


def test_every_known_clusterer_fits(env, capsys):
    """The list an unknown name prints offers only names that work."""
    from pipetune.groundtruth.model import known_clusterers

    url = f"sqlite:///{env}/s.db"
    fill(url, env, n_workloads=2, runs=3)
    assert main(["groundtruth", "retrain", "--store", url, "--clusterer", "magic"]) == 2
    offered = capsys.readouterr().err.split("known: ", 1)[1].rstrip(")\n").split(", ")
    assert offered == known_clusterers() and "estimate_bandwidth" not in offered
    for name in offered:
        out = env / f"{name}.json"
        rc = main(["groundtruth", "retrain", "--store", url, "--out", str(out),
                   "--clusterer", name])
        captured = capsys.readouterr()
        assert rc == 0, f"{name}: {captured.err}"
        assert json.loads(out.read_text())["model"]["clusterer"] == name


def _unreadable_models(env):
    """What a user may have at the model path that pipetune cannot read."""
    url = f"sqlite:///{env}/good.db"
    fill(url, env, n_workloads=2, runs=2)
    good = env / "good.json"
    assert main(["groundtruth", "retrain", "--store", url, "--out", str(good)]) == 0
    text = good.read_text()
    newer = json.loads(text)
    newer["schema_version"] = 99
    return {
        "truncated": text[: len(text) // 2].encode(),
        "binary": bytes(range(256)) * 4,
        "newer": json.dumps(newer).encode(),
        "empty": b"",
    }


def test_a_model_file_that_cannot_be_read_is_never_overwritten(env, capsys):
    url = f"sqlite:///{env}/s.db"
    fill(url, env, n_workloads=2, runs=3)
    for kind, content in _unreadable_models(env).items():
        capsys.readouterr()
        path = env / f"{kind}.json"
        path.write_bytes(content)
        rc = main(["groundtruth", "retrain", "--store", url, "--out", str(path)])
        err = capsys.readouterr().err.strip()
        assert rc == 1, (kind, err)
        assert len(err.splitlines()) == 1 and "not overwritten" in err, (kind, err)
        assert path.read_bytes() == content, kind
        assert sorted(p.name for p in env.glob(f".{kind}.json*")) == []  # no temp left
        # Asked for in so many words, it is replaced.
        assert main(["groundtruth", "retrain", "--store", url, "--out", str(path),
                     "--force"]) == 0
        assert json.loads(path.read_text())["schema_version"] == 1


def test_a_jobs_refit_keeps_an_unreadable_model_and_says_so_once(env, caplog):
    import logging

    from pipetune.tune.callback import PipeTuneCallback

    url = f"sqlite:///{env}/s.db"
    fill(url, env, n_workloads=2, runs=3)
    content = _unreadable_models(env)["truncated"]
    model = env / "home" / "groundtruth.json"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(content)
    cb = PipeTuneCallback(url, env / "spool", job="j", mode="pipetune",
                          model_path=str(model))
    with caplog.at_level(logging.DEBUG, logger="pipetune"):
        for _ in range(3):  # one refit per finished trial
            cb._learn()
    cb.store.close()
    assert model.read_bytes() == content and cb.model_updates == 0
    said = [r for r in caplog.records if "not overwritten" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "corrupt (not JSON" in said[0].getMessage()
