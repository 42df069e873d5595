"""Under bf16 autocast the engine computes norms, clip factors and clipped sums in float32: every example's
contribution stays within its bound, and the sum agrees with the float32 one to bf16's precision."""

import pytest
import torch
from torch import nn

from dpplat.engine import DPModule, DPOptimizer


def model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 5))
    with torch.no_grad():
        m[0].weight.mul_(30)  # large gradients: every example is clipped
    return m


def clipped_sum(m, dp, x, y, autocast):
    for p in m.parameters():
        p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = nn.functional.cross_entropy(dp(x), y, reduction="sum")
    loss.backward()
    dp.finish_flat_clipping()
    return {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_each_example_stays_within_its_bound_in_bf16(clipping):
    m = model()
    dp = DPModule(m, max_grad_norm=0.5, clipping=clipping, loss_reduction="sum")
    x, y = torch.randn(6, 20) * 5, torch.randint(0, 5, (6,))
    for i in range(6):
        grads = clipped_sum(m, dp, x[i:i + 1], y[i:i + 1], autocast=True)
        assert all(g.dtype == torch.float32 for g in grads.values())
        if clipping == "flat":
            total = torch.sqrt(sum(g.square().sum() for g in grads.values()))
            assert total <= 0.5 * (1 + 1e-5)
        else:
            for group, bound in zip(dp.clipping_groups, dp.per_layer_bounds):
                norm = torch.sqrt(sum(g.square().sum() for n, g in grads.items() if n.startswith(group + ".")))
                assert norm <= bound * (1 + 1e-5), group


def test_the_bf16_clipped_sum_agrees_with_float32():
    m = model()
    dp = DPModule(m, max_grad_norm=0.5, loss_reduction="sum")
    x, y = torch.randn(16, 20) * 5, torch.randint(0, 5, (16,))
    low, full = clipped_sum(m, dp, x, y, autocast=True), clipped_sum(m, dp, x, y, autocast=False)
    for name in full:
        assert (low[name] - full[name]).norm() <= 0.05 * full[name].norm() + 1e-6, name


def test_the_noise_is_float32_under_autocast():
    m = model()
    dp = DPModule(m, max_grad_norm=0.5)
    opt = DPOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), dp, noise_multiplier=1.0, expected_batch_size=8)
    x, y = torch.randn(8, 20), torch.randint(0, 5, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(dp(x), y)
    loss.backward()
    opt.step()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in m.parameters())
