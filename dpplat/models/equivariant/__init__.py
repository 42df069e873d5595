"""Group-equivariant layers for DP-SGD (C4, D4 on the pixel grid; C8, D8 steerable) and their engine rules."""

from dpplat.models.equivariant import rules  # noqa: F401  (registers the layers' clipping rules)
from dpplat.models.equivariant.groups import C4, C8, D4, D8, PixelGroup, get_group
from dpplat.models.equivariant.layers import (FieldGroupNorm, GroupConv2d, GroupPool, InvariantPool, LiftingConv2d,
                                              OrbitPool, Restrict)
from dpplat.models.equivariant.steerable import (SteerableGroupConv2d, SteerableLiftingConv2d, group_conv,
                                                 lifting_conv, sampled_basis)

__all__ = ["C4", "C8", "D4", "D8", "FieldGroupNorm", "GroupConv2d", "GroupPool", "InvariantPool", "LiftingConv2d",
           "OrbitPool", "PixelGroup", "Restrict", "SteerableGroupConv2d", "SteerableLiftingConv2d", "get_group",
           "group_conv", "lifting_conv", "sampled_basis"]
