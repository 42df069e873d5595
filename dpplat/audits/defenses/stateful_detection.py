"""Stateful Detection (Chen, Carlini & Wagner 2020): k-nearest-neighbour distance in a learned embedding.

A small CNN maps each query to a 256-d embedding, trained contrastively so that an
image and a lightly perturbed copy land close while different images land apart.
A query is a hit when the mean distance to its ``k`` (50) nearest stored embeddings
is below a threshold, set at the 0.1st percentile of benign images' mean-kNN
distances to the reference set, i.e. about 0.1% false positives on benign traffic.
Before ``k`` queries are stored there is nothing to compare with and no hit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dpplat.audits.defenses.base import StatefulDefense, register_defense
from dpplat.devices import one_thread


class SimilarityEncoder(nn.Module):
    """The detector's encoder: two conv blocks and two dense layers, as in the paper's CIFAR-10 encoder."""

    def __init__(self, in_channels: int, image_size: int, embedding: int = 256) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten())
        with torch.no_grad():
            width = self.features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.head = nn.Sequential(nn.Linear(width, 512), nn.ReLU(), nn.Linear(512, embedding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def perturb(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The positives of contrastive training: a small shift, brightness change and pixel noise."""
    n = len(x)
    shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
    out = torch.roll(x, shifts=shift, dims=(2, 3))
    out = out * (1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5))
    out = out + 0.03 * torch.randn(out.shape, generator=generator)
    return out.clamp(0, 1)


def train_encoder(images: torch.Tensor, *, steps: int = 600, batch_size: int = 128, margin: float = 10.0,
                  seed: int = 0) -> SimilarityEncoder:
    """Contrastive training: pull (image, perturbed image) together, push other images past ``margin``.

    Trained on one thread, so that the detector is a function of the images and the seed alone:
    a convolution's sums are split by thread, and 40 steps on one and on two threads already gave
    different weights, so audits run under different thread counts attacked different detectors.
    """
    with one_thread():
        return _train(images, steps, batch_size, margin, seed)


def _train(images: torch.Tensor, steps: int, batch_size: int, margin: float, seed: int) -> SimilarityEncoder:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    encoder = SimilarityEncoder(images.shape[1], images.shape[2])
    opt = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    for _ in range(steps):
        batch = images[torch.randint(len(images), (batch_size,), generator=generator)]
        anchor, positive = encoder(batch), encoder(perturb(batch, generator))
        negative = positive.roll(1, dims=0)
        loss = (anchor - positive).pow(2).sum(1).mean() + F.relu(margin - (anchor - negative).norm(dim=1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return encoder.eval()


def mean_knn_distance(queries: torch.Tensor, reference: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(queries, reference)
    return d.topk(k, dim=1, largest=False).values.mean(1)


@register_defense("stateful-detection")
class StatefulDetection(StatefulDefense):
    """``reference`` (benign pixel images) trains the encoder and sets the threshold unless both are given.

    ``cache_dir`` keeps the trained encoder and threshold, keyed by the reference images and seed,
    so a later audit does not retrain it.
    """

    def __init__(self, model, *, input_shape, policy: str = "reject", seed: int = 0, k: int = 50,
                 encoder: nn.Module | None = None, threshold: float | None = None,
                 reference: torch.Tensor | None = None, percentile: float = 0.1, encoder_steps: int = 600,
                 cache_dir: str | Path | None = None) -> None:
        super().__init__(model, input_shape=input_shape, policy=policy, seed=seed)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        self.k, self.percentile = k, percentile
        if encoder is None or threshold is None:
            if reference is None or len(reference) < 2 * k + 100:
                raise ValueError("stateful-detection needs benign reference images (at least 2k + 100) to train its "
                                 "encoder and set its threshold; pass reference=..., or encoder= and threshold=.")
            encoder, threshold = self._fit(reference, encoder, encoder_steps, cache_dir)
        self.encoder, self._threshold = encoder.eval(), float(threshold)
        self._clear()

    def _fit(self, reference, encoder, steps, cache_dir):
        key = hashlib.sha256(reference.numpy().tobytes()).hexdigest()[:12]
        path = Path(cache_dir) / f"stateful-detection-{key}-s{self.seed}-k{self.k}-n{steps}.pt" if cache_dir else None
        if encoder is None and path is not None and path.exists():
            saved = torch.load(path, weights_only=False)
            encoder = SimilarityEncoder(*self.input_shape[:2])
            encoder.load_state_dict(saved["encoder"])
            return encoder.eval(), saved["threshold"]
        split = len(reference) // 2
        if encoder is None:
            encoder = train_encoder(reference[:split], steps=steps, seed=self.seed)
        with torch.no_grad():
            stored = self._embed_with(encoder, reference[:split])
            held_out = self._embed_with(encoder, reference[split:])
        threshold = float(np.percentile(mean_knn_distance(held_out, stored, self.k).numpy(), self.percentile))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"encoder": encoder.state_dict(), "threshold": threshold}, path)
        return encoder.eval(), threshold

    @staticmethod
    @torch.no_grad()
    def _embed_with(encoder, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        return torch.cat([encoder(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    @property
    def threshold(self) -> float:
        return self._threshold

    def _clear(self) -> None:
        self.embeddings = torch.empty(0, 256)
        self._stored = 0

    def _digest(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed_with(self.encoder, x)

    def _begin(self, digests) -> None:
        self._to_history = torch.cdist(digests, self.embeddings[:self._stored]) if self._stored else None
        self._history_at_begin = self._stored
        self._added: list[int] = []  # batch positions stored during this batch

    def _lookup(self, digests, i):
        parts = [] if self._to_history is None else [self._to_history[i]]
        if self._added:
            parts.append(torch.cdist(digests[i:i + 1], digests[self._added])[0])
        if not parts:
            return False, None
        d = torch.cat(parts)
        if len(d) < self.k:
            return False, None
        nearest = d.topk(self.k, largest=False)
        hit = bool(nearest.values.mean() < self._threshold)
        return hit, int(nearest.indices[0])

    def _remember(self, digests, i) -> None:
        if self._stored == len(self.embeddings):
            grown = torch.empty(max(256, 2 * len(self.embeddings)), digests.shape[1])
            grown[:self._stored] = self.embeddings[:self._stored]
            self.embeddings = grown
        self.embeddings[self._stored] = digests[i]
        self._stored += 1
        self._added.append(i)
