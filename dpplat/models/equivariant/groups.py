"""Finite groups acting on the pixel grid: rotations by 90 degrees (C4) and with reflections (D4).

An element is (rotations k, flip f) acting on an image as ``rot90(flip(x) if f else x, k)``.
Composition and inverses are read off the action on an asymmetric pattern, so the Cayley
table is correct by construction rather than by hand-written formulas (Cohen & Welling
2016, "Group Equivariant Convolutional Networks").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class PixelGroup:
    name: str
    elements: tuple[tuple[int, int], ...]  # (quarter turns, flip)

    @property
    def order(self) -> int:
        return len(self.elements)

    def act(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Apply element ``index`` to the last two (spatial) dims of ``x``."""
        k, flip = self.elements[index]
        if flip:
            x = x.flip(-1)
        return torch.rot90(x, k, dims=(-2, -1))

    @cached_property
    def cayley(self) -> torch.Tensor:
        """``cayley[a, b]`` = index of the product a·b (apply b, then a)."""
        pattern = torch.arange(9.0).view(3, 3)
        images = [self.act(pattern, i) for i in range(self.order)]
        table = torch.empty(self.order, self.order, dtype=torch.long)
        for a in range(self.order):
            for b in range(self.order):
                composed = self.act(images[b], a)
                table[a, b] = next(i for i, img in enumerate(images) if torch.equal(img, composed))
        return table

    @cached_property
    def inverse(self) -> torch.Tensor:
        identity = self.elements.index((0, 0))
        return torch.tensor([int((self.cayley[a] == identity).nonzero()) for a in range(self.order)])

    def permute_fields(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """The regular representation on the group axis: channel (o, h) of g·f is channel (o, g^-1 h) of f."""
        fields = x.shape[1] // self.order
        y = x.view(x.shape[0], fields, self.order, *x.shape[2:])
        source = self.cayley[self.inverse[index]]  # h -> g^-1 h
        return y[:, :, source].reshape_as(x)


C4 = PixelGroup("C4", tuple((k, 0) for k in range(4)))
D4 = PixelGroup("D4", tuple((k, f) for f in (0, 1) for k in range(4)))
GROUPS = {"C4": C4, "D4": D4}


def get_group(name: str) -> PixelGroup:
    try:
        return GROUPS[name]
    except KeyError:
        raise ValueError(f"unknown group {name!r}; choose one of {sorted(GROUPS)}.") from None
