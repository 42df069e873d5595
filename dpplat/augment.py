"""Augmentation multiplicity and weight averaging for DP-SGD (De et al. 2022, "Unlocking High-Accuracy
Differentially Private Image Classification through Scale").

Augmentation multiplicity: each sampled example contributes K randomly augmented views
whose gradients are averaged *before* clipping, so the per-example sensitivity, and the
privacy cost, are unchanged while the gradient signal improves. The K views of one
example sit in consecutive rows, which is what the engine's ``augmentation_multiplicity``
expects. An EMA of the weights is post-processing of the private iterates: free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_views(x: torch.Tensor, views: int, *, pad: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B * views, C, H, W): random translations by up to ``pad`` pixels (and flips)."""
    if views == 1 or x.shape[0] == 0:
        return x
    rows = x.repeat_interleave(views, 0)
    n, _, h, w = rows.shape
    padded = F.pad(rows, (pad, pad, pad, pad), mode="reflect" if pad < min(h, w) else "constant")
    # offsets and flips come from the CPU generator whatever x's device, so a seed gives the same views
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    out = _crop(padded, dy, dx, h, w)
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        out[mask] = out[mask].flip(-1)
    return out


def _crop(padded: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-row crops of size (h, w) at offsets (dy, dx), by two gathers (no Python loop over rows)."""
    n, c = padded.shape[:2]
    rows_index = (dy[:, None] + torch.arange(h, device=dy.device)[None, :]).view(n, 1, h, 1).expand(n, c, h, padded.shape[3])
    cropped_rows = padded.gather(2, rows_index)
    cols_index = (dx[:, None] + torch.arange(w, device=dx.device)[None, :]).view(n, 1, 1, w).expand(n, c, h, w)
    return cropped_rows.gather(3, cols_index)


class WeightEMA:
    """An exponential moving average of a model's weights, kept in a separate plain copy of the model."""

    def __init__(self, model: nn.Module, average: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}.")
        self.decay = decay
        self.model = average
        self.model.load_state_dict(model.state_dict())
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for avg, p in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(p, 1 - self.decay)
        for avg, b in zip(self.model.buffers(), model.buffers()):
            avg.copy_(b)
