"""Workloads for the strategy tests, importable by dotted path in spawned workers."""

from __future__ import annotations

from workloads.vision import LeNet5MNIST


class FailsInEpochTwo(LeNet5MNIST):
    """LeNet-5 whose second epoch raises a plain (non-pipetune) error in every worker."""

    name = "fails-in-epoch-two"

    def train_batches(self, epoch: int):  # noqa: ANN201
        if epoch == 2:
            raise RuntimeError("boom in epoch 2")
        return super().train_batches(epoch)
