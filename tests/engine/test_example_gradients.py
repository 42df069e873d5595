"""Given per-sample gradients (an audit's gradient canaries) are clipped exactly as the backward clips an example's:
checked in float64 against the per-sample loop, for per-layer and flat clipping, and under the audit's faults."""

import pytest
import torch
from torch import nn

from dpplat.engine import DPModule
from tests.engine.reference import expected_clipped_sum, per_sample_grads, row_losses


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).double()


def flat_rows(model, x, weights):
    """Each example's whole gradient as one row, in the engine's parameter order."""
    grads = per_sample_grads(model, x, weights)
    n = x.shape[0]
    return torch.cat([grads[name].reshape(n, -1) for name, p in model.named_parameters()], dim=1)


@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_given_gradients_are_clipped_and_summed_like_the_examples_they_came_from(clipping):
    model = small_model()
    x, weights = torch.randn(6, 1, 6, 6, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    C = 0.05  # small enough that most examples are clipped
    bounds = {"0": C / 2**0.5, "3": C / 2**0.5} if clipping == "per_layer" else C
    expected = expected_clipped_sum(model, x, weights, bounds)
    rows = flat_rows(model, x, weights)
    model.zero_grad(set_to_none=True)
    dp = DPModule(model, max_grad_norm=C, clipping=clipping, loss_reduction="sum")
    dp.add_example_gradients(rows)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-10, atol=1e-12)
    # the same examples through the backward give the same sum: a canary has no way around the clipping
    backward = {name: p.grad.clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    row_losses(dp(x), weights).sum().backward()
    dp.finish_flat_clipping()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, backward[name], rtol=1e-10, atol=1e-12)


def test_a_skipped_group_passes_its_part_unclipped_and_clips_the_rest():
    model = small_model()
    dp = DPModule(model, max_grad_norm=1.0, clipping="per_layer")
    sizes = dp.group_sizes
    row = torch.cat([torch.full((sizes[0],), 1.0), torch.full((sizes[1],), 1.0)]).double()[None]
    dp.skip_clipping(1)
    dp.add_example_gradients(row * 10)
    conv = torch.cat([p.grad.reshape(-1) for p in model[0].parameters()])
    linear = torch.cat([p.grad.reshape(-1) for p in model[3].parameters()])
    assert conv.norm().item() == pytest.approx(dp.per_layer_bounds[0])
    assert linear.norm().item() == pytest.approx(10 * sizes[1] ** 0.5)


def test_the_wrong_shape_is_refused():
    dp = DPModule(small_model(), max_grad_norm=1.0)
    with pytest.raises(ValueError, match=r"example gradients must be \(k, \d+\)"):
        dp.add_example_gradients(torch.zeros(2, 3, dtype=torch.float64))


def test_flat_clipping_leaves_plain_gradients_outside_any_graph():
    model = small_model()
    dp = DPModule(model, max_grad_norm=0.1, clipping="flat")
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    row_losses(dp(x), torch.randn(4, 5, dtype=torch.float64)).sum().backward()
    dp.finish_flat_clipping()
    assert all(p.grad is not None and not p.grad.requires_grad for p in model.parameters())
