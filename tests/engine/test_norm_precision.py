"""Per-sample norms in float32 stay accurate on long rows, so a clipped gradient does not exceed its bound by the
rounding of a long sum (a flat float32 reduction over a 1536 x 512 weight is off by about 1e-5 relative)."""

import torch
from torch import nn

from dpplat.engine import DPModule
from dpplat.engine.rules import fused_sum, matmul


def test_a_long_per_sample_row_has_its_float64_norm_in_float32():
    torch.manual_seed(0)
    A, G = torch.randn(4, 256, 512), torch.randn(4, 256, 1536)
    (_, per_sample), = matmul.per_sample_weight_chunks(A, G)
    exact = per_sample.double().flatten(1).square().sum(1)
    assert per_sample[0].numel() > fused_sum.LONG_ROW
    assert torch.allclose(fused_sum.row_norm_sq(per_sample).double(), exact, rtol=1e-6, atol=0)


def test_a_clipped_sequence_gradient_has_the_bound_as_its_norm_to_float32_precision():
    torch.manual_seed(0)
    layer = nn.Linear(512, 1536)
    model = DPModule(layer, max_grad_norm=0.5, clipping="per_layer")
    model(torch.randn(1, 256, 512)).square().sum().backward()  # one sample, far above the bound
    norm = torch.cat([layer.weight.grad.double().flatten(), layer.bias.grad.double()]).norm()
    assert abs(norm.item() / 0.5 - 1) < 1e-6
