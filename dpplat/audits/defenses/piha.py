"""PIHA (Choi et al. 2023): a perceptual hash of each query; hits are near-duplicate hashes.

The hash follows the reference harness of Feng et al.: Gaussian blur (3x3, sigma 1),
the hue channel of HSV, zero-padding to a multiple of ``block`` and block sums, then a
local binary pattern over the block-sum matrix (8 neighbours at radius 1, zero outside).
A query is a hit when the normalised Hamming distance between its LBP codes and the nearest
stored query's is at most ``threshold`` (0.05). The nearest-hash search is a pigeonhole index
(see ``_parts``), so a lookup costs the same with 50,000 stored queries as with none.

Three adaptations, each checked on 1,000 distinct test images fed into one history:
- The LBP bit tolerates a difference of one level per pixel of the block (``tolerance``):
  with strict comparison, equal block sums (flat background) flip their bits at any change,
  and slightly moved copies of a digit go unnoticed.
- Hue is undefined for a grey pixel and OpenCV writes 0, so every grey image would get the
  same hash: an image with no chroma is hashed on its intensity instead, as are
  one-channel images (MNIST).
- MNIST's large constant background makes 7x7 blocks too coarse, so the one-channel
  defaults are ``block=4`` and ``threshold=0.02``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dpplat.audits.defenses.base import StatefulDefense, register_defense
from dpplat.audits.defenses.postings import PostingLists

_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def _gaussian_kernel(size: int = 3, sigma: float = 1.0) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-r**2 / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def hue(rgb: torch.Tensor) -> torch.Tensor:
    """Hue in degrees [0, 360) of (N, 3, H, W) RGB in [0, 1], as OpenCV computes it for float images."""
    r, g, b = rgb.unbind(1)
    v, _ = rgb.max(1)
    m, _ = rgb.min(1)
    c = v - m
    safe = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.where(v == r, 60 * (g - b) / safe,
                    torch.where(v == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe))
    h = torch.where(c > 0, h, torch.zeros_like(h))
    return torch.where(h < 0, h + 360, h)


def lbp(features: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """8-neighbour local binary pattern codes (N, h, w) of a feature matrix (N, h, w), zero outside.

    A bit is set when the neighbour is at least the centre minus ``tolerance``: with no tolerance,
    flat regions (equal block sums) flip bits at the slightest change.
    """
    padded = F.pad(features, (1, 1, 1, 1))
    h, w = features.shape[1:]
    codes = torch.zeros_like(features, dtype=torch.int64)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        neighbour = padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        codes |= (neighbour >= features - tolerance).long() << bit
    return codes


@register_defense("piha")
class PIHA(StatefulDefense):
    def __init__(self, model, *, input_shape, policy: str = "reject", seed: int = 0, block: int | None = None,
                 threshold: float | None = None, tolerance: float | None = None) -> None:
        super().__init__(model, input_shape=input_shape, policy=policy, seed=seed)
        grey = input_shape[0] == 1
        block = block if block is not None else (4 if grey else 7)
        threshold = threshold if threshold is not None else (0.02 if grey else 0.05)
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold is a normalised Hamming distance in [0, 1), got {threshold}.")
        if not 1 <= block <= max(input_shape[1:]):
            raise ValueError(f"block must be between 1 and the image side {max(input_shape[1:])}, got {block}.")
        self.block, self._threshold = block, threshold
        # one level (intensity 0-255, or hue degree) per pixel of a block
        self.tolerance = float(block * block) if tolerance is None else tolerance
        self.kernel = _gaussian_kernel().view(1, 1, 3, 3)
        self.width = self.perceptual_hash(torch.zeros(1, *input_shape)).shape[1]  # codes per hash
        # a hit differs from a stored hash in at most this many codes (threshold < 1, so fewer than width)
        self.max_mismatches = max(k for k in range(self.width + 1) if k / self.width <= threshold + 1e-12)
        self._positions = self._parts()
        self._clear()

    @property
    def threshold(self) -> float:
        return self._threshold

    def _clear(self) -> None:
        self.hashes = np.empty((0, self.width), dtype=np.uint8)
        self._stored = 0
        self._buckets = [PostingLists() for _ in self._positions]  # one per part: its codes -> query ids

    def perceptual_hash(self, x: torch.Tensor) -> torch.Tensor:
        """LBP codes (N, blocks*blocks) of a batch of images."""
        n, c, height, width = x.shape
        blurred = F.conv2d(F.pad(x.reshape(n * c, 1, height, width).float(), (1, 1, 1, 1), mode="reflect"),
                           self.kernel).reshape(n, c, height, width)
        intensity = blurred.mean(1) * 255.0
        if c == 3:
            chroma = (blurred.amax(1) - blurred.amin(1)).flatten(1).amax(1)
            channel = torch.where((chroma > 0).view(n, 1, 1), hue(blurred), intensity)
        else:
            channel = intensity
        pad_h = self.block - height % self.block  # as the reference: always pads, by a full block if divisible
        pad_w = self.block - width % self.block
        channel = F.pad(channel, (0, pad_w, 0, pad_h))
        sums = F.avg_pool2d(channel.unsqueeze(1), self.block).squeeze(1) * self.block**2
        return lbp(sums, self.tolerance).reshape(n, -1)

    def _digest(self, x: torch.Tensor) -> np.ndarray:
        return self.perceptual_hash(x).numpy().astype(np.uint8)  # 8-neighbour LBP codes fit a byte

    def _parts(self) -> list[np.ndarray]:
        """Code positions of the pigeonhole parts: ``max_mismatches + 1`` interleaved slices.

        A stored hash within ``m`` mismatches of the query differs in at most ``m`` of the
        ``m + 1`` disjoint parts, so it agrees exactly on at least one: looking each part up
        in its own bucket table finds every hit (and only needs the candidates checked).
        Interleaving spreads each part over the whole image, so no part is all background.
        """
        m = self.max_mismatches
        return [np.arange(p, self.width, m + 1) for p in range(m + 1)]

    def _lookup(self, digests, i):
        code = digests[i]
        found = [b.get(code[pos].tobytes()) for b, pos in zip(self._buckets, self._positions)]
        found = [ids for ids in found if ids is not None]
        if not found:
            return False, None
        candidates = np.unique(np.concatenate(found))
        mismatches = (self.hashes[candidates] != code).sum(1)
        j = int(mismatches.argmin())  # ties: the earliest stored query, as a scan would find it
        if mismatches[j] > self.max_mismatches:
            return False, None
        return True, int(candidates[j])

    def _remember(self, digests, i) -> None:
        code = digests[i]
        if self._stored == len(self.hashes):  # grow by doubling: appends stay amortised O(1)
            grown = np.empty((max(64, 2 * len(self.hashes)), self.width), dtype=np.uint8)
            grown[:self._stored] = self.hashes[:self._stored]
            self.hashes = grown
        self.hashes[self._stored] = code
        for bucket, pos in zip(self._buckets, self._positions):
            bucket.add(code[pos].tobytes(), self._stored)
        self._stored += 1
