"""The workload interface: what a tuner, a parallel strategy and the CLI may rely on.

:class:`Workload` is one trainable job built from a hyperparameter dict: it
trains one epoch at a time (optionally in step windows, so a system tuner can
act between windows), evaluates, and can save/restore its state for Tune
checkpoints.  It is deterministic for a seed: two instances with the same
hyperparameters, seed and data give the same losses.

:class:`TorchWorkload` is the base of the DNN workloads.  Its model is an
``nn.Sequential`` (or declares its own partition boundaries), which is what
lets the parallel strategies in :mod:`pipetune.parallel` split it into
pipeline stages without knowing the model.

Contract (all workloads):

* ``hyperparameters`` maps every key the workload takes to its default; an
  unknown key is a :class:`~pipetune.errors.ConfigError` naming the key.
  Values given as strings (from ``--set KEY=VALUE``) are converted to the
  default's type.
* ``train_epoch`` returns ``{"loss": float, "steps": int, "samples": int}``
  and calls ``on_window(step)`` after every ``window_steps`` steps.
* ``evaluate`` returns ``{metric: value, ...}`` where ``metric`` is the class
  attribute naming the workload's quality figure ("accuracy", "residual" ...)
  and ``metric_mode`` says whether larger ("max") or smaller ("min") is better.
* Not thread-safe: one training thread drives one instance.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pipetune.errors import ConfigError, NotSupportedError

if TYPE_CHECKING:  # torch is imported lazily: `pipetune --help` must stay fast
    import torch
    from torch import nn

log = logging.getLogger(__name__)

KINDS = ("I", "II", "III")


def default_data_dir() -> Path:
    """``$PIPETUNE_HOME/data`` (the same home the settings use)."""
    from pipetune.config import default_home

    return default_home() / "data"


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert ``value`` to the type of ``default`` (strings come from the command line)."""
    if default is None:
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            low = str(value).strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        elif isinstance(default, int):
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str):
                return int(value.strip())
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif isinstance(default, float):
            if not isinstance(value, bool):
                return float(value)
        elif isinstance(default, str):
            return str(value)
        else:
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(
        f"hyperparameter {key}={value!r}: expected {type(default).__name__} "
        f"(default {default!r})"
    )


class Workload(abc.ABC):
    """One trainable job, built from hyperparameters; see the module docstring."""

    #: Registry name, e.g. "lenet5-mnist".
    name: ClassVar[str] = ""
    #: The paper's type: "I" same model/other data, "II" same data/other model, "III" non-DNN.
    kind: ClassVar[str] = ""
    #: Every hyperparameter the workload takes, with its default.
    hyperparameters: ClassVar[dict[str, Any]] = {}
    #: Name of the quality figure in :meth:`evaluate`'s result, and whether max or min is best.
    metric: ClassVar[str] = "accuracy"
    metric_mode: ClassVar[str] = "max"
    #: Whether :mod:`pipetune.parallel`'s ddp/mp/gpipe strategies apply.
    supports_parallel: ClassVar[bool] = False

    def __init__(
        self,
        hparams: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        data_dir: Path | None = None,
    ) -> None:
        #: Hyperparameters given as schedules (see :mod:`pipetune.stages`):
        #: ``hparams`` holds their epoch-0 value until :meth:`apply_schedules`.
        self.schedules: dict[str, Any] = self.split_schedules(hparams)
        plain = {**(hparams or {}), **{k: s.at_epoch(0) for k, s in self.schedules.items()}}
        self.hparams: dict[str, Any] = self.resolve_hparams(plain)
        self.seed = int(seed)
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        #: One line saying which data this instance trains on (set by the loader).
        self.data_source: str = ""

    # -- hyperparameters ---------------------------------------------------------------

    #: Hyperparameters that may be schedules (a value per epoch).
    schedulable: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def split_schedules(cls, hparams: Mapping[str, Any] | None) -> dict[str, Any]:
        """The schedule-valued hyperparameters, parsed.

        Raises:
            ConfigError: a schedule for a hyperparameter that cannot change
                between epochs, or a malformed schedule.
        """
        from pipetune.stages.schedules import is_schedule, parse

        out = {}
        for key, value in (hparams or {}).items():
            if is_schedule(value):
                if key not in cls.schedulable:
                    can = ", ".join(sorted(cls.schedulable)) or "none"
                    raise ConfigError(
                        f"workload {cls.name!r}: hyperparameter {key!r} cannot be a schedule "
                        f"(schedulable: {can})"
                    )
                out[key] = parse(value)
        return out

    def apply_schedules(self, epoch: int) -> dict[str, Any]:
        """Put every scheduled hyperparameter's value for ``epoch`` in force
        (in :attr:`hparams`; subclasses also where training reads it).
        Returns the values set."""
        values = {k: s.at_epoch(epoch) for k, s in self.schedules.items()}
        if values:
            self.hparams.update(self.resolve_hparams({**self.hparams, **values}))
        return values

    @classmethod
    def resolve_hparams(cls, hparams: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with ``hparams``, converted and validated.

        Raises:
            ConfigError: an unknown key (named, with the known ones) or a bad value.
        """
        resolved = dict(cls.hyperparameters)
        for key, value in (hparams or {}).items():
            if key not in cls.hyperparameters:
                known = ", ".join(sorted(cls.hyperparameters)) or "none"
                raise ConfigError(
                    f"workload {cls.name!r} takes no hyperparameter {key!r} (known: {known})"
                )
            resolved[key] = _coerce(key, value, cls.hyperparameters[key])
        cls.validate_hparams(resolved)
        return resolved

    #: Integer hyperparameters for which 0 is meaningful (every other int must be >= 1).
    zero_allowed: ClassVar[frozenset[str]] = frozenset({"max_train_samples"})

    @classmethod
    def validate_hparams(cls, hp: Mapping[str, Any]) -> None:
        """Check value ranges; subclasses extend.  Raise ConfigError naming the key.

        Every integer hyperparameter is a size or a count: it must be >= 1
        (>= 0 for those in :attr:`zero_allowed`).
        """
        for key, value in hp.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, int):
                low = 0 if key in cls.zero_allowed else 1
                if value < low:
                    raise ConfigError(f"hyperparameter {key}={value!r}: must be >= {low}")
            if key == "lr" and not value > 0:
                raise ConfigError(f"hyperparameter lr={value!r}: must be > 0")
            if key in ("dropout", "momentum") and not 0.0 <= value < 1.0:
                raise ConfigError(f"hyperparameter {key}={value!r}: must be in [0, 1)")
            if key == "optimizer" and value not in ("sgd", "adam"):
                raise ConfigError(f"hyperparameter optimizer={value!r}: must be sgd or adam")

    # -- training ----------------------------------------------------------------------

    @abc.abstractmethod
    def train_epoch(
        self,
        epoch: int,
        *,
        on_window: Callable[[int], None] | None = None,
        window_steps: int | None = None,
    ) -> dict[str, Any]:
        """Train one epoch (1-based); return ``{"loss", "steps", "samples"}``."""

    @abc.abstractmethod
    def evaluate(self) -> dict[str, Any]:
        """Quality figures; always contains ``self.metric``."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training (model, optimizer, iterates)."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    @staticmethod
    def _check_window(window_steps: int | None) -> None:
        if window_steps is not None and window_steps < 1:
            raise ConfigError(f"window_steps={window_steps!r}: must be >= 1")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, hparams={self.hparams})"


class TorchWorkload(Workload):
    """A DNN workload: a sequential model, a labelled data set, a classifier loss.

    Subclasses implement :meth:`load_data` and :meth:`build_model`; the base
    class does batching (deterministic per seed and epoch, last partial batch
    dropped so every strategy sees the same full batches), the training step,
    evaluation, checkpoints and the split into pipeline partitions.
    """

    supports_parallel = True
    schedulable: ClassVar[frozenset[str]] = frozenset({"lr", "batch_size"})

    def __init__(
        self,
        hparams: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        data_dir: Path | None = None,
    ) -> None:
        super().__init__(hparams, seed=seed, data_dir=data_dir)
        import torch

        self.device = torch.device("cpu")
        data = self.load_data()
        self.x_train, self.y_train, self.x_test, self.y_test = data
        limit = int(self.hparams.get("max_train_samples", 0) or 0)
        if limit > 0:
            self.x_train, self.y_train = self.x_train[:limit], self.y_train[:limit]
        if len(self.x_train) < self.hparams["batch_size"]:
            raise ConfigError(
                f"hyperparameter batch_size={self.hparams['batch_size']}: larger than the "
                f"{len(self.x_train)} training samples"
            )
        torch.manual_seed(self.seed)  # same seed -> same initial weights in every process
        self.model: nn.Module = self.build_model()
        self.optimizer = self.build_optimizer(self.model.parameters())
        self.epochs_trained = 0
        self._rng_state = torch.Generator().manual_seed(self.seed + 1).get_state()

    # -- what subclasses provide ---------------------------------------------------------

    @abc.abstractmethod
    def load_data(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_train, y_train, x_test, y_test)``; sets :attr:`data_source`."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The model, an ``nn.Sequential`` unless :meth:`partition_boundaries` is overridden."""

    def build_optimizer(self, params: Any) -> torch.optim.Optimizer:
        import torch

        lr = self.hparams.get("lr", 0.01)
        if self.hparams.get("optimizer", "sgd") == "adam":
            return torch.optim.Adam(params, lr=lr)
        return torch.optim.SGD(params, lr=lr, momentum=self.hparams.get("momentum", 0.9))

    def apply_schedules(self, epoch: int) -> dict[str, Any]:
        """Also sets the optimizer's learning rate (a restored optimizer
        state carries the rate of the epoch it was saved in) and checks the
        batch size against the training set."""
        values = super().apply_schedules(epoch)
        if "lr" in values:
            for group in self.optimizer.param_groups:
                group["lr"] = self.hparams["lr"]
        if "batch_size" in values and self.batch_size > len(self.x_train):
            raise ConfigError(
                f"epoch {epoch}: batch_size={self.batch_size} from its schedule is larger than "
                f"the {len(self.x_train)} training samples"
            )
        return values

    @staticmethod
    def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(output, target)

    # -- batching ----------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return int(self.hparams["batch_size"])

    @property
    def steps_per_epoch(self) -> int:
        return len(self.x_train) // self.batch_size

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Full batches of epoch ``epoch``, shuffled the same way in every process."""
        import torch

        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.x_train), generator=g)
        bs = self.batch_size
        for i in range(self.steps_per_epoch):
            idx = order[i * bs:(i + 1) * bs]
            yield self.x_train[idx], self.y_train[idx]

    # -- training ----------------------------------------------------------------------

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x.to(self.device)), y.to(self.device))
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def train_epoch(
        self,
        epoch: int,
        *,
        on_window: Callable[[int], None] | None = None,
        window_steps: int | None = None,
    ) -> dict[str, Any]:
        self._check_window(window_steps)
        self.apply_schedules(epoch)
        total, steps, samples = 0.0, 0, 0
        for x, y in self.train_batches(epoch):
            with self.rng_scope():
                total += self.train_step(x, y)
            steps += 1
            samples += len(x)
            if on_window is not None and window_steps and steps % window_steps == 0:
                on_window(steps)  # outside the RNG scope: the tuner's code is not ours
        self.epochs_trained = epoch
        return {"loss": total / max(steps, 1), "steps": steps, "samples": samples}

    def evaluate(self) -> dict[str, Any]:
        import torch

        self.model.eval()
        correct, loss_sum, n = 0, 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.x_test), 1024):
                x = self.x_test[i:i + 1024].to(self.device)
                y = self.y_test[i:i + 1024].to(self.device)
                out = self.model(x)
                loss_sum += float(self.loss_fn(out, y)) * len(y)
                correct += int((out.argmax(dim=1) == y).sum())
                n += len(y)
        return {"accuracy": correct / max(n, 1), "test_loss": loss_sum / max(n, 1)}

    def state_dict(self) -> dict[str, Any]:
        """A deep copy: torch's state dicts alias the live tensors (momentum buffers too)."""
        import copy

        return copy.deepcopy({
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epochs_trained": self.epochs_trained,
            "rng": self._rng_state,
        })

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        import copy

        state = copy.deepcopy(dict(state))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epochs_trained = int(state.get("epochs_trained", 0))
        if state.get("rng") is not None:
            self._rng_state = state["rng"]

    @contextlib.contextmanager
    def rng_scope(self) -> Iterator[None]:
        """Run with this workload's own torch RNG (dropout), leaving the global one untouched.

        Two instances in one process (a test, a tuner) then do not draw from
        each other's random stream, and a checkpoint resumes the same masks.
        """
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._rng_state)
            try:
                yield
            finally:
                self._rng_state = torch.get_rng_state()

    # -- partitions for model/pipeline parallelism ----------------------------------------

    def layer_costs(self) -> list[float]:
        """Estimated forward cost of each of the model's children, for one sample.

        FLOPs counted by ``torch.utils.flop_counter`` on one training sample,
        floored by the layer's output size; recurrent layers, which the counter
        does not see into, count 2 FLOPs per weight per time step.  Shapes only:
        every process computes the same costs, so every rank cuts the model
        at the same places.  Runs in eval mode under ``no_grad`` and draws no
        random numbers.
        """
        import torch
        from torch import nn
        from torch.utils.flop_counter import FlopCounterMode

        was_training = self.model.training
        self.model.eval()
        costs: list[float] = []
        x = self.x_train[:1]
        try:
            with torch.no_grad():
                for child in self.model.children():
                    steps = x.shape[1] if x.dim() > 1 else 1
                    with FlopCounterMode(display=False) as counter:
                        x = child(x)
                    cost = max(counter.get_total_flops(), x.numel())
                    if any(isinstance(m, nn.RNNBase) for m in child.modules()):
                        # The counter does not see inside fused RNN kernels: ~2 FLOPs
                        # per weight per time step (batch-first input).
                        params = sum(p.numel() for p in child.parameters())
                        cost = max(cost, 2 * params * steps)
                    costs.append(float(cost))
        finally:
            self.model.train(was_training)
        return costs

    def partition_boundaries(self, n: int) -> list[int]:
        """Start index of each of ``n`` partitions of the model's children.

        Default: contiguous groups that minimise the largest group's
        :meth:`layer_costs` (a pipeline runs at the pace of its slowest
        stage).  A workload can override this to declare its own split points.

        Raises:
            NotSupportedError: the model is not an ``nn.Sequential``.
            ConfigError: more partitions than layers.
        """
        from torch import nn

        if not isinstance(self.model, nn.Sequential):
            raise NotSupportedError(
                f"workload {self.name!r}: its model is not an nn.Sequential and declares no "
                "split points, so it cannot be partitioned"
            )
        n_layers = len(self.model)
        if n > n_layers:
            raise ConfigError(
                f"workers={n}: workload {self.name!r} has only {n_layers} layers to split"
            )
        return balanced_boundaries(self.layer_costs(), n)

    def partitions(self, n: int) -> list[nn.Sequential]:
        """The model cut into ``n`` ``nn.Sequential`` parts that keep the children's names.

        Keeping names means the parts' state dicts merge back into the full
        model's (``"3.weight"`` stays ``"3.weight"``).
        """
        from collections import OrderedDict

        from torch import nn

        bounds = self.partition_boundaries(n) + [len(list(self.model.children()))]
        named = list(self.model.named_children())
        return [
            nn.Sequential(OrderedDict(named[bounds[i]:bounds[i + 1]])) for i in range(n)
        ]


def cpu_count() -> int:
    """Cores this process may run on (its affinity, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def balanced_boundaries(costs: list[float], n: int) -> list[int]:
    """Cut ``costs`` into ``n`` non-empty contiguous groups minimising the largest sum.

    Returns each group's start index (the first is 0).  Exact dynamic
    programming, O(n * len(costs)^2): models here have tens of layers.
    """
    size = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][i]: smallest max-group cost splitting the first i layers into k groups.
    best = [[inf] * (size + 1) for _ in range(n + 1)]
    cut = [[0] * (size + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for k in range(1, n + 1):
        for i in range(k, size + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    starts, i = [], size
    for k in range(n, 0, -1):
        i = cut[k][i]
        starts.append(i)
    return starts[::-1]
