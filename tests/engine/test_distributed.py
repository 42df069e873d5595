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


def test_dpplat_train_nproc_2_stores_one_run_with_the_single_process_epsilon(tmp_path, capfd):
    from dpplat.cli import main
    from dpplat.store import RunStore

    common = ["train", "--dataset", "mnist", "--model", "mlp", "--epsilon", "3", "--epochs", "1", "--batch-size", "128",
              "--subset", "1024", "--test-subset", "200", "--accountant", "rdp", "--quiet"]
    assert main([*common, "--nproc", "2", "--store", str(tmp_path / "two.db")]) == 0
    assert "2 processes" in capfd.readouterr().out
    assert main([*common, "--store", str(tmp_path / "one.db")]) == 0
    two, one = RunStore(tmp_path / "two.db").runs(), RunStore(tmp_path / "one.db").runs()
    assert len(two) == 1 and two[0].status == "finished" and two[0]["steps"] == one[0]["steps"] == 8
    assert two[0].epsilon == pytest.approx(one[0].epsilon)
    assert two[0].accuracy > 0.3


def test_torchrun_entry_point(tmp_path):
    """The multi-host path, on one host: torchrun starts the ranks, dpplat.distributed trains."""
    import subprocess
    import sys
    from pathlib import Path

    from dpplat.store import RunStore

    torchrun = Path(sys.executable).parent / "torchrun"
    store = tmp_path / "tr.db"
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "dpplat.distributed", "train",
         "--dataset", "mnist", "--model", "mlp", "--epsilon", "3", "--epochs", "1", "--batch-size", "128",
         "--subset", "512", "--test-subset", "100", "--accountant", "rdp", "--quiet", "--store", str(store)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = RunStore(store).runs()
    assert len(runs) == 1 and runs[0].status == "finished" and runs[0]["steps"] == 4


def test_killing_one_rank_stops_the_run_with_a_clear_error_and_a_sound_store(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from dpplat.store import RunStore

    store = tmp_path / "kill.db"
    cli = subprocess.Popen(
        [str(Path(sys.executable).parent / "dpplat"), "train", "--nproc", "2", "--dataset", "mnist", "--model", "mlp",
         "--sigma", "1.0", "--epsilon", "50", "--epochs", "50", "--batch-size", "64", "--subset", "2048",
         "--test-subset", "100", "--accountant", "rdp", "--quiet", "--store", str(store)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def children(pid):
        kids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(stat.parent.name))
        return sorted(kids)

    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training is under way
        time.sleep(1)
        if store.exists() and any(r["steps"] and r["steps"] > 5 for r in RunStore(store, read_only=True).runs()):
            break
    ranks = [p for p in children(cli.pid) if "spawn" in Path(f"/proc/{p}/cmdline").read_text(errors="ignore")]
    assert len(ranks) >= 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)
    _, err = cli.communicate(timeout=180)
    assert cli.returncode == 2
    assert "data-parallel training stopped" in err and "marked interrupted" in err
    run = RunStore(store).runs()[0]  # the store opens and reads: not corrupt
    assert run.status == "interrupted" and run["steps"] > 5
