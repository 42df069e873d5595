"""The zoo's results table: test accuracy at (epsilon, delta = 1e-5), equivariant vs plain models side by side.

    python benchmarks/zoo.py [--dataset mnist] [--epsilon 1] [--epochs 2] [--models cnn,c4-cnn,d4-cnn]

Every model trains with the same recipe (Adam, per-layer clipping, Poisson batches of 512,
PRV accounting) through `dpplat.training.train`, into a temporary store; the table has the
parameter count, the epsilon actually spent, the accuracy and the wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import warnings
from pathlib import Path

from dpplat import models
from dpplat.data import DATASETS
from dpplat.store import RunStore
from dpplat.training import TrainConfig, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default="cnn,c4-cnn,d4-cnn")
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Optimal order")
    info = DATASETS[args.dataset]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, CPU; {args.dataset}, epsilon {args.epsilon}, "
          f"delta 1e-5, {args.epochs} epochs, Adam lr {args.lr}, C {args.max_grad_norm}, batch 512\n")
    print("| model | family | parameters | epsilon spent | test accuracy | wall time (s) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "zoo.db")
        for name in args.models.split(","):
            config = TrainConfig(dataset=args.dataset, model=name, epsilon=args.epsilon, epochs=args.epochs,
                                 batch_size=512, optimizer="adam", lr=args.lr, max_grad_norm=args.max_grad_norm)
            result = train(config, store=store, quiet=True)
            params = models.info(name).parameter_count(in_channels=info.channels, image_size=info.size)
            print(f"| {name} | {models.info(name).family} | {params:,} | {result.epsilon:.3f} | "
                  f"{result.accuracy:.2%} | {result.seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
