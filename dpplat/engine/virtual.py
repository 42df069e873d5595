"""Virtual batches: a logical (Poisson) batch larger than memory, run as physical micro-batches.

Each micro-batch's backward adds its examples' clipped sum to ``.grad`` (autograd accumulates
it), and the optimizer adds the noise once, when the logical step is taken: the released sum and
its accounting are those of the logical batch, as with Opacus's BatchMemoryManager. The per-sample
gradients do not depend on the split, since the engine rescales a mean-reduced loss by the rows of
each backward.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def micro_batches(*tensors: torch.Tensor, max_rows: int | None) -> Iterator[tuple[torch.Tensor, ...]]:
    """The rows of ``tensors`` (split along dim 0) in slices of at most ``max_rows``; all at once when None.

    An empty batch yields itself once: the step still runs, and still adds its noise.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}.")
    rows = tensors[0].shape[0]
    if max_rows is None or rows <= max_rows:
        yield tensors
        return
    for start in range(0, rows, max_rows):
        yield tuple(t[start:start + max_rows] for t in tensors)
