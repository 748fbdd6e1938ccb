"""Train one bundled workload until ended: the child process the profiling benchmarks watch.

    python benchmarks/bundled_runner.py lenet5-mnist [KEY=VALUE ...]

Builds the workload (imports, data load, model), trains its first step, then
prints ``READY`` on stdout, so a profiler can leave the start-up out, and goes
on training epoch after epoch until it is ended (SIGTERM, by its PID).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    from workloads import get_workload

    hparams = dict(item.split("=", 1) for item in argv[1:])
    wl = get_workload(argv[0])(hparams, seed=0)
    ready = False

    def on_window(step: int) -> None:
        nonlocal ready
        if not ready:
            print("READY", flush=True)
            ready = True

    epoch = 1
    while True:
        wl.train_epoch(epoch, on_window=on_window, window_steps=1)
        epoch += 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
