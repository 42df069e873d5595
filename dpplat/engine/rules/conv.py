"""Rule for ``nn.Conv1d`` and ``nn.Conv2d`` (any stride, padding and padding mode, dilation, groups).

A convolution is a Linear layer applied to unfolded patches, so the per-sample norm
uses :mod:`dpplat.engine.rules.matmul` on ``unfold(x)`` (chunked over samples, so
the unfolded input of the whole batch never exists at once). The clipped sum is the
ordinary weight gradient of the convolution with each sample's output gradient
scaled by its clip factor: one ``aten.convolution_backward`` call, as fast as the
non-private backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpplat.engine.rules import matmul
from dpplat.engine.rules.registry import LayerRule, RuleContext, register_rule, trainable


def _as_2d(module: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    """Padded input, output gradient and conv geometry, with Conv1d seen as a Conv2d of height 1."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if isinstance(module, nn.Conv1d):
        x, grad = x.unsqueeze(2), grad.unsqueeze(2)
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
    return x, grad, kernel, stride, dilation


def _weight_norm_sq(module: nn.Module, ctx: RuleContext) -> torch.Tensor:
    x, grad, kernel, stride, dilation = _as_2d(module, ctx.x, ctx.grad_output)
    groups, views = module.groups, ctx.views
    n = ctx.num_samples
    out_channels = grad.shape[1]
    positions = grad.shape[2] * grad.shape[3]
    patch = x.shape[1] * kernel[0] * kernel[1]
    rows_per_chunk = max(views, (matmul.CHUNK_FLOATS // max(1, patch * positions)) // views * views)
    norms = []
    for start in range(0, x.shape[0], rows_per_chunk):
        xs, gs = x[start : start + rows_per_chunk], grad[start : start + rows_per_chunk]
        rows = xs.shape[0]
        samples = rows // views
        cols = F.unfold(xs, kernel, dilation=dilation, stride=stride)  # (rows, patch, L)
        # (rows, L, groups, p_g) -> (samples * groups, views * L, p_g)
        A = cols.transpose(1, 2).reshape(samples, views, positions, groups, patch // groups)
        A = A.permute(0, 3, 1, 2, 4).reshape(samples * groups, views * positions, patch // groups)
        G = gs.reshape(samples, views, groups, out_channels // groups, positions)
        G = G.permute(0, 2, 1, 4, 3).reshape(samples * groups, views * positions, out_channels // groups)
        norms.append(matmul.weight_norm_sq(A, G).view(samples, groups).sum(1))
    return torch.cat(norms) if norms else ctx.x.new_zeros(n)


@register_rule(nn.Conv1d, nn.Conv2d)
class ConvRule(LayerRule):
    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        bias = module.bias.detach() if module.bias is not None else None
        return module._conv_forward(x, module.weight.detach(), bias)

    def norm_sq(self, ctx: RuleContext) -> torch.Tensor:
        module = ctx.module
        total = ctx.x.new_zeros(ctx.num_samples)
        if trainable(module, "weight"):
            total = total + _weight_norm_sq(module, ctx)
        if trainable(module, "bias"):
            per_sample_bias = ctx.grad_output.flatten(2).sum(2).view(ctx.num_samples, ctx.views, -1).sum(1)
            total = total + per_sample_bias.square().sum(1)
        return total

    def clipped_grads(self, ctx: RuleContext, factors: torch.Tensor) -> dict[str, torch.Tensor]:
        module = ctx.module
        row_factors = factors.repeat_interleave(ctx.views)
        scaled = ctx.grad_output * row_factors.view(-1, *([1] * (ctx.grad_output.dim() - 1)))
        grads = {}
        if trainable(module, "weight"):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(ctx.x, module._reversed_padding_repeated_twice, mode=mode)
            dims = len(module.kernel_size)
            _, grad_weight, _ = torch.ops.aten.convolution_backward(
                scaled, x, module.weight.detach(), None,
                list(module.stride), [0] * dims, list(module.dilation),
                False, [0] * dims, module.groups, [False, True, False],
            )
            grads["weight"] = grad_weight
        if trainable(module, "bias"):
            grads["bias"] = scaled.flatten(2).sum((0, 2))
        return grads
