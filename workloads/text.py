"""Type II workloads: one data set (20 Newsgroups), different models (CNN, LSTM).

Both models are ``nn.Sequential`` (with two tiny adapter layers), so every
parallel strategy applies to them as it does to LeNet-5.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

from workloads import data
from workloads.base import TorchWorkload

_TEXT_HPARAMS: dict[str, Any] = {
    "batch_size": 32,
    "lr": 0.002,
    "optimizer": "adam",
    "momentum": 0.9,
    "dropout": 0.2,
    "embed_dim": 64,
    "vocab_size": 5000,
    "seq_len": 100,
    "max_train_samples": 0,
}


def _adapters():  # noqa: ANN202 - nn classes are made lazily so torch loads only when used
    from torch import nn

    class ChannelsFirst(nn.Module):
        """(batch, seq, emb) -> (batch, emb, seq) for Conv1d."""

        def forward(self, x):  # noqa: ANN001, ANN201
            return x.transpose(1, 2)

    class LastHidden(nn.Module):
        """An LSTM whose output is its last layer's final hidden state."""

        def __init__(self, input_size: int, hidden_size: int) -> None:
            super().__init__()
            self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

        def forward(self, x):  # noqa: ANN001, ANN201
            _, (h, _) = self.lstm(x)
            return h[-1].contiguous()  # pipelining sends it as is

    return ChannelsFirst, LastHidden


class _News20(TorchWorkload):
    kind = "II"
    hyperparameters: ClassVar[dict[str, Any]] = dict(_TEXT_HPARAMS)

    def load_data(self):  # noqa: ANN201
        *arrays, self.data_source = data.load_news20(
            self.data_dir, vocab_size=self.hparams["vocab_size"],
            seq_len=self.hparams["seq_len"], seed=self.seed,
        )
        return tuple(arrays)


class CNNNews20(_News20):
    """Embedding -> Conv1d (kernel 5) -> global max pool -> linear, Kim-style."""

    name = "cnn-news20"
    hyperparameters: ClassVar[dict[str, Any]] = {**_TEXT_HPARAMS, "filters": 128}

    def build_model(self):  # noqa: ANN201
        from torch import nn

        channels_first, _ = _adapters()
        e, f = self.hparams["embed_dim"], self.hparams["filters"]
        return nn.Sequential(OrderedDict([
            ("embed", nn.Embedding(self.hparams["vocab_size"], e, padding_idx=0)),
            ("transpose", channels_first()),
            ("conv", nn.Conv1d(e, f, 5, padding=2)),
            ("relu", nn.ReLU()),
            ("pool", nn.AdaptiveMaxPool1d(1)),
            ("flatten", nn.Flatten()),
            ("drop", nn.Dropout(self.hparams["dropout"])),
            ("fc", nn.Linear(f, 20)),
        ]))


class LSTMNews20(_News20):
    """Embedding -> LSTM -> final hidden state -> linear."""

    name = "lstm-news20"
    hyperparameters: ClassVar[dict[str, Any]] = {**_TEXT_HPARAMS, "hidden_size": 64,
                                                 "seq_len": 60}

    def build_model(self):  # noqa: ANN201
        from torch import nn

        _, last_hidden = _adapters()
        e, h = self.hparams["embed_dim"], self.hparams["hidden_size"]
        return nn.Sequential(OrderedDict([
            ("embed", nn.Embedding(self.hparams["vocab_size"], e, padding_idx=0)),
            ("lstm", last_hidden(e, h)),
            ("drop", nn.Dropout(self.hparams["dropout"])),
            ("fc", nn.Linear(h, 20)),
        ]))
