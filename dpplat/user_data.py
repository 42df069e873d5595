"""A user's own dataset: an ``.npz`` file with ``x_train``, ``y_train``, ``x_test`` and ``y_test``,
or a folder in the ImageFolder layout (:mod:`dpplat.image_folder`).

In an ``.npz``, images are uint8 (0-255) or float in [0, 1], shaped ``(N, H, W)``, ``(N, H, W, C)`` or
``(N, C, H, W)`` with square images and 1 or 3 channels; the layout is detected, and said
in a warning when both readings fit. Labels are integers ``0..K-1``; the classes are
``0..K-1`` with K one more than the largest training label. An ImageFolder's classes are its
training split's folder names. Images of both kinds are normalised with
the public constants mean 0.5 and std 0.5 per channel: statistics of the private training
images would be a release that no accountant counts.
"""

from __future__ import annotations

import functools
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from dpplat.dataset_types import DatasetError, DatasetInfo
from dpplat.image_folder import LAYOUT, image_folder_arrays

KEYS = ("x_train", "y_train", "x_test", "y_test")
USER_DATASET_FORMS = ("a path to an .npz file (x_train, y_train, x_test, y_test) or to an ImageFolder directory "
                      f"({LAYOUT})")


def is_user_dataset(name: str) -> bool:
    """Whether ``name`` is a path to a user's dataset (rather than a built-in dataset's name)."""
    text = str(name)
    return text.endswith(".npz") or "/" in text or os.sep in text or Path(text).expanduser().is_dir()


def _channels_last(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.ndim == 3:
        return x
    if x.ndim != 4:
        raise DatasetError(f"{path}: {key} has shape {x.shape}; images must be (N, H, W), (N, H, W, C) or (N, C, H, W).")
    last, first = x.shape[3] in (1, 3), x.shape[1] in (1, 3)
    if last and first:
        warnings.warn(f"{path}: {key} of shape {x.shape} reads as (N, H, W, C) or (N, C, H, W); taken as "
                      "(N, H, W, C).", UserWarning, stacklevel=4)
    if last:
        return x
    if first:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    raise DatasetError(f"{path}: {key} has shape {x.shape}, with neither 1 nor 3 channels first or last.")


@functools.lru_cache(maxsize=4)
def _read(path_text: str, mtime: float) -> dict[str, np.ndarray]:
    path = Path(path_text)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise DatasetError(f"{path} lacks {', '.join(missing)}: a dataset .npz holds x_train, y_train, x_test "
                                   f"and y_test (it has {', '.join(npz.files) or 'nothing'}).")
            arrays = {k: npz[k] for k in KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DatasetError(f"{path} cannot be read as an .npz ({str(err).splitlines()[0]}); save it with "
                           "numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...).") from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        x = _channels_last(x, path, f"x_{split}")
        if len(x) != len(y) or y.ndim != 1:
            raise DatasetError(f"{path}: x_{split} holds {len(x)} images but y_{split} has shape {y.shape}; "
                               "they need one label per image.")
        if len(x) == 0:
            raise DatasetError(f"{path}: x_{split} is empty.")
        if x.shape[1] != x.shape[2]:
            raise DatasetError(f"{path}: x_{split} images are {x.shape[1]}x{x.shape[2]}; dpplat's models take square "
                               "images (crop or pad them).")
        if x.dtype != np.uint8:
            if not np.issubdtype(x.dtype, np.floating):
                raise DatasetError(f"{path}: x_{split} is {x.dtype}; images must be uint8 (0-255) or float in [0, 1].")
            x = x.astype(np.float32)
            if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
                raise DatasetError(f"{path}: x_{split} is float but not within [0, 1] (min {x.min():g}, max "
                                   f"{x.max():g}); scale it to [0, 1], or save uint8 pixels.")
        if not np.issubdtype(y.dtype, np.integer):
            raise DatasetError(f"{path}: y_{split} is {y.dtype}; labels must be integers 0..K-1.")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y.astype(np.int64)
    classes = int(arrays["y_train"].max()) + 1
    for split in ("train", "test"):
        y = arrays[f"y_{split}"]
        if y.min() < 0 or y.max() >= classes:
            raise DatasetError(f"{path}: y_{split} has labels from {y.min()} to {y.max()}, outside 0..{classes - 1} "
                               "(the training labels' range); labels must be integers 0..K-1.")
    if classes < 2:
        raise DatasetError(f"{path}: the training labels name {classes} class; a classifier needs at least 2.")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DatasetError(f"{path}: training images are {arrays['x_train'].shape[1:]} but test images are "
                           f"{arrays['x_test'].shape[1:]}.")
    return arrays


def user_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The checked arrays of a user's dataset: images channels-last, labels int64."""
    path = Path(path).expanduser()
    if path.is_dir():
        return image_folder_arrays(path)[0]
    if not path.is_file():
        raise DatasetError(f"dataset {path} does not exist; pass --dataset with {USER_DATASET_FORMS}, or a built-in "
                           "name (mnist, fashion-mnist, cifar10).")
    return _read(str(path.resolve()), path.stat().st_mtime)


def user_dataset_info(path: str | Path) -> DatasetInfo:
    """Shapes and classes read from the data; normalisation by public constants."""
    if Path(path).expanduser().is_dir():
        arrays, names = image_folder_arrays(path)
        classes = tuple(names)
    else:
        arrays = user_arrays(path)
        classes = tuple(str(i) for i in range(int(arrays["y_train"].max()) + 1))
    x = arrays["x_train"]
    channels = 1 if x.ndim == 3 else x.shape[3]
    return DatasetInfo(str(path), str(path), "", channels, x.shape[1], classes,
                       (0.5,) * channels, (0.5,) * channels, len(x), len(arrays["x_test"]))
