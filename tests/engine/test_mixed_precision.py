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


@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_each_example_stays_within_its_bound_in_fp16(clipping):
    m = model()
    dp = DPModule(m, max_grad_norm=0.5, clipping=clipping, loss_reduction="sum")
    x, y = torch.randn(4, 20), torch.randint(0, 5, (4,))
    for i in range(4):
        for p in m.parameters():
            p.grad = None
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(dp(x[i:i + 1]), y[i:i + 1], reduction="sum")
        loss.backward()
        dp.finish_flat_clipping()
        norm = torch.sqrt(sum(p.grad.float().square().sum() for p in m.parameters()))
        assert torch.isfinite(norm) and norm <= 0.5 * (1 + 1e-3)  # per-layer bounds C / sqrt(L) add up to C


def test_an_fp16_gradient_that_overflows_is_refused_in_one_clear_line():
    m = model()
    dp = DPModule(m, max_grad_norm=0.5)
    x, y = torch.randn(4, 20), torch.randint(0, 5, (4,))
    with torch.autocast("cpu", dtype=torch.float16):
        loss = nn.functional.cross_entropy(dp(x), y) * 1e6  # beyond float16's 65,504 once back-propagated
    with pytest.raises(FloatingPointError, match="float16 gradient reaching '3' overflowed.*bfloat16"):
        loss.backward()


def test_bf16_parameters_get_their_noise_in_float32():
    """The noise is added to the float32 clipped sum and cast back to bf16 once, never rounded to bf16's 8 bits
    before it is added: the result equals that float32 computation, with the same draws, exactly."""
    m = model().to(torch.bfloat16)
    dp = DPModule(m, max_grad_norm=0.5)
    opt = DPOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), dp, noise_multiplier=0.3, expected_batch_size=8,
                      generator=torch.Generator().manual_seed(5))
    x, y = torch.randn(8, 20, dtype=torch.bfloat16), torch.randint(0, 5, (8,))
    nn.functional.cross_entropy(dp(x), y).backward()
    clipped = {n: p.grad.float() for n, p in m.named_parameters()}
    opt.privatise_gradients()
    draws = torch.Generator().manual_seed(5)
    rounded_early = 0
    for n, p in m.named_parameters():
        noise = torch.empty(p.numel()).normal_(0.0, opt.noise_std, generator=draws).view(p.shape)
        assert p.grad.dtype == torch.bfloat16
        assert torch.equal(p.grad, ((clipped[n] + noise) / 8).to(torch.bfloat16)), n
        in_bf16 = (clipped[n].to(torch.bfloat16) + noise.to(torch.bfloat16)) / 8
        rounded_early += int((in_bf16 != p.grad).sum())
    assert rounded_early > 0  # the check above tells the two orders apart
