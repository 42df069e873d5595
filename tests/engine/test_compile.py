"""The fused path under torch.compile: the same clipped sums as eager, checked through dynamo and AOTAutograd
(the "aot_eager" backend, which skips inductor's code generation to keep the suite fast)."""

import pytest
import torch
from torch import nn

from dpplat.engine import DPModule


@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_compiled_and_eager_clipped_sums_agree(clipping):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 5))
    dp = DPModule(m, max_grad_norm=0.5, clipping=clipping)
    x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
    grads = []
    for model in (dp, torch.compile(dp, backend="aot_eager")):
        for p in m.parameters():
            p.grad = None
        nn.functional.cross_entropy(model(x), y).backward()
        dp.finish_flat_clipping()
        grads.append([p.grad.clone() for p in m.parameters()])
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
