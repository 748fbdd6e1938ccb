"""Type III workloads: Rodinia-like iterative jobs without a DNN.

An epoch is a fixed block of iterations; each job reports a convergence
figure as its "loss" and as its metric.  They are chosen to use the machine
differently, which is what the profiler has to tell apart:

* ``jacobi`` — 2-D Laplace stencil in numpy, two preallocated float64
  grids updated in place: one thread, streaming memory bandwidth, almost no
  allocation or system calls once running.  Metric: residual (max change of
  one sweep), falls towards 0.
* ``bfs`` — breadth-first traversals of a random graph (CSR) in numpy:
  irregular gathers, a new frontier array per level (allocation churn, page
  faults, mmap/munmap), branchy.  Metric: standard error of the running
  estimate of the mean shortest-path length, falls as traversals accumulate.
* ``kmeans`` — Lloyd's algorithm in torch: one matrix multiply per
  iteration, multi-threaded (follows ``torch.set_num_threads``), compute
  bound.  Metric: inertia per point, falls to a fixed point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workloads.base import Workload


class _Iterative(Workload):
    kind = "III"
    metric_mode = "min"

    def _run_block(self, epoch: int, step: Callable[[], None], iters: int,
                   on_window: Callable[[int], None] | None, window_steps: int | None) -> int:
        self._check_window(window_steps)
        for i in range(1, iters + 1):
            step()
            if on_window is not None and window_steps and i % window_steps == 0:
                on_window(i)
        self.epochs_trained = epoch
        return iters


class Jacobi(_Iterative):
    """Jacobi iterations for Laplace's equation on an ``size`` x ``size`` grid, top edge hot."""

    name = "jacobi"
    metric = "residual"
    hyperparameters: ClassVar[dict[str, Any]] = {"size": 768, "iters_per_epoch": 150}

    def __init__(self, hparams: Mapping[str, Any] | None = None, *, seed: int = 0,
                 data_dir: Path | None = None) -> None:
        super().__init__(hparams, seed=seed, data_dir=data_dir)
        n = self.hparams["size"]
        if n < 3:
            from pipetune.errors import ConfigError

            raise ConfigError(f"hyperparameter size={n}: must be >= 3")
        rng = np.random.default_rng(self.seed)
        self.u = rng.random((n, n)) * 0.01
        self.u[0, :] = 1.0
        self.u[-1, :] = self.u[:, 0] = self.u[:, -1] = 0.0
        self.v = self.u.copy()
        self.residual = float("inf")
        self.epochs_trained = 0
        self.data_source = f"generated {n}x{n} float64 grid (seed {self.seed})"

    def _sweep(self) -> None:
        u, v = self.u, self.v
        inner = v[1:-1, 1:-1]
        np.add(u[:-2, 1:-1], u[2:, 1:-1], out=inner)
        inner += u[1:-1, :-2]
        inner += u[1:-1, 2:]
        inner *= 0.25
        self.u, self.v = v, u

    def train_epoch(self, epoch: int, *, on_window: Callable[[int], None] | None = None,
                    window_steps: int | None = None) -> dict[str, Any]:
        iters = self._run_block(epoch, self._sweep, self.hparams["iters_per_epoch"],
                                on_window, window_steps)
        # u is the newest grid, v the one before: the last sweep's change.
        self.residual = float(np.max(np.abs(self.u - self.v)))
        cells = (self.u.shape[0] - 2) ** 2
        return {"loss": self.residual, "steps": iters, "samples": iters * cells}

    def evaluate(self) -> dict[str, Any]:
        return {"residual": self.residual, "mean": float(self.u.mean())}

    def state_dict(self) -> dict[str, Any]:
        return {"u": self.u.copy(), "v": self.v.copy(), "residual": self.residual,
                "epochs_trained": self.epochs_trained}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.u, self.v = np.array(state["u"]), np.array(state["v"])
        self.residual = float(state["residual"])
        self.epochs_trained = int(state["epochs_trained"])


class BFS(_Iterative):
    """Breadth-first traversals from random sources of a random graph (``nodes``, ``degree``)."""

    name = "bfs"
    metric = "stderr"
    hyperparameters: ClassVar[dict[str, Any]] = {
        "nodes": 200_000, "degree": 8, "traversals_per_epoch": 12,
    }

    def __init__(self, hparams: Mapping[str, Any] | None = None, *, seed: int = 0,
                 data_dir: Path | None = None) -> None:
        super().__init__(hparams, seed=seed, data_dir=data_dir)
        n, d = self.hparams["nodes"], self.hparams["degree"]
        rng = np.random.default_rng(self.seed)
        m = n * d // 2
        src, dst = rng.integers(0, n, m), rng.integers(0, n, m)
        both_src = np.concatenate([src, dst])
        both_dst = np.concatenate([dst, src])
        order = np.argsort(both_src, kind="stable")
        self.indices = both_dst[order]
        self.indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(both_src, minlength=n), out=self.indptr[1:])
        self.rng = rng
        self.path_lengths: list[float] = []  # mean distance to reached nodes, per traversal
        self.reached: list[float] = []
        self.epochs_trained = 0
        self.data_source = f"generated random graph: {n} nodes, {2 * m} directed edges"

    def _traverse(self) -> None:
        n = len(self.indptr) - 1
        source = int(self.rng.integers(0, n))
        dist = np.full(n, -1, dtype=np.int32)
        dist[source] = 0
        frontier = np.array([source], dtype=np.int64)
        level, total, count = 0, 0, 1
        while frontier.size:
            level += 1
            starts, ends = self.indptr[frontier], self.indptr[frontier + 1]
            lengths = ends - starts
            # Gather every neighbour of the frontier (irregular reads of `indices`).
            offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
            neigh = self.indices[offsets + np.arange(lengths.sum())]
            neigh = neigh[dist[neigh] < 0]
            frontier = np.unique(neigh)
            dist[frontier] = level
            total += level * frontier.size
            count += frontier.size
        self.path_lengths.append(total / max(count - 1, 1))
        self.reached.append(count / n)

    def stderr(self) -> float:
        if len(self.path_lengths) < 2:
            return float("inf")
        return float(np.std(self.path_lengths, ddof=1) / np.sqrt(len(self.path_lengths)))

    def train_epoch(self, epoch: int, *, on_window: Callable[[int], None] | None = None,
                    window_steps: int | None = None) -> dict[str, Any]:
        iters = self._run_block(epoch, self._traverse, self.hparams["traversals_per_epoch"],
                                on_window, window_steps)
        return {"loss": self.stderr(), "steps": iters, "samples": iters}

    def evaluate(self) -> dict[str, Any]:
        return {"stderr": self.stderr(), "mean_path_length": float(np.mean(self.path_lengths)),
                "reached_fraction": float(np.mean(self.reached))}

    def state_dict(self) -> dict[str, Any]:
        return {"path_lengths": list(self.path_lengths), "reached": list(self.reached),
                "rng": self.rng.bit_generator.state, "epochs_trained": self.epochs_trained}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.path_lengths = list(state["path_lengths"])
        self.reached = list(state["reached"])
        self.rng.bit_generator.state = state["rng"]
        self.epochs_trained = int(state["epochs_trained"])


class KMeans(_Iterative):
    """Lloyd's k-means on ``points`` Gaussian-blob points in ``dims`` dimensions (torch)."""

    name = "kmeans"
    metric = "inertia"
    hyperparameters: ClassVar[dict[str, Any]] = {
        "points": 100_000, "dims": 32, "clusters": 64, "iters_per_epoch": 10,
    }

    def __init__(self, hparams: Mapping[str, Any] | None = None, *, seed: int = 0,
                 data_dir: Path | None = None) -> None:
        super().__init__(hparams, seed=seed, data_dir=data_dir)
        import torch

        n, d, k = self.hparams["points"], self.hparams["dims"], self.hparams["clusters"]
        if k > n:
            from pipetune.errors import ConfigError

            raise ConfigError(f"hyperparameter clusters={k}: more than points={n}")
        g = torch.Generator().manual_seed(self.seed)
        true_centres = torch.randn(k, d, generator=g) * 4
        owner = torch.randint(0, k, (n,), generator=g)
        self.x = true_centres[owner] + torch.randn(n, d, generator=g)
        self.centroids = self.x[torch.randperm(n, generator=g)[:k]].clone()
        self.x_sq = (self.x * self.x).sum(dim=1, keepdim=True)
        self.inertia = float("inf")
        self.shift = float("inf")
        self.epochs_trained = 0
        self.data_source = f"generated {n} points, {d} dims, {k} Gaussian blobs (seed {self.seed})"

    def _lloyd(self) -> None:
        import torch

        c = self.centroids
        d2 = self.x_sq - 2.0 * (self.x @ c.T) + (c * c).sum(dim=1)
        best, assign = d2.min(dim=1)
        k = c.shape[0]
        sums = torch.zeros_like(c).index_add_(0, assign, self.x)
        counts = torch.bincount(assign, minlength=k).to(c.dtype).unsqueeze(1)
        new = torch.where(counts > 0, sums / counts.clamp(min=1), c)
        self.shift = float((new - c).norm(dim=1).max())
        self.centroids = new
        self.inertia = float(best.clamp(min=0).mean())

    def train_epoch(self, epoch: int, *, on_window: Callable[[int], None] | None = None,
                    window_steps: int | None = None) -> dict[str, Any]:
        iters = self._run_block(epoch, self._lloyd, self.hparams["iters_per_epoch"],
                                on_window, window_steps)
        return {"loss": self.inertia, "steps": iters, "samples": iters * len(self.x)}

    def evaluate(self) -> dict[str, Any]:
        return {"inertia": self.inertia, "centroid_shift": self.shift}

    def state_dict(self) -> dict[str, Any]:
        return {"centroids": self.centroids.clone(), "inertia": self.inertia,
                "shift": self.shift, "epochs_trained": self.epochs_trained}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.centroids = state["centroids"].clone()
        self.inertia, self.shift = float(state["inertia"]), float(state["shift"])
        self.epochs_trained = int(state["epochs_trained"])
