"""Profiling overhead: epoch time of a small torch training epoch with
sampling on vs off, alternating in one run, ratio printed (goal ≤ 2 % at 1 Hz).

One child process imports torch, builds a small CNN on synthetic MNIST-sized
data and then trains one epoch each time it reads a line on stdin, printing
the epoch's wall time.  The child reports wall and CPU seconds: on this shared, contended 2-core VM
the wall time of an epoch varies by tens of percent from other people's load,
so the CPU time the trial itself used (which includes the kernel work of the
tracepoints firing in its context) is the steadier measure of the overhead
perf puts *on the trial*; wall time also includes perf's and the procfs
reader's competition for the cores.  Each ABBA block gives two on/off ratios;
their mean and a 95 % interval (± 2 standard errors) are printed.

The parent alternates: off, on, on, off, off, on …
(ABBA order, so a drift of the shared machine hits both sides alike); "on"
means a :class:`pipetune.profiler.TrialProfiler` with this host's default
events and the procfs figures is attached to the child for that epoch.

Usage::

    python benchmarks/profiler_overhead.py                 # 1 Hz, 6 pairs
    python benchmarks/profiler_overhead.py --interval-ms 100 --pairs 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pipetune.procs import end_child  # noqa: E402
from pipetune.profiler import TrialProfiler, available_events  # noqa: E402

CHILD = r"""
import sys, time, torch, torch.nn as nn
torch.manual_seed(0)
n = int(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))
x = torch.randn(n, 1, 28, 28); y = torch.randint(0, 10, (n,))
m = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3),
                  nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 5 * 5, 10))
opt = torch.optim.SGD(m.parameters(), lr=0.01)
def epoch():
    for i in range(0, n, 64):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x[i:i + 64]), y[i:i + 64]).backward()
        opt.step()
epoch()  # warm-up
print("READY", flush=True)
for line in sys.stdin:
    t, c = time.perf_counter(), time.process_time()
    epoch()
    print(time.perf_counter() - t, time.process_time() - c, flush=True)
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=10, help="on/off pairs of epochs")
    ap.add_argument("--samples", type=int, default=6144, help="training samples per epoch")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the child")
    ap.add_argument("--interval-ms", type=int, default=1000)
    ap.add_argument("--events", default="default",
                    help="default (this host's default set), software, procfs (no perf), "
                         "or a comma-separated perf event list")
    args = ap.parse_args(argv)

    support = available_events()
    if args.events == "default":
        events = support.default_events()
    elif args.events == "software":
        events = support.software
    elif args.events == "procfs":
        events = ()
    else:
        events = tuple(e.strip() for e in args.events.split(",") if e.strip())
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(args.samples),
                              str(args.threads)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    wall: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    n_samples = 0
    try:
        assert child.stdout is not None and child.stdin is not None
        if child.stdout.readline().strip() != "READY":
            print("child failed to start", file=sys.stderr)
            return 1
        order = [(i % 4) in (1, 2) for i in range(2 * args.pairs)]  # off on on off ...
        print(f"{len(events)} perf events + procfs @ {args.interval_ms} ms, "
              f"{args.samples} samples/epoch, {len(order)} epochs (ABBA)")
        for i, on in enumerate(order):
            tp = None
            if on:
                tp = TrialProfiler([child.pid], interval_ms=args.interval_ms, events=events)
                tp.start()
            child.stdin.write("go\n")
            child.stdin.flush()
            seconds, cpu_s = map(float, child.stdout.readline().split())
            if tp is not None:
                tp.stop()
                n_samples += len(tp.samples)
            wall[on].append(seconds)
            cpu[on].append(cpu_s)
            print(f"  epoch {i:2d} sampling={'on ' if on else 'off'} wall {seconds:.3f} s, "
                  f"cpu {cpu_s:.3f} s", flush=True)
    finally:
        if child.poll() is None:
            child.stdin.close()  # type: ignore[union-attr]
        end_child(child, sig=None, timeout_s=10)
    print(f"\n{n_samples} samples taken while on; {len(wall[True])} epochs per side")
    for title, t in (("wall", wall), ("cpu ", cpu)):
        on_m, off_m = statistics.mean(t[True]), statistics.mean(t[False])
        # Ratios within each ABBA block (off on on off): on-pair / off-pair.
        ratios = [(t[True][2 * b] + t[True][2 * b + 1]) / (t[False][2 * b] + t[False][2 * b + 1])
                  for b in range(len(t[True]) // 2)]
        r_mean = statistics.mean(ratios)
        se = statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else float("nan")
        sd_pct = 100 * statistics.pstdev(t[False]) / off_m
        print(f"{title}: off mean {off_m:.3f} s (sd {sd_pct:.1f} %)"
              f", on mean {on_m:.3f} s; ratio on/off {on_m / off_m:.4f}; per-block ratio "
              f"{r_mean:.4f} ± {2 * se:.4f} (95 %)")
    print("goal: ratio <= 1.02 at 1 Hz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
