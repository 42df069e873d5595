"""Rule for ``nn.Conv1d`` and ``nn.Conv2d`` (any stride, padding and padding mode, dilation, groups).

Per-sample weight gradients come from one grouped ``aten.convolution_backward`` per
chunk of samples: stacking the chunk's samples along the channel axis and using
``groups = samples x groups`` makes the ordinary weight gradient come out per sample,
with the same fast kernels as the non-private backward (far faster on CPU than
``unfold`` + batched matmul). When the output has few positions the ghost norm on
unfolded patches is cheaper for the norms alone, and flat clipping uses it (fastDP's
mixed rule). Per-layer clipping always instantiates, clipping and summing each chunk
while it exists (see :mod:`dpplat.engine.rules.matmul` for why); for flat clipping
the clipped sum is the ordinary weight gradient with each sample's output gradient
scaled by its factor.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dpplat.engine.rules import fused_sum, matmul
from dpplat.engine.rules.registry import LayerRule, RuleContext, clip_factors, register_rule, trainable


def padded_input(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The input and the padding to give the convolution: zero padding stays implicit (no copy)."""
    if module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return x, list(module.padding)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(x, module._reversed_padding_repeated_twice, mode=mode), [0] * len(module.kernel_size)


def weight_grad(module: nn.Module, x: torch.Tensor, padding: list[int], grad: torch.Tensor, weight_shape, groups: int):
    """The weight gradient alone; its kernel never reads the weight, so an uninitialised one stands in."""
    dims = len(module.kernel_size)
    weight = grad.new_empty(weight_shape)
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, list(module.stride), padding, list(module.dilation),
        False, [0] * dims, groups, [False, True, False],
    )[1]


def _use_ghost(module: nn.Module, ctx: RuleContext) -> bool:
    positions = math.prod(ctx.grad_output.shape[2:]) * ctx.views
    patch = module.weight.shape[1] * math.prod(module.kernel_size)
    return matmul.use_ghost_norm(positions, patch, module.weight.shape[0] // module.groups)


def per_sample_weight_grads(
    module: nn.Module, ctx: RuleContext, weight_shape: torch.Size | None = None
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Chunks of per-sample weight gradients, shape (samples, *weight_shape), views summed.

    ``module`` needs a convolution's geometry (kernel_size, stride, padding, dilation, groups,
    padding_mode); layers whose filter is built from other parameters pass ``weight_shape``.
    """
    x, padding = padded_input(module, ctx.x)
    grad = ctx.grad_output
    views = ctx.views
    shape = torch.Size(weight_shape if weight_shape is not None else module.weight.shape)
    per_row = shape.numel()
    samples_per_chunk = max(1, matmul.CHUNK_FLOATS // max(1, per_row * views))
    for start in range(0, ctx.num_samples, samples_per_chunk):
        rows = slice(start * views, min(ctx.num_samples, start + samples_per_chunk) * views)
        n = rows.stop - rows.start
        xs = x[rows].reshape(1, n * x.shape[1], *x.shape[2:])
        gs = grad[rows].reshape(1, n * grad.shape[1], *grad.shape[2:])
        stacked_shape = (n * shape[0], *shape[1:])
        per_row_grads = weight_grad(module, xs, padding, gs, stacked_shape, n * module.groups)
        per_sample = per_row_grads.view(n // views, views, *shape).sum(1)
        yield slice(start, start + n // views), per_sample


def _ghost_weight_norm_sq(module: nn.Module, ctx: RuleContext) -> torch.Tensor:
    """Ghost norm on unfolded patches (Conv1d as a Conv2d of height 1), chunked over samples."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x, grad = F.pad(ctx.x, module._reversed_padding_repeated_twice, mode=mode), ctx.grad_output
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if isinstance(module, nn.Conv1d):
        x, grad = x.unsqueeze(2), grad.unsqueeze(2)
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
    groups, views = module.groups, ctx.views
    out_channels, positions = grad.shape[1], grad.shape[2] * grad.shape[3]
    patch = x.shape[1] * kernel[0] * kernel[1]
    rows_per_chunk = max(views, (matmul.CHUNK_FLOATS // max(1, patch * positions)) // views * views)
    norms = []
    for start in range(0, x.shape[0], rows_per_chunk):
        xs, gs = x[start : start + rows_per_chunk], grad[start : start + rows_per_chunk]
        samples = xs.shape[0] // views
        cols = F.unfold(xs, kernel, dilation=dilation, stride=stride)  # (rows, patch, L)
        # (rows, L, groups, p_g) -> (samples * groups, views * L, p_g)
        A = cols.transpose(1, 2).reshape(samples, views, positions, groups, patch // groups)
        A = A.permute(0, 3, 1, 2, 4).reshape(samples * groups, views * positions, patch // groups)
        G = gs.reshape(samples, views, groups, out_channels // groups, positions)
        G = G.permute(0, 2, 1, 4, 3).reshape(samples * groups, views * positions, out_channels // groups)
        norms.append(matmul.weight_norm_sq(A, G).view(samples, groups).sum(1))
    return torch.cat(norms)


@register_rule(nn.Conv1d, nn.Conv2d)
class ConvRule(LayerRule):
    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        bias = module.bias.detach() if module.bias is not None else None
        return module._conv_forward(x, module.weight.detach(), bias)

    def _bias_per_sample(self, ctx: RuleContext) -> dict[str, torch.Tensor]:
        if not trainable(ctx.module, "bias"):
            return {}
        per_row = ctx.grad_output.flatten(2).sum(2)
        return {"bias": per_row.view(ctx.num_samples, ctx.views, -1).sum(1)}

    def norm_sq(self, ctx: RuleContext) -> torch.Tensor:
        module, small = ctx.module, self._bias_per_sample(ctx)
        if not trainable(module, "weight"):
            return fused_sum.norm_sq_from_chunks([], small, ctx.num_samples, ctx.x)
        if _use_ghost(module, ctx):
            return _ghost_weight_norm_sq(module, ctx) + fused_sum.norm_sq_from_chunks([], small, ctx.num_samples, ctx.x)
        return fused_sum.norm_sq_from_chunks(per_sample_weight_grads(module, ctx), small, ctx.num_samples, ctx.x)

    def clipped_grads(self, ctx: RuleContext, factors: torch.Tensor) -> dict[str, torch.Tensor]:
        module = ctx.module
        row_factors = factors.repeat_interleave(ctx.views)
        scaled = ctx.grad_output * row_factors.view(-1, *([1] * (ctx.grad_output.dim() - 1)))
        grads = {}
        if trainable(module, "weight"):
            x, padding = padded_input(module, ctx.x)
            grads["weight"] = weight_grad(module, x, padding, scaled, module.weight.shape, module.groups)
        if trainable(module, "bias"):
            grads["bias"] = scaled.flatten(2).sum((0, 2))
        return grads

    def clipped_grads_per_layer(self, ctx: RuleContext, bound: float) -> dict[str, torch.Tensor]:
        module = ctx.module
        if not trainable(module, "weight"):
            return self.clipped_grads(ctx, clip_factors(self.norm_sq(ctx), bound))
        return fused_sum.clip_and_sum(
            per_sample_weight_grads(module, ctx), "weight", module.weight.shape,
            self._bias_per_sample(ctx), bound, ctx.x,
        )
