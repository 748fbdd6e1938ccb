"""Samples → epoch profiles: overlap weighting, warm-up, gauges, windows."""

from __future__ import annotations

import pytest

from pipetune.profiler import epoch_profile, fixed_windows, marker_windows, sample_rates
from pipetune.types import Sample


def _s(t_end: float, counts: dict[str, float], interval_s: float = 1.0) -> Sample:
    return Sample(timestamp=t_end, interval_s=interval_s, counts=counts)


def test_mean_rate_over_whole_intervals():
    samples = [_s(101, {"task-clock": 1000}), _s(102, {"task-clock": 500}),
               _s(103, {"task-clock": 0})]
    p = epoch_profile(samples, 100, 103, epoch=4)
    assert p.rates["task-clock"] == pytest.approx(500)
    assert p.n_samples == 3 and p.epoch == 4 and p.seconds == pytest.approx(3)


def test_window_shorter_than_interval_takes_the_overlapping_rates():
    samples = [_s(101, {"x": 100}), _s(102, {"x": 300})]
    # 0.2 s in the first interval, 0.3 s in the second: weighted by overlap.
    p = epoch_profile(samples, 100.8, 101.3)
    assert p.rates["x"] == pytest.approx((100 * 0.2 + 300 * 0.3) / 0.5)
    assert p.n_samples == 2
    inside = epoch_profile(samples, 101.2, 101.4)
    assert inside.rates["x"] == pytest.approx(300) and inside.n_samples == 1


def test_warmup_is_excluded():
    samples = [_s(101, {"x": 1000}), _s(102, {"x": 10}), _s(103, {"x": 10})]
    assert epoch_profile(samples, 100, 103, warmup_s=1.0).rates["x"] == pytest.approx(10)
    # A warm-up longer than the window is ignored rather than leaving nothing.
    short = epoch_profile(samples, 100, 100.5, warmup_s=2.0)
    assert short.rates["x"] == pytest.approx(1000)


def test_gauges_are_averaged_not_divided():
    samples = [_s(100.5, {"proc.rss_mb": 100, "x": 50}, 0.5),
               _s(101.0, {"proc.rss_mb": 300, "x": 50}, 0.5)]
    p = epoch_profile(samples, 100, 101)
    assert p.rates["proc.rss_mb"] == pytest.approx(200)
    assert p.rates["x"] == pytest.approx(100)
    assert sample_rates(samples[0]) == {"proc.rss_mb": 100, "x": 100}


def test_no_samples_gives_empty_profile():
    p = epoch_profile([_s(101, {"x": 1})], 200, 201)
    assert p.n_samples == 0 and p.rates == {}
    with pytest.raises(ValueError):
        epoch_profile([], 2, 1)


def test_event_missing_in_some_samples_uses_those_that_have_it():
    p = epoch_profile([_s(101, {"x": 10}), _s(102, {"x": 30, "y": 7})], 100, 102)
    assert p.rates["x"] == pytest.approx(20) and p.rates["y"] == pytest.approx(7)


def test_fixed_and_marker_windows():
    assert fixed_windows(0, 3.2, 1) == [(0, 1), (1, 2), (2, 3)]
    assert fixed_windows(0, 3.6, 1)[-1] == (3, 3.6)
    assert marker_windows(10, [12, 11, 15]) == [(10, 11), (11, 12), (12, 15)]
    assert marker_windows(10, []) == []
    with pytest.raises(ValueError):
        fixed_windows(0, 1, 0)
