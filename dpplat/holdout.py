"""A validation split: a seeded share of the training set held out, to choose settings without the test set.

Trying learning rates (or models) and keeping the one with the best test accuracy reports an optimistic test
accuracy; the held-out share is what the choice should be made on, with the test set touched once, by the
choice. The held-out examples are not trained on, so the privacy guarantee covers the rest: N shrinks by them.
Choosing settings on them does use them, outside the DP guarantee, as every hyper-parameter search does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset


def hold_out(train_set: TensorDataset, share: float, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """``train_set`` split into (what is trained on, the held-out share), by a permutation seeded with ``seed``."""
    n = len(train_set)
    held = int(round(share * n))
    if not 0 < held < n:
        raise ValueError(f"a validation share of {share:g} of {n} training examples holds out {held}; give a share "
                         f"that keeps at least one example on each side.")
    order = torch.from_numpy(np.random.default_rng(seed + 7).permutation(n))
    tensors = train_set.tensors
    return (TensorDataset(*(t[order[held:]] for t in tensors)), TensorDataset(*(t[order[:held]] for t in tensors)))


def evaluated_on(config) -> str:
    """Which split a run's accuracy is measured on: "validation" with a held-out share, else "test"."""
    return "validation" if getattr(config, "validation", 0) else "test"
