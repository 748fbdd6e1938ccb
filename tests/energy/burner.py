"""A test process that burns exact amounts of CPU time on command.

Protocol (one line each way, stdout flushed):
  -> "ready"                       once started
  <- "burn X"   -> "burned S"      burn X CPU seconds (S = CPU seconds measured)
  <- "child X"  -> "half" ... "reaped S"
                                   run a child that burns X/2, says "half",
                                   burns X/2 and exits; wait for it and report
                                   the CPU seconds the reaped child used (rusage)
  <- EOF or "quit"                 exit
"""

import resource
import subprocess
import sys
import time


def burn(seconds: float) -> float:
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        pass
    return time.process_time() - t0


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        half = float(sys.argv[2]) / 2
        burn(half)
        print("half", flush=True)
        burn(half)
        return
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "burn":
            print(f"burned {burn(float(arg)):.4f}", flush=True)
        elif cmd == "child":
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, __file__, "--child", arg], check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            print(f"reaped {used:.4f}", flush=True)
        elif cmd == "quit":
            break


if __name__ == "__main__":
    main()
