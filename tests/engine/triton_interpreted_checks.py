"""Checks of the Linear rule's Triton kernels, run by ``test_linear_triton.py`` in a fresh process with
``TRITON_INTERPRET=1`` and ``DPPLAT_TRITON=1`` (Triton reads TRITON_INTERPRET when it is first imported): the same
per-sample norms and clipped sums as the rule's PyTorch path in float32 and float64, and the same clipped sum as the
per-sample loop when a model trains through them."""

import os

import pytest
import torch
from torch import nn

from dpplat.engine.rules import linear_triton, matmul
from tests.engine.reference import check_rule


@pytest.fixture(autouse=True)
def triton_on_cpu():
    assert os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("DPPLAT_TRITON") == "1"


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("shape", [(3, 37, 45, 70), (2, 5, 64, 16), (1, 40, 3, 33)], ids=str)
def test_kernels_match_the_pytorch_path(dtype, tolerance, shape):
    """Sizes that are not multiples of the 32-wide tiles check the masks at every edge."""
    n, t, p, q = shape
    torch.manual_seed(0)
    A, G = torch.randn(n, t, p, dtype=dtype), torch.randn(n, t, q, dtype=dtype)
    factors = torch.rand(n, dtype=dtype)
    norms, expected_norms = linear_triton.weight_norm_sq(A, G), matmul.weight_norm_sq(A, G)
    assert norms.dtype == dtype and torch.allclose(norms, expected_norms, rtol=tolerance, atol=0)
    total, expected = linear_triton.weight_clipped_sum(A, G, factors), matmul.weight_clipped_sum(A, G, factors)
    assert total.shape == (q, p)
    assert (total - expected).abs().max() <= tolerance * expected.abs().max()
    swapped = linear_triton.weight_clipped_sum(G, A, factors)  # what a weight stored (in, out) asks for
    assert swapped.shape == (p, q) and (swapped - expected.t()).abs().max() <= tolerance * expected.abs().max()


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 24)
        self.mix = nn.Linear(24, 40)
        self.head = nn.Linear(40, 3)

    def forward(self, tokens):
        return self.head(torch.tanh(self.mix(self.embed(tokens))).mean(1))


@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_a_model_trained_through_the_kernels_matches_the_per_sample_loop(clipping, monkeypatch):
    calls = []
    original = linear_triton.weight_norm_sq
    monkeypatch.setattr(linear_triton, "weight_norm_sq", lambda A, G: calls.append(A.shape) or original(A, G))
    torch.manual_seed(0)
    check_rule(Tokens(), torch.randint(0, 20, (5, 7)), clipping=clipping, C=0.3)
    assert calls == [(5, 7, 24)]  # the sequence layer went through the kernel; the head's 2-D input did not

