"""Learning across trials and jobs without anything added to a script.

:func:`refit_groundtruth` runs in a trial's process when the trial ends, if
its tuner wrote a ground-truth record (a probe winner, or the profile of a
matched trial): it refits the model from every record in the store and
replaces the model file atomically, so the next trial of this job — or of
the next job, from a user's own script as from ``pipetune tune`` — is
matched instead of probing.  Concurrent trial ends of one node take turns
on a lock file beside the model.  A refit that cannot happen now is tried
again by the next trial that ends, and by ``PipeTuneCallback`` once a store
that was down answers again; a model file pipetune cannot read is never
replaced (the user's file is kept and the reason said once).
"""

from __future__ import annotations

import enum
import fcntl
import logging
import threading
import time
from pathlib import Path
from typing import Any

from pipetune.errors import PipetuneError, StoreError

log = logging.getLogger(__name__)

_said_lock = threading.Lock()
_said: set[str] = set()


class Refit(str, enum.Enum):
    """How a refit ended."""

    DONE = "done"
    STORE_DOWN = "store-down"  # records are safe (spooled); retry when it answers
    REFUSED = "refused"  # the model file cannot be read: kept, never replaced
    FAILED = "failed"  # too few records, nothing in common ...


def refit_groundtruth(store: Any, model: str | Path, *, objective: str = "runtime",
                      job: str = "") -> Refit:
    """Refit the model file ``model`` from ``store``'s ground-truth records.

    Never raises: the trial's training is over, and a refit that could not
    happen now happens at the next trial's end (or with ``pipetune
    groundtruth retrain``).
    """
    from pipetune.groundtruth import ModelFileError, retrain

    path = Path(model)
    t0 = time.monotonic()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(str(path) + ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            fitted = retrain(store, path, objective=objective)
    except StoreError as e:
        log.info("job %s: ground truth not refit now, the store is down (%s)", job, e)
        return Refit.STORE_DOWN
    except ModelFileError as e:
        # The user's file is kept; say so once per process, not after every trial.
        with _said_lock:
            said = str(e) in _said
            _said.add(str(e))
        log.log(logging.DEBUG if said else logging.WARNING,
                "job %s: ground truth not refit: %s", job, e)
        return Refit.REFUSED
    except (PipetuneError, OSError) as e:
        log.info("job %s: ground truth not refit now (%s); the next trial's end retries",
                 job, e)
        return Refit.FAILED
    except Exception:  # noqa: BLE001 - a refit bug must not fail a finished trial
        log.exception("job %s: ground-truth refit failed", job)
        return Refit.FAILED
    log.info("job %s: ground truth refit in %.2f s: %d clusters from %d records -> %s", job,
             time.monotonic() - t0, fitted.n_clusters, fitted.n_records, path)
    return Refit.DONE
