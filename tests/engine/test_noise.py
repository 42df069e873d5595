"""The noise draw: block-parallel on the CPU for large models, the same values whatever the thread count."""

from __future__ import annotations

import math

import pytest
import torch

from dpplat.engine import noise as noise_module
from dpplat.engine.noise import add_gaussian_noise_all_


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 1,000 values and the parallel draw from 4,000 values, so a test model takes that path."""
    monkeypatch.setattr(noise_module, "_CHUNK", 1000)
    monkeypatch.setattr(noise_module, "_PARALLEL_MIN", 4000)


def draw(shapes, std, seed, threads, dtype=torch.float32):
    tensors = [torch.zeros(shape, dtype=dtype) for shape in shapes]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        add_gaussian_noise_all_(tensors, std, generator=torch.Generator().manual_seed(seed))
    finally:
        torch.set_num_threads(previous)
    return torch.cat([t.reshape(-1) for t in tensors])


def test_parallel_noise_does_not_depend_on_the_thread_count(small_blocks):
    shapes = [(70, 90), (2500,), (3,), (40, 40)]
    one = draw(shapes, 1.5, seed=3, threads=1)
    assert torch.equal(one, draw(shapes, 1.5, seed=3, threads=2))
    assert torch.equal(one, draw(shapes, 1.5, seed=3, threads=3))
    assert not torch.equal(one, draw(shapes, 1.5, seed=4, threads=2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parallel_noise_is_gaussian_with_independent_blocks(small_blocks, dtype):
    std = 0.7
    values = draw([(200_000,), (31, 1000)], std, seed=0, threads=2, dtype=dtype).double()
    n = values.numel()
    assert values.dtype == torch.float64 and n == 231_000
    assert abs(values.std().item() / std - 1) < 5 / math.sqrt(2 * n)
    assert abs(values.mean().item()) < 5 * std / math.sqrt(n)
    blocks = values[: 200 * 1000].view(200, 1000)  # no two blocks repeat a stream: their correlations are ~N(0, 1/1000)
    correlation = torch.corrcoef(blocks)
    off_diagonal = correlation[~torch.eye(200, dtype=torch.bool)]
    assert off_diagonal.abs().max().item() < 6 / math.sqrt(1000)
    fourth = ((values / std) ** 4).mean().item()  # a Gaussian's kurtosis is 3
    assert abs(fourth - 3) < 0.1


def test_small_models_and_secure_noise_take_the_tensor_by_tensor_draw(small_blocks):
    """Below the threshold the draw is torch's sequence from the generator, as before."""
    tensors = [torch.zeros(30, 10), torch.zeros(50)]
    add_gaussian_noise_all_(tensors, 2.0, generator=torch.Generator().manual_seed(1))
    expected = torch.Generator().manual_seed(1)
    assert torch.equal(tensors[0], torch.zeros(300).normal_(0.0, 2.0, generator=expected).view(30, 10))
    assert torch.equal(tensors[1], torch.zeros(50).normal_(0.0, 2.0, generator=expected))
    secure = [torch.zeros(5000)]
    add_gaussian_noise_all_(secure, 2.0, secure=True)
    assert abs(secure[0].std().item() / 2.0 - 1) < 0.1


def test_zero_std_adds_nothing(small_blocks):
    tensors = [torch.ones(5000)]
    add_gaussian_noise_all_(tensors, 0.0)
    assert torch.equal(tensors[0], torch.ones(5000))
