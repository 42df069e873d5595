"""The model a defense audit attacks: a trained classifier seen in pixel space [0, 1].

Training normalises inputs by the dataset's mean and std; attacks and defenses work
on raw pixels, so the classifier is wrapped to normalise on the way in.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from dpplat import data as datasets
from dpplat.checkpoints import checkpoint_path, load_run_checkpoint
from dpplat.devices import one_thread
from dpplat.store import RunStore
from dpplat.training import TrainConfig, build_model, fit


class PixelClassifier(nn.Module):
    """``model`` preceded by the dataset's normalisation, so it takes pixels in [0, 1]."""

    def __init__(self, model: nn.Module, dataset: str) -> None:
        super().__init__()
        info = datasets.dataset_info(dataset)
        self.model = model.eval()
        self.register_buffer("mean", torch.tensor(info.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(info.std).view(1, -1, 1, 1))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def pixel_images(dataset: str, split: str, *, subset: int | None = None, seed: int = 0,
                 data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] (N, C, H, W) and labels."""
    ds = datasets.load_dataset(dataset, split, subset=subset, seed=seed, data_dir=data_dir, normalize=False)
    return ds.tensors


def load_run_model(store: RunStore, run_id: int, state: dict | None = None) -> tuple[PixelClassifier, str]:
    """The model a stored training run produced (its EMA weights when it kept them).

    ``state`` is the run's checkpoint when the caller has already read it with :func:`load_run_checkpoint`.
    """
    run = store.get_run(run_id)
    config = TrainConfig.from_stored(run.config)
    if state is None:
        state = load_run_checkpoint(store, run_id)  # checked: this store's, this run's, not older than recorded
    if state is None:
        raise FileNotFoundError(f"run {run_id} has no checkpoint ({checkpoint_path(store, run_id)}); train it again "
                                "or pass --model and --dataset instead of --run.")
    model = build_model(config)
    ema = state.get("extra", {}).get("ema")
    model.load_state_dict(ema if ema is not None else state["module"])
    return PixelClassifier(model, config.dataset), config.dataset


def target_config(dataset: str, model: str = "cnn", *, epochs: int = 2, subset: int | None = 20000, seed: int = 0,
                  data_dir: str | Path | None = None) -> TrainConfig:
    """The recipe of a quickly trained, non-private target: Adam 1e-3, batches of 128, no clipping or noise."""
    return TrainConfig(dataset=dataset, model=model, epochs=epochs, subset=subset, seed=seed, data_dir=data_dir,
                       optimizer="adam", lr=1e-3, batch_size=128, epsilon=None, sigma=0.0)


def fit_target(config: TrainConfig) -> nn.Module:
    """Train a target by its recipe on one CPU thread.

    A convolution's sums are split by thread, so the same recipe trained on one and on two threads
    classifies different test images correctly, and an audit would draw different images to attack;
    one thread makes the target, and with it the audit, the same on every machine.
    """
    train_set = datasets.load_dataset(config.dataset, "train", data_dir=config.data_dir, subset=config.subset,
                                      seed=config.seed)
    with one_thread():
        return fit(config, train_set, private=False)


def train_target(dataset: str, model: str = "cnn", *, epochs: int = 2, subset: int | None = 20000, seed: int = 0,
                 data_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> PixelClassifier:
    """A quickly trained, non-private classifier to put behind a defense (cached by its settings)."""
    config = target_config(dataset, model, epochs=epochs, subset=subset, seed=seed, data_dir=data_dir)
    path = Path(cache_dir) / f"target-{dataset}-{model}-e{epochs}-n{subset}-s{seed}.pt" if cache_dir else None
    if path is not None and path.exists():
        net = build_model(config)
        net.load_state_dict(torch.load(path, map_location="cpu"))
    else:
        net = fit_target(config)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), path)
    return PixelClassifier(net, dataset)
