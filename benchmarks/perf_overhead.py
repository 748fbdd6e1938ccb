"""What ``perf stat -I 1000`` costs a trial while it samples: epoch times of a
1-thread ``deepcnn-mnist`` trial on one CPU with and without perf attached
(pipetune's default events for this host, perf on the same CPU as the trial,
as it is inside a trial's cpuset), alternated so the host's drift hits both.

    PYTHONPATH=$PWD python benchmarks/perf_overhead.py [--rounds 2] [--epochs 4]

Prints each run's epoch times and the mean of the epochs after the first.
Needs 2 CPUs (the trial and perf run on CPU 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r'''
import json, os, sys, time
os.sched_setaffinity(0, {1})
import torch
torch.set_num_threads(1)
from workloads import get_workload
w = get_workload("deepcnn-mnist")({"max_train_samples": 1024, "batch_size": 64, "lr": 0.001},
                                  seed=0)
print("ready", flush=True)
sys.stdin.readline()
out = []
for e in range(int(sys.argv[1])):
    t = time.perf_counter()
    w.train_epoch(e)
    w.evaluate()
    out.append(time.perf_counter() - t)
print(json.dumps(out), flush=True)
'''


def run(events: tuple[str, ...], epochs: int, with_perf: bool) -> list[float]:
    """One trial's epoch times (perf attached before its first epoch when asked)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(epochs)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=env)
    assert child.stdin is not None and child.stdout is not None
    perf = None
    try:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the trial did not start")
        if with_perf:
            perf = subprocess.Popen(
                ["taskset", "-c", "1", shutil.which("perf") or "perf", "stat", "-I", "1000",
                 "-x", ";", "-e", ",".join(events), "-p", str(child.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        child.stdin.write("\n")
        child.stdin.flush()
        return [float(x) for x in json.loads(child.stdout.readline())]
    finally:
        child.wait(timeout=600)
        if perf is not None:  # only the perf started above, by its handle
            perf.terminate()
            perf.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args(argv)
    from pipetune.profiler.events import available_events

    if len(os.sched_getaffinity(0)) < 2:
        p.error("needs 2 CPUs")
    events = available_events().default_events()
    if not events:
        p.error("perf cannot be used on this host")
    print(f"{len(events)} events: {','.join(events)}")
    means: dict[str, list[float]] = {"none": [], "perf": []}
    for _ in range(args.rounds):
        for with_perf in (False, True):
            times = run(events, args.epochs, with_perf)
            key = "perf" if with_perf else "none"
            rest = times[1:] or times
            means[key].append(sum(rest) / len(rest))
            print(f"{key:5s} " + " ".join(f"{t:.2f}" for t in times) +
                  f"   mean after the first {means[key][-1]:.3f} s", flush=True)
    ratio = (sum(means["perf"]) / len(means["perf"])) / (sum(means["none"]) / len(means["none"]))
    print(f"perf / none: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
