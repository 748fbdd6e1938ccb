"""Ground-truth model files: versioned JSON, written atomically.

A model file is read by every trial on a node (and, in a cluster, by every
daemon), so it is never a pickle: a file that a non-root user could have
written must not be able to run code.  The format is a JSON object::

    {"format": "pipetune-groundtruth", "schema_version": 1,
     "created": "2026-…Z", "model": {...ClusterGroundTruth.to_dict()...}}

A file with a newer ``schema_version`` is refused with a clear error (never
half-read); old versions stay readable.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipetune.errors import ConfigError, GroundTruthError
from pipetune.groundtruth.base import EmptyGroundTruth, GroundTruth
from pipetune.groundtruth.model import ClusterGroundTruth

FORMAT = "pipetune-groundtruth"
SCHEMA_VERSION = 1


def model_to_json(model: ClusterGroundTruth) -> str:
    doc: dict[str, Any] = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model.to_dict(),
    }
    return json.dumps(doc, indent=1, allow_nan=False)


def save_model(model: ClusterGroundTruth, path: str | Path) -> Path:
    """Write ``model`` to ``path`` atomically (temp file in the same folder,
    fsync, rename): a reader sees the old file or the new one, never half.

    Raises:
        GroundTruthError: the folder cannot be written.
    """
    path = Path(path).expanduser()
    text = model_to_json(model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise GroundTruthError(f"cannot write model {str(path)!r}: {e.strerror or e}") from e
    return path


class ModelFileError(GroundTruthError):
    """A model file exists but cannot be used: unreadable, corrupt, not a
    model, or of a newer schema.  ``reason`` says which, without the path."""

    def __init__(self, path: Path, reason: str, advice: str = "") -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"model {str(path)!r}: {reason}" + (f"; {advice}" if advice else ""))


def load_model(path: str | Path) -> ClusterGroundTruth:
    """Read a model file.

    Raises:
        GroundTruthError: missing.
        ModelFileError: unreadable, corrupt, or written by a newer pipetune
            (the message says which and what to do).
    """
    path = Path(path).expanduser()
    rebuild = "rebuild it with `pipetune groundtruth retrain`"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GroundTruthError(
            f"model {str(path)!r}: no such file (run `pipetune groundtruth retrain`)"
        ) from None
    except UnicodeDecodeError as e:
        raise ModelFileError(path, f"cannot read: not text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ModelFileError(path, f"cannot read: {e.strerror or e}") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFileError(
            path, f"corrupt (not JSON: {e.msg} at line {e.lineno})", rebuild
        ) from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFileError(path, "not a pipetune ground-truth model")
    version = doc.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(path, f"corrupt (schema_version {version!r})", rebuild)
    if version > SCHEMA_VERSION:
        raise ModelFileError(
            path,
            f"schema version {version} is newer than this pipetune reads ({SCHEMA_VERSION})",
            "upgrade pipetune or retrain the model",
        )
    try:
        return ClusterGroundTruth.from_dict(doc["model"])
    except (KeyError, TypeError, ValueError, ConfigError, GroundTruthError) as e:
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise ModelFileError(path, f"corrupt ({detail})", rebuild) from e


def check_overwritable(path: str | Path) -> None:
    """Refuse to replace a file at ``path`` that is not a model this
    pipetune reads: a truncated or binary file, another program's file, a
    newer pipetune's model.  It may be the user's only copy; a refit must
    not silently turn it into something else.  No file, or a readable model
    (an older refit), may be replaced.

    Raises:
        ModelFileError: the file is there and cannot be read as a model; the
            message says why and how to go on.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise ModelFileError(p, "is a folder, not a model file")
    if not p.exists():
        return
    try:
        load_model(p)
    except ModelFileError as e:
        raise ModelFileError(
            p,
            e.reason,
            "kept as it is, not overwritten: move it away (or retrain with --force) "
            "to write a new model there",
        ) from e


def load_or_empty(path: str | Path | None) -> tuple[GroundTruth, str]:
    """The model at ``path`` or, when there is none or it cannot be used, an
    :class:`EmptyGroundTruth` — with a line saying which and why.  This is the
    tuner's warm start: a bad file makes trials probe, never fail."""
    if path is None or str(path) == "":
        return EmptyGroundTruth("no model file configured"), "no model file configured"
    p = Path(path).expanduser()
    if not p.exists():
        reason = f"no model at {str(p)!r} yet"
        return EmptyGroundTruth(reason), reason
    try:
        model = load_model(p)
    except GroundTruthError as e:
        return EmptyGroundTruth(str(e)), str(e)
    return model, f"loaded {model.n_clusters} clusters from {str(p)!r}"
