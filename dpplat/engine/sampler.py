"""Poisson sampling: every example joins each batch independently with probability q.

This is the sampling the accountants' subsampled-Gaussian analysis assumes. Batches
have random size and may be empty; the collate wrapper still returns tensors of the
right shape and dtype with a zero batch dimension, so a training loop needs no
special case.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.dataloader import default_collate

from dpplat.engine.noise import secure_uniform


class PoissonBatchSampler(Sampler[list[int]]):
    """Yields ``num_batches`` index lists, each example included with probability ``sample_rate``."""

    def __init__(
        self,
        num_samples: int,
        sample_rate: float,
        num_batches: int,
        *,
        generator: torch.Generator | None = None,
        secure: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}.")
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.num_batches = num_batches
        self.secure = secure
        self.rank, self.world_size = rank, world_size
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        elif generator.device.type != "cpu":  # the mask is drawn on the CPU: a GPU generator seeds a CPU one
            generator = torch.Generator().manual_seed(generator.initial_seed())
        self.generator = generator

    def __len__(self) -> int:
        return self.num_batches

    def _draw(self) -> torch.Tensor:
        if self.secure:
            return torch.from_numpy(secure_uniform(self.num_samples) <= self.sample_rate)
        return torch.rand(self.num_samples, generator=self.generator) < self.sample_rate

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.num_batches):
            if self.world_size == 1:
                yield self._draw().nonzero().flatten().tolist()
                continue
            # Several processes: rank 0 draws the one global Poisson sample and every rank takes a disjoint
            # share of it, so each example joins a step with probability q whatever the number of ranks.
            import torch.distributed as dist

            mask = self._draw().to(torch.uint8) if self.rank == 0 else torch.empty(self.num_samples, dtype=torch.uint8)
            dist.broadcast(mask, src=0)
            yield mask.nonzero().flatten()[self.rank :: self.world_size].tolist()


def collate_allowing_empty(sample: Any, collate_fn: Callable = default_collate) -> Callable:
    """A collate function that turns an empty batch into zero-length tensors shaped like ``sample``."""

    def empty_like(item: Any):
        if isinstance(item, torch.Tensor):
            return item.new_empty((0, *item.shape))
        if isinstance(item, (int, np.integer)):
            return torch.empty(0, dtype=torch.int64)
        if isinstance(item, (float, np.floating)):
            return torch.empty(0, dtype=torch.float64)
        if isinstance(item, (tuple, list)):
            return type(item)(empty_like(i) for i in item)
        raise TypeError(f"cannot form an empty batch of {type(item).__name__}; return tensors from the dataset.")

    def collate(batch: list) -> Any:
        return collate_fn(batch) if batch else empty_like(sample)

    return collate


class PoissonDataLoader(DataLoader):
    """A DataLoader over ``dataset`` with Poisson sampling; ``len()`` batches make one epoch."""

    def __init__(
        self,
        dataset: Dataset,
        sample_rate: float,
        num_batches: int,
        *,
        collate_fn: Callable | None = None,
        generator: torch.Generator | None = None,
        secure: bool = False,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("the dataset is empty: nothing to sample from.")
        self.sample_rate = sample_rate
        sampler = PoissonBatchSampler(len(dataset), sample_rate, num_batches, generator=generator, secure=secure,
                                      rank=rank, world_size=world_size)
        super().__init__(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_allowing_empty(dataset[0], collate_fn or default_collate),
            num_workers=num_workers,
        )

    @classmethod
    def from_data_loader(
        cls, loader: DataLoader, *, generator=None, secure: bool = False, rank: int = 0, world_size: int = 1
    ) -> "PoissonDataLoader":
        """Same dataset and expected batch size as ``loader``: q = 1 / len(loader), as Opacus does.

        With ``world_size > 1`` every rank passes the whole dataset; each step's sample is
        drawn once (on rank 0) and shared out, so the expected *global* batch is the same.
        """
        num_batches = len(loader)
        if num_batches == 0:
            raise ValueError("the data loader yields no batches; check its dataset and batch size.")
        collate = loader.collate_fn if loader.collate_fn is not None else default_collate
        return cls(
            loader.dataset, 1.0 / num_batches, num_batches,
            collate_fn=collate, generator=generator, secure=secure, num_workers=loader.num_workers,
            rank=rank, world_size=world_size,
        )

    @property
    def generator_state(self) -> torch.Tensor:
        return self.batch_sampler.generator.get_state()

    @generator_state.setter
    def generator_state(self, state: torch.Tensor) -> None:
        self.batch_sampler.generator.set_state(state)
