"""The zoo's results table: test accuracy at (epsilon, delta), equivariant vs plain models side by side.

    python benchmarks/zoo.py --recipes models/mnist-*.toml          # the shipped recipes, as recorded
    python benchmarks/zoo.py --dataset mnist --epsilon 1 --epochs 2 --models cnn,c4-cnn,c8-cnn
                                                                    # one shared recipe for several models
    python benchmarks/zoo.py --recipes models/mnist-cnn-eps1.toml models/mnist-c4-cnn-eps1.toml --seeds 0,1,2
                                                                    # each recipe at three seeds, mean ± std

Every row trains through `dpplat.training.train` into a temporary store (Poisson batches, fused
clipping, PRV accounting); the table has the parameter count, the epsilon actually spent, the test
accuracy, its difference to the plain `cnn` trained in the same run at the same (dataset, epsilon)
when there is one, and the wall time. Flags given with --recipes (e.g. --epochs) override every recipe.
With --seeds, every recipe runs once per seed (seed-for-seed against the cnn), and a second table gives
each recipe's mean ± standard deviation over the seeds, of its accuracy and its wall time.

    python benchmarks/zoo.py --recipes models/mnist-cnn-eps1.toml models/mnist-c4-cnn-eps1.toml --lrs 1e-3,3e-3,1e-2
                                                                    # the learning rate chosen on held-out data

With --lrs, every recipe (at each seed) first trains once per learning rate on the training set less a held-out
share (--validation, default 0.1), keeps the rate with the best held-out accuracy, and then trains with it on the
whole training set; only that last run touches the test set. The held-out accuracies are printed per rate.

    python benchmarks/zoo.py --recipes models/cifar10-*-cpu.toml --curves
                                                                    # test accuracy against wall time, per epoch

With --curves, a further table gives every run's test accuracy at the end of each epoch against the wall time
since the run started (the per-epoch evaluations are part of that time), from the steps the run stored.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import warnings
from pathlib import Path

import torch

from dpplat import models
from dpplat.devices import resolve_device
from dpplat.data import DATASETS
from dpplat.store import RunStore
from dpplat.training import TrainConfig, train


SHARED_RECIPE = {"epsilon": 1.0, "epochs": 2, "batch_size": 512, "lr": 0.003, "max_grad_norm": 1.0}


def configs(args) -> list[tuple[str, TrainConfig]]:
    given = {"epochs": args.epochs, "subset": args.subset, "epsilon": args.epsilon, "batch_size": args.batch_size,
             "lr": args.lr, "max_grad_norm": args.max_grad_norm, "device": args.device}
    given = {key: value for key, value in given.items() if value is not None}
    if args.recipes:  # only the flags given on the command line override a recipe
        return [(Path(p).name, TrainConfig.from_toml(p, **given)) for p in args.recipes]
    shared = {**SHARED_RECIPE, **given}
    return [(f"shared recipe, {name}", TrainConfig(dataset=args.dataset, model=name, optimizer="adam", **shared))
            for name in args.models.split(",")]


def chosen_lr(config: TrainConfig, lrs: str, share: float, store: RunStore) -> tuple[float, dict[float, float]]:
    """The learning rate of ``lrs`` with the best accuracy on a held-out ``share`` of the training set, and the
    held-out accuracy of every rate."""
    held_out = {}
    for lr in (float(value) for value in lrs.split(",")):
        held_out[lr] = train(dataclasses.replace(config, lr=lr, validation=share), store=store, quiet=True).accuracy
    return max(held_out, key=held_out.get), held_out


def curve(store: RunStore, run_id: int) -> list[tuple[int, float, float]]:
    """(step, seconds since the run started, test accuracy) at each evaluation ``run_id`` stored."""
    started = store.get_run(run_id)["started_at"]
    return [(row["step"], row["time"] - started, row["test_accuracy"])
            for row in store.steps(run_id) if row["test_accuracy"] is not None]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="*", help="models/*.toml files to run as they are (overrides below apply)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--epsilon", type=float, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--models", default="cnn,c4-cnn,d4-cnn,c8-cnn")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--max-grad-norm", type=float, default=None)
    parser.add_argument("--subset", type=int, default=None, help="train on this many images (a quick check)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (a GPU when there is one)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds: run every recipe once per seed "
                                                      "(default: each recipe's own seed)")
    parser.add_argument("--lrs", default=None, help="comma-separated learning rates to choose from on held-out data")
    parser.add_argument("--validation", type=float, default=0.1, help="with --lrs: the training share held out")
    parser.add_argument("--curves", action="store_true",
                        help="also print each run's test accuracy against wall time at the end of every epoch")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Optimal order")
    device = resolve_device(args.device or "cpu")
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ", CPU"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}; delta 1e-5\n")
    print("| recipe | dataset | model | family | parameters | seed | epsilon (spent) | epochs, batch | test accuracy "
          "| vs plain cnn | wall time (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    plain: dict[tuple[str, float, int], float] = {}
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [None]
    choices: list[str] = []  # with --lrs: each recipe's held-out accuracy per learning rate
    curves: list[str] = []  # with --curves: a row per run and evaluation
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "zoo.db")
        for label, recipe in configs(args):
            info = DATASETS[recipe.dataset]
            params = models.info(recipe.model).parameter_count(num_classes=len(info.classes),
                                                               in_channels=info.channels, image_size=info.size)
            for seed in seeds:
                config = recipe if seed is None else dataclasses.replace(recipe, seed=seed)
                if args.lrs:
                    lr, held_out = chosen_lr(config, args.lrs, args.validation, store)
                    config = dataclasses.replace(config, lr=lr)
                    choices.append(f"| {label} | {config.model} | {config.seed} | " + " | ".join(
                        f"{accuracy:.2%}" for accuracy in held_out.values()) + f" | {lr:g} |")
                result = train(config, store=store, quiet=True)
                key = (config.dataset, config.epsilon, config.seed)
                if config.model == "cnn":
                    plain[key] = result.accuracy
                delta = ("baseline" if config.model == "cnn" else
                         f"{100 * (result.accuracy - plain[key]):+.2f} pt" if key in plain else "—")
                runs.setdefault((label, config.model), []).append((result.accuracy, result.seconds))
                if args.curves:
                    curves += [f"| {label} | {config.model} | {config.seed} | {step} | {seconds:.0f} | {accuracy:.2%} |"
                               for step, seconds, accuracy in curve(store, result.run_id)]
                print(f"| {label} | {config.dataset} | {config.model} | {models.info(config.model).family} "
                      f"| {params:,} | {config.seed} | {config.epsilon:g} ({result.epsilon:.3f}) "
                      f"| {config.epochs}, {config.batch_size} | {result.accuracy:.2%} | {delta} "
                      f"| {result.seconds:.0f} |", flush=True)
    if choices:
        rates = args.lrs.split(",")
        print(f"\nLearning rates on a held-out {args.validation:g} of the training set:\n\n| recipe | model | seed | "
              + " | ".join(f"lr {rate}" for rate in rates) + " | chosen |\n|---|---|---|" + "---|" * (len(rates) + 1))
        print("\n".join(choices))
    if curves:
        print("\nTest accuracy against wall time, at the end of every epoch:\n\n"
              "| recipe | model | seed | step | wall time (s) | test accuracy |\n|---|---|---|---|---|---|")
        print("\n".join(curves))
    if len(seeds) > 1:
        print(f"\nOver seeds {args.seeds}:\n\n| recipe | model | test accuracy | wall time (s) |\n|---|---|---|---|")
        for (label, model), results in runs.items():
            accuracy, seconds = zip(*results)
            print(f"| {label} | {model} | {100 * statistics.mean(accuracy):.2f} ± {100 * statistics.stdev(accuracy):.2f}% "
                  f"| {statistics.mean(seconds):.0f} ± {statistics.stdev(seconds):.0f} |")


if __name__ == "__main__":
    main()
