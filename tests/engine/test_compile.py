"""The fused path under torch.compile: the same clipped sums as eager, checked through dynamo and AOTAutograd
(the "aot_eager" backend, which skips inductor's code generation to keep the suite fast), and a training loop that
dynamo compiles a bounded number of times, not once per step."""

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

from dpplat.engine import DPModule


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 5))


def _clipped_grads(model: nn.Module, dp: DPModule, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    for p in dp.trainable_parameters():
        p.grad = None
    nn.functional.cross_entropy(model(x), y).backward()
    dp.finish_flat_clipping()
    return [p.grad.clone() for p in dp.trainable_parameters()]


@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_compiled_and_eager_clipped_sums_agree(clipping):
    torch.manual_seed(0)
    dp = DPModule(_model(), max_grad_norm=0.5, clipping=clipping)
    x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
    eager = _clipped_grads(dp, dp, x, y)
    compiled = _clipped_grads(torch.compile(dp, backend="aot_eager"), dp, x, y)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


def test_per_layer_training_compiles_once_per_batch_shape_not_once_per_step():
    """Each step is a new forward pass. Dynamo compiles the first step, and once more when a Poisson batch of a new
    size makes the batch dimension dynamic; the steps after that reuse the graph, and still match eager."""
    torch.manual_seed(0)
    dp = DPModule(_model(), max_grad_norm=0.5)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(dp, backend=counter)
    sizes = [16, 16, 16, 13, 19, 16, 11, 16]
    for rows in sizes:
        x, y = torch.randn(rows, 20), torch.randint(0, 5, (rows,))
        for c, e in zip(_clipped_grads(compiled, dp, x, y), _clipped_grads(dp, dp, x, y)):
            torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)
    assert counter.frame_count <= 2, f"dynamo compiled the forward {counter.frame_count} times in {len(sizes)} steps"


def test_compiled_forward_still_refuses_a_module_applied_twice():
    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    dp = DPModule(nn.Sequential(shared, nn.Tanh(), shared), max_grad_norm=1.0)
    with pytest.raises(RuntimeError, match="ran twice in one forward pass"):
        torch.compile(dp, backend="aot_eager")(torch.randn(4, 8))
