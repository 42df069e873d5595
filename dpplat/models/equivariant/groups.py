"""Finite rotation groups C_N and dihedral groups D_N acting on the pixel grid.

An element is (k, f): reflect the image across its vertical axis if f, then rotate by
k * 360/N degrees, the direction of ``torch.rot90(x, 1, dims=(-2, -1))`` (Cohen &
Welling 2016, "Group Equivariant Convolutional Networks"). Elements whose angle is a
multiple of 90 degrees move pixels onto pixels (``act``); the others (C8's and D8's
odd rotations) only act on continuous filters, which is what the steerable layers use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class PixelGroup:
    name: str
    rotations: int  # N
    reflections: bool

    @cached_property
    def elements(self) -> tuple[tuple[int, int], ...]:
        """(rotation steps, flip), rotations fastest: D4 is C4's four elements, then the four reflected ones."""
        return tuple((k, f) for f in ((0, 1) if self.reflections else (0,)) for k in range(self.rotations))

    @property
    def order(self) -> int:
        return len(self.elements)

    def angle(self, index: int) -> float:
        return 2 * math.pi * self.elements[index][0] / self.rotations

    @cached_property
    def grid_elements(self) -> tuple[int, ...]:
        """The elements that map the pixel grid onto itself (quarter turns and flips)."""
        return tuple(i for i, (k, _) in enumerate(self.elements) if (4 * k) % self.rotations == 0)

    @property
    def acts_on_grid(self) -> bool:
        return len(self.grid_elements) == self.order

    def act(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Apply element ``index`` to the last two (spatial) dims of ``x`` (grid elements only)."""
        k, flip = self.elements[index]
        if (4 * k) % self.rotations:
            raise ValueError(f"element {index} of {self.name} rotates by {360 * k / self.rotations:g} degrees, "
                             "which does not map the pixel grid onto itself; use one of grid_elements.")
        if flip:
            x = x.flip(-1)
        return torch.rot90(x, 4 * k // self.rotations, dims=(-2, -1))

    @cached_property
    def cayley(self) -> torch.Tensor:
        """``cayley[a, b]`` = index of the product a·b (apply b, then a).

        R^k1 F^f1 R^k2 F^f2 = R^(k1 ± k2) F^(f1+f2): a reflection reverses the rotations after it."""
        n = self.rotations
        table = torch.empty(self.order, self.order, dtype=torch.long)
        for a, (k1, f1) in enumerate(self.elements):
            for b, (k2, f2) in enumerate(self.elements):
                table[a, b] = self.elements.index(((k1 + (-k2 if f1 else k2)) % n, f1 ^ f2))
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


C2 = PixelGroup("C2", 2, False)  # the half turn: what a head that keeps orientation may still pool over
C4 = PixelGroup("C4", 4, False)
D2 = PixelGroup("D2", 2, True)  # the half turn and the flips: D4's subgroup for the ResNet-9's last stage
D4 = PixelGroup("D4", 4, True)
C8 = PixelGroup("C8", 8, False)
D8 = PixelGroup("D8", 8, True)
GROUPS = {g.name: g for g in (C2, C4, D2, D4, C8, D8)}


def get_group(name: str) -> PixelGroup:
    try:
        return GROUPS[name]
    except KeyError:
        raise ValueError(f"unknown group {name!r}; choose one of {sorted(GROUPS)}.") from None
