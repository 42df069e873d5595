"""Datasets: the built-in MNIST, Fashion-MNIST and CIFAR-10, or a user's ``.npz`` or ImageFolder.

A built-in name is resolved in this order:

1. the project's ``.npz`` copy in a data folder (``--data-dir``, ``DPPLAT_DATA``, or a
   checkout's ``../shared/data``), verified against its SHA-256 once per process;
2. otherwise the original published files, downloaded on first use, verified against their
   published MD5 and cached (:mod:`dpplat.published_data`; ``DPPLAT_CACHE``, default
   ``~/.cache/dpplat``; ``DPPLAT_DATA_URL`` for a mirror).

``cifar10`` is the original CIFAR-10 (the python batches). ``cifar10-jpeg`` is the project's
JPEG q75 re-encoding of it, which exists only as a data folder's file; it is decoded once
with Pillow and the arrays cached. Every failure raises :class:`DatasetError` naming the file,
what was expected and how to fix it.

A user's dataset is a path (:mod:`dpplat.user_data`); its image size, channels and classes
are read from the data. :func:`dataset_info` answers for both, so nothing downstream looks a
shape up by a dataset's name.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dpplat.dataset_types import DatasetError, DatasetInfo  # noqa: F401  (re-exported: dpplat.data.DatasetError)
from dpplat.published_data import SOURCES, cache_dir, published_arrays
from dpplat.user_data import USER_DATASET_FORMS, is_user_dataset, user_arrays, user_dataset_info

_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# ``file`` and ``sha256`` name the project's .npz copy in a data folder ("" where there is none).
DATASETS = {
    "mnist": DatasetInfo(
        "mnist", "mnist.npz", "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64",
        1, 28, tuple(str(i) for i in range(10)), (0.1307,), (0.3081,), 60_000, 10_000,
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", "fashion_mnist.npz", "5b6d2c4c694a91887af8ab7d039c04f80af3c29378d731c93a538d2e831aa469",
        1, 28,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (0.2860,), (0.3530,), 60_000, 10_000,
    ),
    "cifar10": DatasetInfo("cifar10", "", "", 3, 32, _CIFAR_CLASSES, _CIFAR_MEAN, _CIFAR_STD, 50_000, 10_000, flip=True),
    "cifar10-jpeg": DatasetInfo(
        "cifar10-jpeg", "cifar10_jpeg.npz", "69d0ed7bc1268a2305a7504036283dfa16c191ca0fb1d1e56401360066d64fe8",
        3, 32, _CIFAR_CLASSES, _CIFAR_MEAN, _CIFAR_STD, 50_000, 10_000, flip=True,
    ),
}

_VERIFIED: set[Path] = set()


def _checkout_data_dir() -> Path | None:
    """``../shared/data`` beside this source tree, when dpplat runs from a checkout that has one."""
    root = Path(__file__).resolve().parents[1]
    candidate = root.parent / "shared" / "data"
    if (root / "pyproject.toml").is_file() and candidate.is_dir():
        return candidate
    return None


def default_data_dir() -> Path | None:
    """``DPPLAT_DATA``, else a checkout's ``../shared/data``, else None (built-ins are downloaded)."""
    env = os.environ.get("DPPLAT_DATA")
    return Path(env) if env else _checkout_data_dir()


def _in_checkout_hint() -> str:
    folder = _checkout_data_dir()
    return f" In this checkout, --data-dir {folder} (or DPPLAT_DATA) holds the project's copies." if folder else ""


def is_builtin(name: str) -> bool:
    return name in DATASETS


def check_dataset_name(name: str) -> None:
    """A built-in name or a path to a user's dataset (whose content is checked when it is loaded)."""
    if not (is_builtin(name) or is_user_dataset(name)):
        raise ValueError(f"dataset {name!r} is neither a built-in dataset ({', '.join(DATASETS)}) nor "
                         f"{USER_DATASET_FORMS}.")


def canonical_dataset(name):
    """A built-in name as it is; a user's dataset as an absolute path, so a stored config finds it from any folder."""
    if isinstance(name, str) and is_user_dataset(name):
        return str(Path(name).expanduser().resolve())
    return name


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """Channels, image size, classes and normalisation of a built-in dataset or of a user's dataset."""
    if is_user_dataset(name):
        return user_dataset_info(name)
    return _info(name)


def _info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or give "
                         f"{USER_DATASET_FORMS}.") from None


def _local_copy(info: DatasetInfo, data_dir: str | Path | None) -> Path | None:
    """The verified path of the project's copy in the data folder, or None where the folder lacks it."""
    if not info.file:
        return None
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    if folder is None or not (folder / info.file).is_file():
        return None
    path = folder / info.file
    if path not in _VERIFIED:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != info.sha256:
            raise DatasetError(f"dataset file {path} is corrupt: its SHA-256 is {digest}, expected {info.sha256}. "
                               f"Replace it with an intact copy, or remove it from the folder and dpplat downloads "
                               f"the original.")
        _VERIFIED.add(path)
    return path


def dataset_file(name: str, data_dir: str | Path | None = None) -> Path:
    """The verified path of a built-in dataset's copy in the data folder (checksum checked once per process)."""
    info = _info(name)
    path = _local_copy(info, data_dir)
    if path is None:
        folder = Path(data_dir) if data_dir is not None else default_data_dir()
        where = f"expected it at {folder / info.file}" if folder is not None and info.file else "no data folder is set"
        raise DatasetError(f"dataset file {info.file or name} is missing: {where}. Pass --data-dir DIR (or set "
                           f"DPPLAT_DATA=DIR) to the folder that holds it.{_in_checkout_hint()}")
    return path


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DatasetError(f"dataset file {path} cannot be read as an .npz ({err}); replace it with an intact copy.") \
            from None


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    images = np.empty((len(offsets) - 1, 32, 32, 3), dtype=np.uint8)
    for i in range(len(offsets) - 1):
        with Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())) as img:
            images[i] = np.asarray(img.convert("RGB"))
    return images


def _jpeg_arrays(path: Path, info: DatasetInfo) -> dict[str, np.ndarray]:
    cached = cache_dir() / "datasets" / f"cifar10-jpeg-{info.sha256[:16]}.npz"
    if cached.is_file():
        try:
            return _load_npz(cached)
        except DatasetError:
            cached.unlink(missing_ok=True)  # a broken cache is rebuilt, never trusted
    raw = _load_npz(path)
    arrays = {
        "x_train": _decode_jpegs(raw["train_jpeg"], raw["train_offsets"]),
        "y_train": raw["y_train"],
        "x_test": _decode_jpegs(raw["test_jpeg"], raw["test_offsets"]),
        "y_test": raw["y_test"],
    }
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.stem}.{os.getpid()}.part.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, cached)
    return arrays


def load_arrays(name: str, data_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """Images (N, H, W[, C]), uint8 or float in [0, 1], and labels for both splits."""
    if is_user_dataset(name):
        return user_arrays(name)
    info = _info(name)
    path = _local_copy(info, data_dir)
    if path is None and name in SOURCES:
        return published_arrays(name, fix=_in_checkout_hint().strip())
    if path is None:
        path = dataset_file(name, data_dir)  # raises: the copy is the only source
    arrays = _jpeg_arrays(path, info) if name == "cifar10-jpeg" else _load_npz(path)
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays)
    if missing:
        raise DatasetError(f"dataset file {path} lacks arrays {sorted(missing)}; replace it with an intact copy.")
    return arrays


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | Path | None = None,
    subset: int | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> TensorDataset:
    """A ``TensorDataset`` of float images (N, C, H, W) and int64 labels.

    ``subset`` takes a deterministic random subset of that many examples (seeded), for
    small runs and tests; the order within it is random but fixed by ``seed``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    info = dataset_info(name, data_dir)
    arrays = load_arrays(name, data_dir)
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if subset is not None:
        if not 0 < subset <= len(x):
            raise ValueError(f"subset must be between 1 and {len(x)} for {name}/{split}, got {subset}.")
        index = np.random.default_rng(seed).permutation(len(x))[:subset]
        x, y = x[index], y[index]
    images = torch.from_numpy(np.ascontiguousarray(x)).float()
    if x.dtype == np.uint8:
        images.div_(255.0)
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2).contiguous()
    if normalize:
        mean = torch.tensor(info.mean).view(1, -1, 1, 1)
        std = torch.tensor(info.std).view(1, -1, 1, 1)
        images = (images - mean) / std
    return TensorDataset(images, torch.from_numpy(y.astype(np.int64)))
