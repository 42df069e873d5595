"""Train and audit your own model on your own data, then review both in the dashboard.

Your data is an .npz with x_train, y_train, x_test, y_test; your model is a function
``(num_classes, in_channels, image_size) -> nn.Module`` that dpplat imports by the path
``module:function``, in every process it starts. Here the "own data" is a five-digit slice
of MNIST, cropped to 20x20 and saved the way you would save your arrays; replace
``save_your_data`` with your own.

    python examples/your_model_and_data.py --epsilon 4 --epochs 3
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from torch import nn

from dpplat.audits.mia import MIAConfig, format_report
from dpplat.audits.plans import run_and_store
from dpplat.data import load_arrays
from dpplat.store import RunStore
from dpplat.training import TrainConfig, train

# dpplat imports the model by name: a module is found when its folder is on sys.path (the
# current folder counts when you run `dpplat` from it).
sys.path.insert(0, str(Path(__file__).resolve().parent))
MODEL = f"{Path(__file__).stem}:small_cnn"


def small_cnn(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Two convolutions with GroupNorm (BatchNorm mixes samples, so DP-SGD refuses it) and a linear head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.Tanh(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(32 * 16, num_classes),
    )


def save_your_data(path: Path, train: int, test: int) -> Path:
    """Stand-in for your own arrays: digits 0-4 of MNIST, 20x20, uint8, channels last."""
    mnist = load_arrays("mnist")
    arrays = {}
    for split, n in (("train", train), ("test", test)):
        keep = np.flatnonzero(mnist[f"y_{split}"] < 5)[:n]
        arrays[f"x_{split}"] = mnist[f"x_{split}"][keep][:, 4:24, 4:24, None]
        arrays[f"y_{split}"] = mnist[f"y_{split}"][keep]
    np.savez(path, **arrays)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilon", type=float, default=4.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--audit-models", type=int, default=4)
    parser.add_argument("--folder", default=".", help="where the .npz and the store go")
    args = parser.parse_args(argv)

    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = save_your_data(folder / "your_data.npz", args.train_size, 1000)
    store = RunStore(folder / "dpplat.db")
    recipe = dict(model=MODEL, epochs=args.epochs, batch_size=256, max_grad_norm=1.0, lr=2.0, accountant="rdp")
    result = train(TrainConfig(dataset=str(data), epsilon=args.epsilon, delta=1e-5, **recipe), store=store, quiet=True)
    print(result.statement)
    print(f"Test accuracy {result.accuracy:.2%} on your 5 classes, epsilon {result.epsilon:.3f}; run {result.run_id}")

    audit = MIAConfig(dataset=str(data), epsilon=args.epsilon, delta=1e-5, models=args.audit_models, challenges=64,
                      base_size=min(1000, args.train_size - 64), workers=1, train=TrainConfig(**recipe))
    _, report = run_and_store(audit, store, run_id=result.run_id)
    print(format_report(report))
    print(f"Review both: dpplat dashboard --store {store.path.resolve()}")
    return result, report


if __name__ == "__main__":
    main()
