"""Blacklight (Li et al., USENIX Security 2022): detect queries that share many window hashes.

Each query is quantised (a random per-pixel salt, then steps of ``quantization`` on
0-255), flattened, cut into every window of ``window`` values, and each window hashed;
the ``top_k`` largest distinct hashes are the query's fingerprint. A query is a hit
when ``match_threshold`` or more of its hashes are in one stored query's fingerprint,
found through an inverted index hash -> query ids.

``hash="fast"`` (the default) hashes every window of a batch at once: a window of quantised
levels is encoded exactly as an integer in base ``levels``, then scrambled by a keyed 64-bit
bijection, so "the top k hashes" is a pseudo-random choice of windows, as SHA-256 ordering is,
and two windows share a hash only if they are identical. ``hash="sha256"`` is the paper's
construction, window by window in Python. With ``ignore_blank=True`` windows that quantise as an
all-black image's do are left out of the fingerprint: MNIST's background is 0 in every image, so
those windows are shared by all images and flag most distinct test images; natural images have
almost none. The false-positive rates are in ``benchmarks/README.md`` (defense throughput).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from dpplat.audits.defenses.base import StatefulDefense, register_defense
from dpplat.audits.defenses.postings import PostingLists

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _scramble(z: np.ndarray, key: np.uint64) -> np.ndarray:
    """SplitMix64's finaliser, a bijection on 64-bit integers, keyed by xor."""
    z = z ^ key
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@register_defense("blacklight")
class Blacklight(StatefulDefense):
    """Window-hash fingerprints; defaults are the paper's CIFAR-10 settings (MNIST: ``window=10``)."""

    def __init__(self, model, *, input_shape, policy: str = "reject", seed: int = 0, window: int | None = None,
                 quantization: int = 50, top_k: int = 50, match_threshold: int = 25, salt: bool = True,
                 hash: str = "fast", ignore_blank: bool = True) -> None:
        super().__init__(model, input_shape=input_shape, policy=policy, seed=seed)
        size = int(np.prod(input_shape))
        self.window = window if window is not None else (10 if input_shape[0] == 1 else 20)
        if not 1 <= self.window <= size:
            raise ValueError(f"window must be between 1 and {size} values, got {self.window}.")
        if not 1 <= quantization <= 255:
            raise ValueError(f"quantization must be a step between 1 and 255 on the 0-255 scale, got {quantization}.")
        if not 1 <= match_threshold <= top_k:
            raise ValueError(f"match_threshold must be between 1 and top_k={top_k}, got {match_threshold}.")
        if hash not in ("fast", "sha256"):
            raise ValueError(f"hash must be 'fast' or 'sha256', got {hash!r}.")
        self.quantization, self.top_k, self.match_threshold = quantization, top_k, match_threshold
        self.use_salt, self.hash, self.ignore_blank = salt, hash, ignore_blank
        self.levels = int(round(255 / quantization)) + 1
        self._clear()

    @property
    def threshold(self) -> float:
        return float(self.match_threshold)

    def _clear(self) -> None:
        size = int(np.prod(self.input_shape))
        self.salt = (self.rng.random(size) * 255).astype(np.float32) if self.use_salt else np.zeros(size, np.float32)
        self.key = np.uint64(self.rng.integers(0, 2**63))
        self._black = self.quantize(torch.zeros(1, *self.input_shape))  # what a black image quantises to (salted)
        self.index = PostingLists()  # window hash -> query ids
        self.count = 0

    def quantize(self, x: torch.Tensor) -> np.ndarray:
        """Salted, quantised levels (N, C*H*W) as small integers, as the paper's preprocessing."""
        flat = x.reshape(len(x), -1).numpy().astype(np.float32) * 255.0
        return np.rint(np.mod(flat + self.salt, 255.0) / self.quantization).astype(np.uint64)

    def _content_windows(self, levels: np.ndarray) -> np.ndarray:
        """(N, windows) True where a window differs from a black image's (all True unless ``ignore_blank``)."""
        n_windows = levels.shape[1] - self.window + 1
        if not self.ignore_blank:
            return np.ones((len(levels), n_windows), dtype=bool)
        lit = np.concatenate([np.zeros((len(levels), 1), np.int64), np.cumsum(levels != self._black, axis=1)], axis=1)
        return lit[:, self.window:] > lit[:, :n_windows]

    def _digest(self, x: torch.Tensor) -> list[np.ndarray]:
        levels = self.quantize(x)
        content = self._content_windows(levels)
        if self.hash == "sha256":
            return [self._sha256_fingerprint(row, keep) for row, keep in zip(levels, content)]
        n_windows = levels.shape[1] - self.window + 1
        code = np.zeros((len(levels), n_windows), dtype=np.uint64)
        base = np.uint64(self.levels)
        for j in range(self.window):  # Horner's rule over the window, all windows and images at once
            code = code * base + levels[:, j:j + n_windows]
        hashed = _scramble(code, self.key)
        return [np.unique(row[keep])[-self.top_k:] for row, keep in zip(hashed, content)]

    def _sha256_fingerprint(self, row: np.ndarray, keep: np.ndarray) -> np.ndarray:
        data = row.astype(np.uint8).tobytes()
        digests = {hashlib.sha256(data[i:i + self.window]).digest()[:8] for i in np.flatnonzero(keep).tolist()}
        return np.array(sorted(int.from_bytes(d, "big") for d in digests)[-self.top_k:], dtype=np.uint64)

    def _lookup(self, digests, i):
        """The stored query sharing the most hashes with query ``i``: one bincount over its posting lists.

        Near-duplicate attack traffic makes some posting lists as long as the history, so they are
        counted in one pass, not walked by a Counter (8x slower here).
        """
        postings = [p for p in map(self.index.get, digests[i].tolist()) if p is not None]
        if len(postings) < self.match_threshold:
            return False, None
        counts = np.bincount(np.concatenate(postings))
        matched = int(counts.argmax())
        return bool(counts[matched] >= self.match_threshold), matched

    def _remember(self, digests, i) -> None:
        for h in digests[i].tolist():
            self.index.add(h, self.count)
        self.count += 1
