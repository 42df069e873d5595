"""Training a model whose stem is fixed: the stem runs once per image, the engine sees only the head.

A ``FixedStemClassifier`` (the ScatterNets) has a parameter-free, deterministic stem, so its
output is a fixed function of each image: computing it once and training the head on the cached
features changes nothing about privacy and saves the stem's cost every step. A ``DataNorm`` or
``DataCentering`` at the head's start needs statistics of those features, released privately before training.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpplat.devices import model_device
from dpplat.engine import PrivacyEngine
from dpplat.engine.statistics import private_channel_moments, private_mean
from dpplat.models.scatnet import DataCentering, DataNorm, FixedStemClassifier

if TYPE_CHECKING:
    from dpplat.training import TrainConfig


def fixed_stem(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module | None:
    """The model's parameter-free stem when training may compute it once per image instead of every step.

    Not with augmentation multiplicity: each step draws new views, and the stem must see them.
    """
    if isinstance(model, FixedStemClassifier) and config.augmult == 1:
        return model.stem
    return None


@torch.no_grad()
def stem_features(stem: torch.nn.Module, dataset, batch_size: int = 1024) -> TensorDataset:
    """The stem's output for every image of ``dataset``, with its labels, on the CPU (computed where the stem is)."""
    device = model_device(stem)
    features, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        features.append(stem(x.to(device)).cpu())
        labels.append(y)
    return TensorDataset(torch.cat(features), torch.cat(labels))


def trained_part(model: torch.nn.Module, stem: torch.nn.Module | None) -> torch.nn.Module:
    """What the optimizer and the engine see: the head behind a cached stem, else the whole model.

    The head is wrapped under the name ``head`` so that checkpoints carry the whole model's keys
    (the stem stores nothing) and load back into ``build_model(config)``.
    """
    return nn.Sequential(OrderedDict(head=model.head)) if stem is not None else model


def release_feature_statistics(model: torch.nn.Module, train_set, config: TrainConfig, engine: PrivacyEngine) -> None:
    """Fill the model's ``DataNorm`` or ``DataCentering`` with privately released statistics of the training
    features, and charge the engine for the release before it calibrates the DP-SGD noise. No-op for other
    models. Both releases use ``config.data_norm_noise``; ``DataNorm`` clips at ``config.data_norm_clip``,
    ``DataCentering`` at its own public bound on a feature vector's norm.

    ``train_set`` is what the trained part sees: the stem's cached features, or the images when the
    stem runs every step (augmentation multiplicity), whose features are then computed once here.
    """
    layers = [m for m in model.modules() if isinstance(m, (DataNorm, DataCentering))]
    if not layers:
        return
    if len(layers) > 1 or not isinstance(model, FixedStemClassifier) or model.head[0] is not layers[0]:
        raise ValueError(f"{type(layers[0]).__name__} is supported as the first layer of a fixed-stem model's head only.")
    layer = layers[0]
    features = train_set if fixed_stem(model, config) is not None else stem_features(model.stem, train_set)
    generator = None if config.secure_mode else torch.Generator().manual_seed(config.seed + 3)
    private = dict(noise_multiplier=config.data_norm_noise, secure=config.secure_mode, generator=generator)
    if isinstance(layer, DataNorm):
        release = private_channel_moments(features.tensors[0], clip=config.data_norm_clip, **private)
        stats, fill = [release.mean, release.var], layer.set_statistics
    else:
        release = private_mean(features.tensors[0], clip=layer.clip, **private)
        stats, fill = [release.mean], layer.set_mean
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for stat in stats:  # one release for all ranks (secure mode draws per process)
            torch.distributed.broadcast(stat, src=0)
    fill(*stats)
    engine.record_release(*release.accountant_entry())
