"""Gradient canaries for the white-box audit: their directions, their per-step signs and how many to plant.

A canary is a unit direction supported on a few random coordinates of every clipping group, weighted by the
group's clipping bound so that per-group clipping leaves each part at its bound. Its sign flips at every step
by a draw the observer knows. Thousands of canaries share a run; :func:`overlap_variance` says how much their
small overlaps add to one canary's projection, and :func:`default_canaries` plants as many as keep that small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SUPPORT = 64  # coordinates of a canary's direction in each clipping group
CANARY_BLOCK = 256  # canaries made dense and clipped together


@dataclass(frozen=True)
class CanaryDirections:
    """Unit directions, each supported on a few random coordinates per clipping group: (m, K) indices and values.

    A sparse support keeps thousands of canaries cheap to store and to project on; two canaries
    share a coordinate rarely, and then with random signs, so they barely see each other.
    """

    index: torch.Tensor
    value: torch.Tensor
    size: int

    def project(self, vector: torch.Tensor, signs: np.ndarray) -> torch.Tensor:
        """Each direction's inner product with a (size,) vector, times the direction's sign this step."""
        return (vector[self.index] * self.value).sum(dim=1) * torch.from_numpy(signs)

    def dense(self, rows: np.ndarray, signs: np.ndarray) -> torch.Tensor:
        """The chosen directions, each times its sign this step, as dense (k, size) rows."""
        chosen = torch.as_tensor(rows, dtype=torch.long)
        value = self.value[chosen] * torch.from_numpy(signs[rows])[:, None]
        out = torch.zeros(len(rows), self.size, dtype=self.value.dtype)
        return out.scatter_(1, self.index[chosen], value)


def step_signs(rng: np.random.Generator, count: int) -> np.ndarray:
    """A random sign per canary for one step (float32 +-1).

    Every step flips each canary's direction by a fresh sign that the observer knows. Two canaries'
    directions overlap a little; summed over the thousands sampled each step, the overlaps would add
    the same offset to a canary's projection at every step and, over hundreds of steps, swamp its own
    signal. With fresh signs the overlaps average out, and each step's projection is the claimed
    Gaussian plus only independent cross-talk."""
    return np.where(rng.random(count) < 0.5, -1.0, 1.0).astype(np.float32)


def random_supports(count: int, size: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` rows of ``k`` distinct coordinates of ``range(size)``, each row a uniform random k-subset.

    Small groups rank a row of uniform draws (in blocks of rows, so memory stays bounded); large ones
    draw k coordinates with replacement and redraw the rows that repeat one, which keeps every row
    uniform over k-subsets at a cost linear in ``count * k``, so 100,000 canaries take seconds.
    """
    if size <= 4096:
        block = max(1, (1 << 23) // size)
        return torch.cat([torch.rand(min(block, count - start), size, generator=generator).argsort(dim=1)[:, :k]
                          for start in range(0, count, block)])
    index = torch.randint(size, (count, k), generator=generator)
    while True:
        ordered = index.sort(dim=1).values
        repeats = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1).nonzero().flatten()
        if not len(repeats):
            return index
        index[repeats] = torch.randint(size, (len(repeats), k), generator=generator)


def canary_directions(bounds: list[float], sizes: list[int], count: int, generator: torch.Generator,
                      clipping: str) -> CanaryDirections:
    """Per clipping group a random direction on ``SUPPORT`` coordinates, weighted by the group's bound
    (so that after per-group clipping every group's part is at its bound); with flat clipping one random
    direction over the whole gradient. Unit length overall."""
    if clipping == "flat":  # one group: small parameters (biases) are not over-represented
        bounds, sizes, support = [1.0], [sum(sizes)], SUPPORT * len(sizes)
    else:
        support = SUPPORT
    indices, values, offset = [], [], 0
    for bound, size in zip(bounds, sizes):
        k = min(support, size)
        v = torch.randn(count, k, generator=generator)
        v /= v.norm(dim=1, keepdim=True)
        indices.append(random_supports(count, size, k, generator) + offset)
        values.append(v * bound)
        offset += size
    value = torch.cat(values, dim=1)
    value /= value.norm(dim=1, keepdim=True)
    return CanaryDirections(torch.cat(indices, dim=1), value, offset)


CANARY_RANGE = (10_000, 100_000)  # the default number of canaries stays within these
CROSS_TALK = 0.1  # by default the canaries' overlaps add at most this share to the noise's variance


def overlap_variance(sizes: list[int], bounds: list[float], canaries: int, sigma: float, sample_rate: float) -> float:
    """The variance the other canaries add to a canary's projection, in units of the noise's variance.

    Each step samples about q m / 2 canaries, each overlapping every other canary's direction: two random unit
    directions in a group of n values share (v_i . v_j)^2 = 1 / n on average, so the overlaps add
    q m / 2 * sum_g f_g^2 / n_g / sigma^2, f_g being a group's share of a clipped canary's squared length."""
    total = sum(b * b for b in bounds)
    return sample_rate / 2 * canaries * sum((b * b / total) ** 2 / n for b, n in zip(bounds, sizes)) / sigma**2


def default_canaries(model: torch.nn.Module, clipping: str, sigma: float, sample_rate: float) -> int:
    """How many canaries a run plants by default: as many as keep their overlaps (:func:`overlap_variance`) at
    CROSS_TALK of the noise's variance, within CANARY_RANGE. More canaries tighten the one-run bounds, but
    their overlaps grow with their number; small groups (a bias-sized layer) and little noise bound it."""
    sizes = [n for n in (sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
                         for module in model.modules()) if n]
    if clipping == "flat":
        sizes = [sum(sizes)]
    per_canary = overlap_variance(sizes, [1.0] * len(sizes), 1, sigma, sample_rate)
    low, high = CANARY_RANGE
    return int(min(high, max(low, CROSS_TALK / per_canary)))
