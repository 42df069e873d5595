"""Group-equivariant layers for DP-SGD (C4, D4) and their engine rules (registered on import)."""

from dpplat.models.equivariant import rules  # noqa: F401  (registers the layers' clipping rules)
from dpplat.models.equivariant.groups import C4, D4, PixelGroup, get_group
from dpplat.models.equivariant.layers import (FieldGroupNorm, GroupConv2d, GroupPool, InvariantPool, LiftingConv2d,
                                              OrbitPool)

__all__ = ["C4", "D4", "FieldGroupNorm", "GroupConv2d", "GroupPool", "InvariantPool", "LiftingConv2d",
           "OrbitPool", "PixelGroup", "get_group"]
