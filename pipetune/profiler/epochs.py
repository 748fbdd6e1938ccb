"""Samples → epoch profiles.

- :func:`epoch_profile` — the mean rate per event over a window, weighting
  each sample by how much of its interval lies inside the window, so a window
  shorter than the sampling interval still gets a profile (the rate of the
  interval(s) it overlaps).
- :func:`fixed_windows` / :func:`marker_windows` — cut a run into epochs by
  fixed length or by the times of marker lines.
- :func:`sample_rates` — one sample's rates, gauges averaged not divided.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from pipetune.profiler.events import is_gauge
from pipetune.types import EpochProfile, Sample

log = logging.getLogger(__name__)


def sample_rates(sample: Sample) -> dict[str, float]:
    """Per-second rates of a sample's counts; gauges (RSS, threads) as they are.

    Use this rather than :meth:`Sample.rates`, which divides every figure by
    the interval, gauges included.
    """
    if sample.interval_s <= 0:
        return {}
    return {k: (v if is_gauge(k) else v / sample.interval_s) for k, v in sample.counts.items()}


def epoch_profile(
    samples: Iterable[Sample],
    start: float,
    end: float,
    *,
    epoch: int = 0,
    warmup_s: float = 0.0,
) -> EpochProfile:
    """Mean rate per event over ``[start + warmup_s, end]`` (``time.time()`` seconds).

    Each sample covers ``[timestamp - interval_s, timestamp]``; it counts with
    the share of that interval inside the window, and a rate is the weighted
    counts over the weighted time (gauges: the time-weighted mean).  An event
    missing from some samples is averaged over the samples that have it.

    When the warm-up would swallow the whole window, the warm-up is ignored
    (a short epoch still gets a profile) and a debug line says so.

    Returns an :class:`EpochProfile` whose ``start``/``end`` are the window
    actually measured; ``n_samples`` is 0 (and ``rates`` empty) when no sample
    overlaps it yet.
    """
    if end < start:
        raise ValueError(f"epoch window end {end} is before start {start}")
    lo = start + max(0.0, warmup_s)
    if lo >= end:
        if warmup_s > 0:
            log.debug("epoch %d: warm-up %.2f s covers the %.2f s window; not excluded",
                      epoch, warmup_s, end - start)
        lo = start
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    n = 0
    for s in samples:
        if s.interval_s <= 0:
            continue
        s_start = s.timestamp - s.interval_s
        overlap = min(end, s.timestamp) - max(lo, s_start)
        if overlap <= 0:
            # A window inside one interval of zero length still takes that interval.
            if not (end == lo and s_start <= lo <= s.timestamp):
                continue
            overlap = 1e-9
        share = overlap / s.interval_s
        n += 1
        for event, value in s.counts.items():
            if is_gauge(event):
                totals[event] = totals.get(event, 0.0) + value * overlap
            else:
                totals[event] = totals.get(event, 0.0) + value * share
            weights[event] = weights.get(event, 0.0) + overlap
    rates = {e: totals[e] / weights[e] for e in totals if weights[e] > 0}
    return EpochProfile(rates=rates, start=lo, end=end, n_samples=n, epoch=epoch)


def fixed_windows(start: float, end: float, seconds: float, *, min_fraction: float = 0.5
                  ) -> list[tuple[float, float]]:
    """Consecutive windows of ``seconds`` from ``start``; a last partial window
    is kept when it is at least ``min_fraction`` of a full one."""
    if seconds <= 0:
        raise ValueError(f"epoch seconds {seconds}: must be > 0")
    out: list[tuple[float, float]] = []
    t = start
    while t + seconds <= end + 1e-9:
        out.append((t, t + seconds))
        t += seconds
    if end - t >= min_fraction * seconds and end - t > 1e-9:
        out.append((t, end))
    return out


def marker_windows(start: float, marks: Sequence[float]) -> list[tuple[float, float]]:
    """Epochs ended by markers: ``[start, m1], [m1, m2], …``.  What follows
    the last marker is not an epoch (it has not finished)."""
    out: list[tuple[float, float]] = []
    t = start
    for m in sorted(marks):
        if m > t:
            out.append((t, m))
            t = m
    return out
