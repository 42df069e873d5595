"""Data-parallel DP-SGD with torch.distributed (gloo, 2 processes on this CPU) against one process."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpplat import PrivacyEngine


def data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g))


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def train(sigma, steps, clipping, zero_loss=False):
    """The same few steps in whichever process group is current (none: one process)."""
    net = model()
    engine = PrivacyEngine(accountant="rdp")
    dp_model, opt, loader = engine.make_private(
        module=net, optimizer=torch.optim.SGD(net.parameters(), lr=1.0), data_loader=DataLoader(data(), batch_size=24),
        noise_multiplier=sigma, max_grad_norm=0.5, clipping=clipping, noise_generator=torch.Generator().manual_seed(1))
    grads, seen = [], []
    for _, (x, y) in zip(range(steps), loader):
        opt.zero_grad()
        out = dp_model(x.double())
        (out.sum() * 0 if zero_loss else F.cross_entropy(out, y)).backward()
        opt.step()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        seen.append(len(y))
    return {"params": [p.detach().clone() for p in net.parameters()], "grads": torch.stack(grads),
            "epsilon": engine.get_epsilon(1e-5), "rows": seen}


def worker(rank, world, port, path, sigma, steps, clipping, zero_loss):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(train(sigma, steps, clipping, zero_loss), f"{path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_path, sigma, steps, clipping="per_layer", zero_loss=False, world=2):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(world, port, str(tmp_path), sigma, steps, clipping, zero_loss), nprocs=world)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_two_ranks_without_noise_match_one_process_on_the_same_batches(tmp_path, clipping):
    ranks = run_ranks(tmp_path, sigma=0.0, steps=3, clipping=clipping)
    single = train(sigma=0.0, steps=3, clipping=clipping)
    for r in ranks:
        for a, b in zip(r["params"], single["params"]):
            assert torch.allclose(a, b, atol=1e-6)
    # the global sample is shared out: the ranks' batches add up to the single process's batch
    assert [a + b for a, b in zip(ranks[0]["rows"], ranks[1]["rows"])] == single["rows"]
    assert ranks[0]["epsilon"] == pytest.approx(single["epsilon"])


def test_noise_is_added_once_in_total(tmp_path):
    """With a zero loss, .grad is pure noise / expected batch: identical on both ranks, std sigma C / (qN)."""
    sigma, C, steps = 2.0, 0.5, 40
    ranks = run_ranks(tmp_path, sigma=sigma, steps=steps, zero_loss=True)
    assert torch.equal(ranks[0]["grads"], ranks[1]["grads"])
    noise = ranks[0]["grads"].flatten()
    n = noise.numel()  # 40 steps x 83 parameters
    target = sigma * C / 24  # expected batch q N = 24
    assert abs(noise.std().item() / target - 1) < 5 / math.sqrt(2 * n)  # noise twice would give sqrt(2)
