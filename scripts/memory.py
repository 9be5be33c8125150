#!/usr/bin/env python3
"""Shows that kd's memory stays flat over epochs: runs the default job (`kd run`) with 1 and then
5 epochs per phase, each in its own process, and prints each process's peak resident memory and
the difference. Prints figures; asserts nothing. Run through scripts/memory.sh.
"""

import argparse
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KD = os.path.join(REPO, "target", "release", "kd")


def peak_rss_gb(args):
    """Runs `args` and returns its peak resident memory in GB (from wait4's rusage)."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(args)} failed:\n{process.stderr.read().decode()}")
    return usage.ru_maxrss / 1e6  # ru_maxrss is in KB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.path.join(REPO, "data", "mnist"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="kd-memory-")
    peaks = {}
    for epochs in (1, 5):
        out = os.path.join(work, f"run-{epochs}")
        peaks[epochs] = peak_rss_gb([KD, "run", "--data", args.data, "--out", out, "--device", "cpu",
                                     "--teacher-epochs", str(epochs), "--student-epochs", str(epochs),
                                     "--quiet", "--no-plot"])
        print(f"kd run, {epochs} epoch(s) per phase: peak resident memory {peaks[epochs]:.3f} GB")
    change = 100 * (peaks[5] - peaks[1]) / peaks[1]
    print(f"5 epochs against 1: {change:+.1f}%")


if __name__ == "__main__":
    main()
