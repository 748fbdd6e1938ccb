"""Distances, spreads and the similarity score of the ground truth.

- :func:`robust_sq_distance` — squared distances that one flaky counter
  cannot decide (:func:`trimmed_count` features left out);
- :func:`own_spread` — a group's centroid and how far a *new* member lands;
  :func:`run_noise2` — how far runs of one workload scatter, from the
  named workloads with repeated runs;
- :func:`similarity` — a distance in units of a cluster's radius as a
  score in [0, 1].

Split from :mod:`.model` (which fits and matches with them) so that module
stays readable; the reasons for each choice are in their docstrings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Similarity is this value at two cluster radii (and 1 at the centroid).
SCORE_AT_TWO_RADII = 0.8


def trimmed_count(dim: int) -> int:
    """Features left out of a distance: the worst ~20 % (at least one from 5 on).

    20 %, not 10 %: a trial's first epoch may read its data and libraries
    from disk or from the page cache, and that moves a whole family of I/O
    figures at once (bytes read, page-cache adds, block requests, major
    faults: six of this host's 32) by orders of magnitude between two trials
    of one workload (measured in a real Tune job: 945 kB/s vs 0.7 kB/s read).
    """
    return dim // 5 if dim >= 10 else (1 if dim >= 5 else 0)


def robust_sq_distance(diff: np.ndarray, trim: bool = True) -> np.ndarray:
    """Squared distances of the rows of ``diff`` with each row's worst
    :func:`trimmed_count` features left out, scaled back to the full dimension.

    Why: one flaky counter (page faults of an allocator that just changed its
    mmap threshold, context switches on a busy node) can differ 10x between two
    runs of the same workload and would alone decide the distance.  Different
    workloads differ in many features, so leaving out the worst one or two does
    not make them similar.

    ``trim=False`` (plain squared distance) for learned feature weights: they
    already silence the flaky counters, and the features trimming would drop
    are then the heavily weighted ones that separate workloads.
    """
    diff = np.atleast_2d(diff)
    dim = diff.shape[1]
    t = trimmed_count(dim) if trim else 0
    sq = diff**2
    if t:
        sq = np.sort(sq, axis=1)[:, : dim - t]
    return sq.sum(axis=1) * (dim / max(dim - t, 1))


def similarity(distance: float, radius: float) -> float:
    """Score in [0, 1]: 1 at the centroid, ~0.95 at one radius, 0.8 at two,
    0.41 at four.  ``radius`` is the cluster's calibrated spread (the RMS
    distance a new member is expected at), so the same distance means more
    in a tight cluster than in a loose one."""
    if not math.isfinite(distance):
        return 0.0
    if radius <= 0 or not math.isfinite(radius):
        return 1.0 if distance == 0 else 0.0
    return float(SCORE_AT_TWO_RADII ** ((distance / (2.0 * radius)) ** 2))


def own_spread(
    X: np.ndarray, idx: np.ndarray, trim: bool = True
) -> tuple[np.ndarray, float, int]:
    """(centroid, expected squared distance of a *new* member, size)."""
    centroid = X[idx].mean(axis=0)
    n = len(idx)
    if n < 2:
        return centroid, 0.0, n
    ss = float(robust_sq_distance(X[idx] - centroid, trim).mean())
    # A member's distance to a centroid fitted on it underestimates a new
    # member's: E|new-mean|^2 / E|member-mean|^2 = (n+1)/(n-1).
    return centroid, ss * (n + 1) / (n - 1), n


def run_noise2(
    X: np.ndarray, workloads: Sequence[str], trim: bool = True
) -> tuple[float, np.ndarray] | None:
    """How far a new run lands from its own workload's centroid, from the
    named workloads with repeated runs: (pooled expected squared distance,
    per record its workload's own — the pooled one where the workload has a
    single run or no name).  None with fewer than two repeated workloads (no
    honest estimate)."""
    groups: dict[str, list[int]] = {}
    for i, w in enumerate(workloads):
        if w:
            groups.setdefault(w, []).append(i)
    own = {w: own_spread(X, np.asarray(idx), trim) for w, idx in groups.items() if len(idx) > 1}
    if len(own) < 2:
        return None
    pooled = sum(s2 * n for _, s2, n in own.values()) / sum(n for _, _, n in own.values())
    per_record = np.array([own[w][1] if w in own else pooled for w in workloads])
    return pooled, per_record
