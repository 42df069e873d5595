"""Steps per second of `dpplat train` with 1 vs N data-parallel processes on this machine.

    python benchmarks/distributed.py [--nproc 2] [--model cnn] [--subset 16384]

Both runs train the same model with the same global Poisson sample size (batch 512) for one
epoch; the time is the run's wall time in the store (training plus per-epoch evaluation).
On a GPU machine run the same command: each rank then uses NCCL and its own device.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from dpplat.store import RunStore


def timed_run(nproc: int, args, store: Path) -> tuple[int, float]:
    cmd = [str(Path(sys.executable).parent / "dpplat"), "train", "--dataset", "mnist", "--model", args.model,
           "--epsilon", "8", "--epochs", "1", "--batch-size", "512", "--subset", str(args.subset),
           "--test-subset", "500", "--quiet", "--store", str(store), "--nproc", str(nproc)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    run = RunStore(store).runs()[-1]
    return run["steps"], run["finished_at"] - run["started_at"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--subset", type=int, default=16384)
    args = parser.parse_args(argv)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; model {args.model}, MNIST subset {args.subset}\n")
    print("| processes | steps | wall time (s) | steps/s | speed-up |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for nproc in (1, args.nproc):
            steps, seconds = timed_run(nproc, args, Path(tmp) / f"n{nproc}.db")
            rate = steps / seconds
            base = base or rate
            print(f"| {nproc} | {steps} | {seconds:.1f} | {rate:.2f} | {rate / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
