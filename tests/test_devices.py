"""``--device``: names resolve or fail clearly, and a run off the CPU takes the CPU run's steps.

On a machine without a GPU 'auto' is the CPU, so the cross-device tests check determinism;
on a GPU machine (or with DPPLAT_TEST_DEVICE=cuda for the per-sample rule checks) they check the GPU.
"""

from __future__ import annotations

import pytest
import torch

from dpplat.augment import make_views
from dpplat.data import load_dataset
from dpplat.devices import model_device, rank_device, resolve_device
from dpplat.store import RunStore
from dpplat.training import TrainConfig, build_model, fit, train

GPU = torch.cuda.is_available()


def test_device_names_resolve_or_fail_with_the_fix():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" AUTO ").type == ("cuda" if GPU else "cpu")
    for bad in ("gpu", "mps", "cuda:x"):
        with pytest.raises(ValueError, match="--device must be 'cpu', 'cuda', 'cuda:N' or 'auto'"):
            resolve_device(bad)
    if GPU:
        with pytest.raises(ValueError, match="numbered from 0"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
        assert rank_device("cuda", torch.cuda.device_count()) == "cuda:0"
    else:
        with pytest.raises(ValueError, match="sees no CUDA GPU here.*use --device cpu"):
            resolve_device("cuda")
    assert rank_device("cpu", 3) == "cpu"
    with pytest.raises(ValueError, match="--device must be"):
        TrainConfig(device="tpu").validate()


def test_views_are_the_same_on_every_device():
    x = torch.rand(6, 3, 8, 8)
    on_cpu = make_views(x, 3, pad=2, flip=True, generator=torch.Generator().manual_seed(5))
    device = resolve_device("auto")
    on_device = make_views(x.to(device), 3, pad=2, flip=True, generator=torch.Generator().manual_seed(5))
    assert on_device.device.type == device.type
    assert torch.equal(on_cpu, on_device.cpu())


@pytest.mark.parametrize("model", ["c4-cnn", "scatnet-cnn-datanorm"])
def test_noise_free_training_on_the_device_takes_the_cpu_runs_steps(model, monkeypatch):
    """sigma = 0: the device run sees the same batches, views and released statistics as the CPU
    run, so its weights end where the CPU run's do, and it comes back on the CPU.

    A run that drew other batches ends about as far from the CPU run as training moved the weights.
    Rounding alone stays far below that: on an H200 with cuDNN's TF32 convolutions (torch's default)
    the largest difference was 6% of the largest move for a C4 CNN of 6-12 fields and 3% for scatnet-cnn-datanorm.
    cuDNN's TF32 is off here (torch's matrix products default to full float32); the bound allows for TF32 all the same.
    """
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    train_set = load_dataset("mnist", "train", subset=256, seed=0)
    common = dict(dataset="mnist", model=model, sigma=0.0, epsilon=None, epochs=2, batch_size=64, lr=0.5,
                  optimizer="sgd", max_grad_norm=1.0, augmult=2)  # SGD: Adam would amplify rounding in tiny gradients
    on_cpu = fit(TrainConfig(**common, device="cpu"), train_set)
    on_device = fit(TrainConfig(**common, device="auto"), train_set)
    assert model_device(on_device) == torch.device("cpu")
    torch.manual_seed(0)
    untrained = build_model(TrainConfig(**common))
    moved = max((a - b).abs().max().item() for a, b in zip(on_cpu.parameters(), untrained.parameters()))
    assert moved > 5e-2  # the agreement is of trained weights, not of two untouched copies
    for (name, a), b in zip(on_cpu.state_dict().items(), on_device.state_dict().values()):
        assert (a - b).abs().max().item() <= 0.15 * moved, (name, (a - b).abs().max().item(), moved)


def test_a_stored_run_on_the_device_with_ema_and_views(tmp_path):
    config = TrainConfig(dataset="mnist", model="cnn", sigma=1.0, epsilon=50, epochs=1, batch_size=128, subset=512,
                         test_subset=200, augmult=2, ema_decay=0.9, device="auto")
    with RunStore(tmp_path / "s.db") as store:
        result = train(config, store=store, quiet=True)
        run = store.get_run(result.run_id)
    assert run.config["device"] == "auto"
    assert model_device(result.model) == torch.device("cpu")
    assert 0.0 <= result.accuracy <= 1.0 and result.steps == 4


def test_data_parallel_backends_follow_the_device_not_the_machine():
    """A CPU run uses gloo even where a GPU is visible (NCCL cannot reduce CPU tensors); a CUDA run
    also keeps gloo for the CPU tensors it broadcasts (the Poisson sample's mask)."""
    from dpplat.distributed import _backend

    assert _backend("cpu") == "gloo"
    assert _backend("cuda:1") == "cpu:gloo,cuda:nccl"
