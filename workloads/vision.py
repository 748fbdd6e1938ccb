"""Type I workloads: one model (LeNet-5), different image data (MNIST, Fashion-MNIST).

``deepcnn-mnist`` is a deeper sequential CNN on the same data, used by
``benchmarks/parallel.py`` to compare strategies on a model whose layers are
worth spreading over partitions.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

from workloads import data
from workloads.base import TorchWorkload

_IMAGE_HPARAMS: dict[str, Any] = {
    "batch_size": 64,
    "lr": 0.05,
    "momentum": 0.9,
    "optimizer": "sgd",
    "dropout": 0.0,
    # 0 = every training sample; a smaller number makes tests and probes short.
    "max_train_samples": 0,
}


class LeNet5MNIST(TorchWorkload):
    """LeNet-5 (conv 6, pool, conv 16, pool, 120, 84, 10) on 28x28 digits."""

    name = "lenet5-mnist"
    kind = "I"
    hyperparameters: ClassVar[dict[str, Any]] = dict(_IMAGE_HPARAMS)

    def load_data(self):  # noqa: ANN201 - see base
        *arrays, self.data_source = data.load_mnist(self.data_dir)
        return tuple(arrays)

    def build_model(self):  # noqa: ANN201
        from torch import nn

        return nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, 6, 5, padding=2)),
            ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(6, 16, 5)),
            ("relu2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(16 * 5 * 5, 120)),
            ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(120, 84)),
            ("relu4", nn.ReLU()),
            ("drop", nn.Dropout(self.hparams["dropout"])),
            ("fc3", nn.Linear(84, 10)),
        ]))


class LeNet5Fashion(LeNet5MNIST):
    """The same LeNet-5 on Fashion-MNIST (Type I: same model, other data)."""

    name = "lenet5-fashion"

    def load_data(self):  # noqa: ANN201
        *arrays, self.data_source = data.load_fashion_mnist(self.data_dir)
        return tuple(arrays)


class DeepCNNMNIST(LeNet5MNIST):
    """A deeper plain sequential CNN (6 conv layers, 3 linear) on MNIST."""

    name = "deepcnn-mnist"
    hyperparameters: ClassVar[dict[str, Any]] = {**_IMAGE_HPARAMS, "optimizer": "adam", "lr": 0.001,
                                                 "width": 32}

    def build_model(self):  # noqa: ANN201
        from torch import nn

        w = int(self.hparams["width"])
        layers: list[tuple[str, nn.Module]] = []
        chans = [1, w, w, 2 * w, 2 * w, 4 * w, 4 * w]
        for i in range(6):
            layers.append((f"conv{i + 1}", nn.Conv2d(chans[i], chans[i + 1], 3, padding=1)))
            layers.append((f"relu{i + 1}", nn.ReLU()))
            if i % 2 == 1:
                layers.append((f"pool{i // 2 + 1}", nn.MaxPool2d(2)))
        # 28 -> 14 -> 7 -> 3
        layers += [
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(4 * w * 3 * 3, 256)),
            ("relu_fc1", nn.ReLU()),
            ("fc2", nn.Linear(256, 128)),
            ("relu_fc2", nn.ReLU()),
            ("drop", nn.Dropout(self.hparams["dropout"])),
            ("fc3", nn.Linear(128, 10)),
        ]
        return nn.Sequential(OrderedDict(layers))
