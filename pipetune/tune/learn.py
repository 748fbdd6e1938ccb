"""Learning across trials and jobs without anything added to a script.

:func:`refit_groundtruth` runs in a trial's process when the trial ends, if
its tuner wrote a ground-truth record (a probe winner, or the profile of a
matched trial): it refits the model from every record in the store and
replaces the model file atomically, so the next trial of this job — or of
the next job, from a user's own script as from ``pipetune tune`` — is
matched instead of probing.  Concurrent trial ends of one node take turns
on a lock file beside the model; a refit that fails (store down, too few
records) is logged and simply tried again by the next trial that ends.
"""

from __future__ import annotations

import fcntl
import logging
import time
from pathlib import Path
from typing import Any

from pipetune.config import Settings
from pipetune.errors import PipetuneError

log = logging.getLogger(__name__)


def refit_groundtruth(store: Any, settings: Settings, *, job: str = "") -> bool:
    """Refit ``settings.model`` from ``store``'s ground-truth records.

    Returns True when a new model file was written.  Never raises: the
    trial's training is over, and a refit that could not happen now happens
    at the next trial's end (or with ``pipetune groundtruth retrain``).
    """
    from pipetune.groundtruth import retrain

    model = Path(settings.model)
    t0 = time.monotonic()
    try:
        model.parent.mkdir(parents=True, exist_ok=True)
        with open(str(model) + ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            fitted = retrain(store, model, objective=settings.objective)
    except (PipetuneError, OSError) as e:
        log.info("job %s: ground truth not refit now (%s); the next trial's end retries",
                 job, e)
        return False
    except Exception:  # noqa: BLE001 - a refit bug must not fail a finished trial
        log.exception("job %s: ground-truth refit failed", job)
        return False
    log.info("job %s: ground truth refit in %.2f s: %d clusters from %d records -> %s", job,
             time.monotonic() - t0, fitted.n_clusters, fitted.n_records, model)
    return True
