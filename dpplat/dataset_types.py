"""What a dataset is to the rest of dpplat (its shapes, classes and normalisation), and its one error type."""

from __future__ import annotations

from dataclasses import dataclass


class DatasetError(RuntimeError):
    """A dataset file is missing or corrupt; the message says where it should be and how to get it."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    file: str
    sha256: str
    channels: int
    size: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int  # examples in each split: what a draw from the dataset may take at most
    test_size: int
    flip: bool = False  # whether a mirrored image is another image of its class (augmentation may flip it)
