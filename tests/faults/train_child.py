"""A user-style training loop whose controller is the node daemon's.

    python train_child.py SOCKET TRIAL_ID GATE_DIR EPOCHS

Prints one JSON line per epoch (what went to "Tune").  Before epoch 2 it
waits for GATE_DIR/go1 (the test kills the daemon meanwhile), before epoch
4 for GATE_DIR/go2 (the test starts the next daemon meanwhile); after the
last epoch it waits for GATE_DIR/go3 before closing its session and exiting.  Exits 0 when training
finished.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from pipetune.daemon import daemon_controller
from pipetune.policy import FixedPolicy
from pipetune.tune.session import TrialSession
from pipetune.types import SystemConfig, TrialRef


def wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"gate {path} never opened")
        time.sleep(0.02)


def main() -> int:
    socket_path, trial_id, gate, epochs = sys.argv[1], sys.argv[2], Path(sys.argv[3]), \
        int(sys.argv[4])
    ref = TrialRef(job="sigkill-job", trial=trial_id, node="test")
    controller = daemon_controller(socket_path=socket_path, job=ref.job)
    if controller is None:
        print(json.dumps({"error": "no daemon"}), flush=True)
        return 3
    policy = FixedPolicy(SystemConfig(1), trial_id=trial_id, controller=controller, phase="v1")

    def report(out: dict) -> None:
        print(json.dumps(out), flush=True)

    session = TrialSession(ref, policy, report_fn=report).start()
    x = 0.0
    for epoch in range(epochs):
        if epoch in (2, 4):
            wait_for(gate / f"go{epoch // 2}")
        for i in range(20000):  # the "training"
            x += (i % 7) * 1e-6
        session.report({"loss": 1.0 / (epoch + 1), "pid": os.getpid()}, steps=20000)
    # The trial stays open until the test has looked at it (go3): closing
    # first raced the test's look at the daemon's trials.
    wait_for(gate / "go3")
    session.close()
    print(json.dumps({"done": True, "x": x}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
