"""A plain per-sample loop in float64: the reference every clipping rule is checked against."""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from dpplat.engine import DPModule


def row_losses(out: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A nonlinear per-row loss so that gradients depend on the output, not only the input."""
    return (torch.tanh(out) * weights[: out.shape[0]]).flatten(1).sum(1)


def per_sample_grads(model: nn.Module, x: torch.Tensor, weights: torch.Tensor, views: int = 1) -> dict[str, torch.Tensor]:
    """Gradient of each sample's loss (the mean over its ``views`` rows), one sample at a time."""
    n = x.shape[0] // views
    grads: dict[str, list[torch.Tensor]] = {name: [] for name, p in model.named_parameters() if p.requires_grad}
    for i in range(n):
        model.zero_grad()
        rows = slice(i * views, (i + 1) * views)
        loss = row_losses(model(x[rows]), weights[rows]).mean()
        loss.backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                grads[name].append(p.grad.clone() if p.grad is not None else torch.zeros_like(p))
    return {name: torch.stack(g) if g else torch.zeros(0) for name, g in grads.items()}


def expected_clipped_sum(
    model: nn.Module, x: torch.Tensor, weights: torch.Tensor, bounds: dict[str, float] | float, views: int = 1
) -> dict[str, torch.Tensor]:
    """``sum_i min(1, C_l / ||g_{i,l}||) g_{i,l}`` per group l (a module's parameters); a float means flat."""
    grads = per_sample_grads(model, x, weights, views)
    n = x.shape[0] // views
    group_of = {name: name.rsplit(".", 1)[0] if "." in name else "<root>" for name in grads}
    if isinstance(bounds, dict):
        out = {}
        for group, bound in bounds.items():
            names = [name for name in grads if group_of[name] == group]
            norm = torch.sqrt(sum(grads[name].reshape(n, -1).square().sum(1) for name in names))
            factor = torch.clamp(bound / norm, max=1.0)
            for name in names:
                out[name] = torch.einsum("n,n...->...", factor, grads[name])
        return out
    norm = torch.sqrt(sum(g.reshape(n, -1).square().sum(1) for g in grads.values()))
    factor = torch.clamp(bounds / norm, max=1.0)
    return {name: torch.einsum("n,n...->...", factor, g) for name, g in grads.items()}


def engine_device() -> torch.device:
    """Where the engine's side of each check runs: ``DPPLAT_TEST_DEVICE`` (e.g. ``cuda`` on a GPU machine),
    else the CPU. The per-sample loop always runs on the CPU, so a GPU run checks the GPU against it."""
    return torch.device(os.environ.get("DPPLAT_TEST_DEVICE", "cpu"))


def fused_clipped_sum(
    model: nn.Module, x: torch.Tensor, weights: torch.Tensor, max_grad_norm, clipping: str, views: int = 1
) -> tuple[dict[str, torch.Tensor], DPModule]:
    """What the engine's backward leaves in ``.grad`` for the same batch (mean loss over rows), on the CPU."""
    device = engine_device()
    dp = DPModule(copy.deepcopy(model).to(device), max_grad_norm=max_grad_norm, clipping=clipping)
    dp.augmentation_multiplicity = views
    out = dp(x.to(device))
    row_losses(out, weights.to(device)).mean().backward()
    dp.finish_flat_clipping()
    grads = {
        name: (p.grad.cpu() if p.grad is not None else torch.zeros_like(p, device="cpu"))
        for name, p in dp._module.named_parameters()
        if p.requires_grad
    }
    return grads, dp


def check_rule(model: nn.Module, x: torch.Tensor, *, clipping: str = "per_layer", C: float = 1.0, views: int = 1):
    """Assert the fused clipped sum equals the per-sample loop to 1e-8 (float64)."""
    torch.manual_seed(1)
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    with torch.no_grad():
        weights = torch.randn(model(x).shape, dtype=torch.float64)
    got, dp = fused_clipped_sum(model, x, weights, C, clipping, views)
    if x.shape[0] == 0:
        expected = {name: torch.zeros_like(g) for name, g in got.items()}
    elif clipping == "per_layer":
        bounds = dict(zip(dp.clipping_groups, dp.per_layer_bounds))
        expected = expected_clipped_sum(model, x, weights, bounds, views)
    else:
        expected = expected_clipped_sum(model, x, weights, C, views)
    for name, g in got.items():
        e = expected[name]
        assert g.shape == e.shape, name
        assert torch.allclose(g, e, atol=1e-8, rtol=1e-8), (name, (g - e).abs().max().item())
    return got, expected

