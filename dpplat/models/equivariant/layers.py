"""Group convolutions (lifting and group-to-group), field-wise GroupNorm and group pooling.

The trainable parameters are the small base filters; the full filter bank of the
equivalent ``nn.Conv2d`` is built from them inside ``forward`` by rotating/flipping
(``expand``), a linear map. That is what makes these models sparse for DP-SGD
(Hölzl, Rueckert & Kaissis 2023): noise grows with the number of parameters, and a
|G|-fold weight sharing divides it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpplat.models.equivariant.groups import PixelGroup, get_group


class _GroupConvBase(nn.Module):
    """Shared geometry: behaves like an ``nn.Conv2d`` with zero padding to the engine's conv helpers."""

    padding_mode = "zeros"
    groups = 1
    dilation = (1, 1)

    def __init__(self, group: str | PixelGroup, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.group = get_group(group) if isinstance(group, str) else group
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = (stride, stride)
        self.padding = (padding, padding)

    def expand(self, weight: torch.Tensor, bias: torch.Tensor | None):
        raise NotImplementedError

    def expanded_shape(self) -> torch.Size:
        return self.expansion_index().shape

    def expansion_index(self) -> torch.Tensor:
        """For each entry of the expanded filter bank, the flat index of the base entry it copies.

        Rotations and flips only move entries, so the expansion is a gather: expanded =
        weight.flatten()[index], and its transpose is a scatter-add (used for per-sample gradients).
        """
        if getattr(self, "_index", None) is None or self._index_shape != self.weight.shape:
            base = torch.arange(self.weight.numel()).view(self.weight.shape)
            self._index, self._index_shape = self.expand(base, None)[0], self.weight.shape
        return self._index

    def pull_back(self, expanded: torch.Tensor) -> torch.Tensor:
        """E^T on a batch of expanded-filter gradients (n, *expanded_shape) -> (n, *weight.shape).

        The expansion is a gather, so its transpose is a scatter-add into the base filter's entries.
        """
        index = self.expansion_index().flatten().to(expanded.device)
        n = expanded.shape[0]
        out = expanded.new_zeros(n, self.weight.numel())
        out.scatter_add_(1, index.expand(n, -1), expanded.reshape(n, -1))
        return out.view(n, *self.weight.shape)

    def forward_with(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        index = self.expansion_index().to(weight.device)
        w = weight.reshape(-1)[index]  # the same filter bank as expand(), by one gather
        b = bias.repeat_interleave(self.group.order) if bias is not None else None
        return F.conv2d(x, w, b, self.stride, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with(x, self.weight, self.bias)

    def export(self) -> nn.Conv2d:
        """The equivalent plain ``nn.Conv2d`` (for inference), with identical outputs."""
        w, b = self.expand(self.weight.detach(), self.bias.detach() if self.bias is not None else None)
        conv = nn.Conv2d(w.shape[1], w.shape[0], self.kernel_size, self.stride, self.padding, bias=b is not None,
                         dtype=w.dtype)
        with torch.no_grad():
            conv.weight.copy_(w)
            if b is not None:
                conv.bias.copy_(b)
        return conv


class LiftingConv2d(_GroupConvBase):
    """Image (in_channels) -> group feature maps (out_fields x |G| channels, field-major)."""

    def __init__(self, in_channels: int, out_fields: int, kernel_size: int, group="D4", stride: int = 1,
                 padding: int | None = None, bias: bool = True) -> None:
        super().__init__(group, kernel_size, stride, kernel_size // 2 if padding is None else padding)
        fan_in = in_channels * kernel_size**2
        self.weight = nn.Parameter(torch.randn(out_fields, in_channels, kernel_size, kernel_size) / fan_in**0.5)
        self.bias = nn.Parameter(torch.zeros(out_fields)) if bias else None

    def expand(self, weight, bias):
        G = self.group
        w = torch.stack([G.act(weight, g) for g in range(G.order)], dim=1)  # (O, |G|, C, k, k)
        b = bias.repeat_interleave(G.order) if bias is not None else None
        return w.reshape(-1, *weight.shape[1:]), b


class GroupConv2d(_GroupConvBase):
    """Group maps (in_fields x |G|) -> group maps (out_fields x |G|): W[o,g,i,h] = g·theta[o,i,g^-1 h]."""

    def __init__(self, in_fields: int, out_fields: int, kernel_size: int, group="D4", stride: int = 1,
                 padding: int | None = None, bias: bool = True) -> None:
        super().__init__(group, kernel_size, stride, kernel_size // 2 if padding is None else padding)
        n = self.group.order
        fan_in = in_fields * n * kernel_size**2
        self.weight = nn.Parameter(torch.randn(out_fields, in_fields, n, kernel_size, kernel_size) / fan_in**0.5)
        self.bias = nn.Parameter(torch.zeros(out_fields)) if bias else None

    def expand(self, weight, bias):
        G = self.group
        blocks = []
        for g in range(G.order):
            source = G.cayley[G.inverse[g]]  # h -> g^-1 h
            blocks.append(G.act(weight[:, :, source], g))  # (O, I, |G|, k, k)
        w = torch.stack(blocks, dim=1)  # (O, |G|, I, |G|, k, k)
        O, n, I = w.shape[:3]
        b = bias.repeat_interleave(G.order) if bias is not None else None
        return w.reshape(O * n, I * n, *w.shape[-2:]), b


class FieldGroupNorm(nn.Module):
    """GroupNorm whose groups hold whole fields and whose affine parameters are per field (equivariant).

    ``affine=False`` gives the normalisation alone, as in Hölzl et al.'s models: no parameters, so no
    clipping group of its own, and per-layer clipping's bound is shared by the convolutions alone.
    """

    def __init__(self, num_groups: int, fields: int, group="D4", eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if fields % num_groups:
            raise ValueError(f"num_groups ({num_groups}) must divide the number of fields ({fields}).")
        self.group = get_group(group) if isinstance(group, str) else group
        self.num_groups, self.eps = num_groups, eps
        self.weight = nn.Parameter(torch.ones(fields)) if affine else None
        self.bias = nn.Parameter(torch.zeros(fields)) if affine else None

    def expand(self, weight, bias):
        return weight.repeat_interleave(self.group.order), bias.repeat_interleave(self.group.order)

    def forward_with(self, x, weight, bias):
        w, b = self.expand(weight, bias) if weight is not None else (None, None)
        return F.group_norm(x, self.num_groups, w, b, self.eps)

    def forward(self, x):
        return self.forward_with(x, self.weight, self.bias)


class GroupPool(nn.Module):
    """Max or mean over the group axis: group maps -> ordinary (rotation-invariant per pixel) maps."""

    def __init__(self, group="D4", mode: str = "max") -> None:
        super().__init__()
        self.group = get_group(group) if isinstance(group, str) else group
        if mode not in ("max", "mean"):
            raise ValueError(f"mode must be 'max' or 'mean', got {mode!r}.")
        self.mode = mode

    def forward(self, x):
        y = x.view(x.shape[0], -1, self.group.order, *x.shape[2:])
        return y.amax(2) if self.mode == "max" else y.mean(2)


class OrbitPool(nn.Module):
    """Average a plain feature map over the group's grid transformations, then keep one quadrant.

    The average is invariant to the group acting on the input (the map rotates with it), yet, unlike
    global pooling, it keeps where on the image a feature fired, up to the symmetry. Every orbit of
    pixels under 90-degree turns (and flips) meets the top-left ceil(H/2) x ceil(W/2) block, so that
    block holds all the averaged map's information with a quarter of the entries: a linear head on
    it needs four times fewer weights (and DP-SGD four times less noise) than one on the whole map.
    """

    def __init__(self, group="D4") -> None:
        super().__init__()
        self.group = get_group(group) if isinstance(group, str) else group

    def forward(self, x):
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"OrbitPool needs square feature maps, got {tuple(x.shape[-2:])}.")
        elements = self.group.grid_elements  # C8/D8: their quarter turns (and flips)
        mean = sum(self.group.act(x, g) for g in elements) / len(elements)
        half = (x.shape[-1] + 1) // 2
        return mean[..., :half, :half]


class Restrict(nn.Module):
    """Restrict group maps of ``group`` to its subgroup ``subgroup``: regroup channels into subgroup fields.

    A regular field of G restricted to a subgroup H is |G|/|H| regular fields of H, one per coset
    gH. Reordering the channels so that each coset's channels are contiguous, in the order of H's
    elements, lets the next layers be H-layers with |G|/|H| times as many fields (Hölzl et al.'s
    last stage restricts D4 to C4). For D4 -> C4 the order is already right; C8 -> C4 interleaves.
    """

    def __init__(self, group, subgroup) -> None:
        super().__init__()
        self.group = get_group(group) if isinstance(group, str) else group
        self.subgroup = get_group(subgroup) if isinstance(subgroup, str) else subgroup
        G, H = self.group, self.subgroup
        if G.rotations % H.rotations or (H.reflections and not G.reflections):
            raise ValueError(f"{H.name} is not a subgroup of {G.name}.")
        step = G.rotations // H.rotations
        embed = [G.elements.index((k * step, f)) for k, f in H.elements]  # H's elements inside G
        order, seen = [], set()
        for coset_rep in range(G.order):
            if coset_rep in seen:
                continue
            coset = [int(G.cayley[h, coset_rep]) for h in embed]  # h·g0 for h in H
            seen.update(coset)
            order += coset
        self.register_buffer("order", torch.tensor(order), persistent=False)

    def forward(self, x):
        y = x.view(x.shape[0], -1, self.group.order, *x.shape[2:])[:, :, self.order]
        return y.reshape_as(x)


class InvariantPool(nn.Module):
    """Global average over space (after group pooling: invariant to the group's transformations)."""

    def forward(self, x):
        return x.mean((-2, -1))
