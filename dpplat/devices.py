"""Where a run's arithmetic happens: ``--device cpu|cuda|cuda:N|auto``, checked before any data loads.

Only the model, each step's batch and the DP noise's generator live on the device. The datasets,
the Poisson sampler and the generators that pick examples and augmented views stay on the CPU,
so a seed draws the same batches whatever the device (the noise differs: CUDA has its own
generator). A data-parallel rank ``r`` of a CUDA run uses GPU ``r`` modulo the GPUs it sees.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

CHOICES = "'cpu', 'cuda', 'cuda:N' or 'auto'"


def resolve_device(name: str) -> torch.device:
    """The torch device that ``name`` means here, or a ValueError saying what to pass instead."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device must be {CHOICES}, got {name!r}.") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"--device must be {CHOICES}, got {name!r}.")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch {torch.__version__} sees no CUDA GPU here "
                         "(torch.cuda.is_available() is False); use --device cpu, or 'auto' to take a GPU when there is one.")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                         f"numbered from 0; pick one of cuda:0..cuda:{torch.cuda.device_count() - 1}.")
    return device


def rank_device(name: str, rank: int) -> str:
    """The device that data-parallel rank ``rank`` trains on: its own GPU for a CUDA run, else the CPU."""
    device = resolve_device(name)
    if device.type == "cuda":
        return f"cuda:{rank % torch.cuda.device_count()}"
    return "cpu"


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one CPU thread, then restore the caller's thread count.

    A convolution's sums are split by thread, so the same training on one and on two threads gives
    different weights; what an audit trains (its target, a detector's encoder) must not depend on the
    machine it runs on.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
