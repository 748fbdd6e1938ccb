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


def load_model(path: str | Path) -> ClusterGroundTruth:
    """Read a model file.

    Raises:
        GroundTruthError: missing, unreadable, corrupt, or written by a newer
            pipetune (the message says which and what to do).
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GroundTruthError(
            f"model {str(path)!r}: no such file (run `pipetune groundtruth retrain`)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise GroundTruthError(f"model {str(path)!r}: cannot read: {e}") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise GroundTruthError(
            f"model {str(path)!r}: corrupt (not JSON: {e.msg} at line {e.lineno}); "
            "rebuild it with `pipetune groundtruth retrain`"
        ) from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GroundTruthError(f"model {str(path)!r}: not a pipetune ground-truth model")
    version = doc.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise GroundTruthError(f"model {str(path)!r}: corrupt (schema_version {version!r})")
    if version > SCHEMA_VERSION:
        raise GroundTruthError(
            f"model {str(path)!r}: schema version {version} is newer than this pipetune "
            f"reads ({SCHEMA_VERSION}); upgrade pipetune or retrain the model"
        )
    try:
        return ClusterGroundTruth.from_dict(doc["model"])
    except (KeyError, TypeError, ValueError, ConfigError, GroundTruthError) as e:
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise GroundTruthError(f"model {str(path)!r}: corrupt ({detail})") from e


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
