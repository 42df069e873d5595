"""The built-in datasets in their original published formats, downloaded on first use.

MNIST and Fashion-MNIST come as four gzipped IDX files each, CIFAR-10 as the python batches
tarball, from the locations their authors (or torchvision's mirror, for MNIST) publish, with
the published MD5 of each file. ``DPPLAT_DATA_URL`` replaces those locations by one mirror
laid out as ``<URL>/<dataset>/<file>``, e.g. ``<URL>/cifar10/cifar-10-python.tar.gz``.

The downloads are kept in ``<cache>/downloads/<dataset>/`` (a user without network may put
the official files there by hand), and the decoded arrays in ``<cache>/datasets/``, keyed by
the files' checksums, so each archive is parsed once.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpplat.dataset_types import DatasetError
from dpplat.downloads import fetch

URL_VARIABLE = "DPPLAT_DATA_URL"


@dataclass(frozen=True)
class Published:
    """Where a dataset's authors publish it: file names with their MD5, the mirrors, the reader."""

    title: str
    files: dict[str, str]  # file name -> published MD5
    mirrors: tuple[str, ...]  # base URLs, tried in order
    read: Callable[[dict[str, Path]], dict[str, np.ndarray]]


def cache_dir() -> Path:
    """The per-user cache folder: ``DPPLAT_CACHE``, default ``~/.cache/dpplat``."""
    return Path(os.environ.get("DPPLAT_CACHE", Path.home() / ".cache" / "dpplat"))


def read_idx(path: Path, dims: int) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes with ``dims`` dimensions (3 for images, 1 for labels)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"{path} is not a readable gzip file ({err}); delete it and dpplat downloads it again.") \
            from None
    header = 4 + 4 * dims
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != 0x0800 + dims:
        raise DatasetError(f"{path} is not an IDX file of {dims}-dimensional unsigned bytes (magic number {magic}, "
                           f"expected {0x0800 + dims}); delete it and dpplat downloads it again.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    if len(raw) != header + int(np.prod(shape)):
        raise DatasetError(f"{path} holds {len(raw) - header} bytes of data, but its header announces shape {shape}; "
                           "delete it and dpplat downloads it again.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_mnist_format(files: dict[str, Path]) -> dict[str, np.ndarray]:
    return {"x_train": read_idx(files["train-images-idx3-ubyte.gz"], 3),
            "y_train": read_idx(files["train-labels-idx1-ubyte.gz"], 1),
            "x_test": read_idx(files["t10k-images-idx3-ubyte.gz"], 3),
            "y_test": read_idx(files["t10k-labels-idx1-ubyte.gz"], 1)}


class _BatchUnpickler(pickle.Unpickler):
    """Reads a CIFAR batch (a dict of bytes, lists and one uint8 array) and nothing that runs code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how protocol 2 writes bytes from Python 3

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"a CIFAR batch does not reference {module}.{name}")
        return super().find_class(module, name)


def _cifar_batch(archive: tarfile.TarFile, member: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        handle = archive.extractfile(member)
        batch = _BatchUnpickler(io.BytesIO(handle.read()), encoding="bytes").load()
        batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch["labels"], dtype=np.uint8)
    except (KeyError, AttributeError, ValueError, TypeError, EOFError, pickle.UnpicklingError) as err:
        raise DatasetError(f"{path}: {member} is not a CIFAR-10 python batch ({err}); delete the file and dpplat "
                           "downloads it again.") from None
    if len(data) != len(labels):
        raise DatasetError(f"{path}: {member} holds {len(data)} images and {len(labels)} labels.")
    return np.ascontiguousarray(data), labels


def read_cifar_tarball(path: Path) -> dict[str, np.ndarray]:
    """The CIFAR-10 python batches tarball: ``data_batch_1``..``5`` for training, ``test_batch`` for test."""
    folder = "cifar-10-batches-py"
    try:
        with tarfile.open(path, "r:gz") as archive:
            train = [_cifar_batch(archive, f"{folder}/data_batch_{i}", path) for i in range(1, 6)]
            x_test, y_test = _cifar_batch(archive, f"{folder}/test_batch", path)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DatasetError(f"{path} is not a readable CIFAR-10 python tarball ({err}); delete it and dpplat downloads "
                           "it again.") from None
    return {"x_train": np.concatenate([x for x, _ in train]), "y_train": np.concatenate([y for _, y in train]),
            "x_test": x_test, "y_test": y_test}


SOURCES: dict[str, Published] = {
    "mnist": Published(
        "MNIST",
        {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/"),
        _read_mnist_format,
    ),
    "fashion-mnist": Published(
        "Fashion-MNIST",
        {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        _read_mnist_format,
    ),
    "cifar10": Published(
        "CIFAR-10",
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        ("https://www.cs.toronto.edu/~kriz/",),
        lambda files: read_cifar_tarball(files["cifar-10-python.tar.gz"]),
    ),
}


def base_urls(name: str) -> list[str]:
    """The mirrors a dataset is fetched from: ``DPPLAT_DATA_URL/<name>/`` when set, else the published ones."""
    mirror = os.environ.get(URL_VARIABLE)
    if mirror:
        return [f"{mirror.rstrip('/')}/{name}/"]
    return list(SOURCES[name].mirrors)


def _load_cached(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as npz:
            return {key: npz[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        path.unlink(missing_ok=True)  # a broken cache is rebuilt, never trusted
        return None


def published_arrays(name: str, *, fix: str = "") -> dict[str, np.ndarray]:
    """A built-in dataset's arrays, downloaded, verified and decoded on first use and cached after.

    ``fix`` is appended to a download error: other ways the user can get the files.
    """
    source = SOURCES[name]
    key = "".join(md5[:4] for md5 in source.files.values())
    decoded = cache_dir() / "datasets" / f"{name}-{key}.npz"
    if decoded.is_file():
        arrays = _load_cached(decoded)
        if arrays is not None:
            return arrays
    folder = cache_dir() / "downloads" / name
    how = (f"Check the network, set {URL_VARIABLE} to a mirror that serves <URL>/{name}/<file>, or put the "
           f"official files ({', '.join(source.files)}) in {folder}. {fix}").rstrip()
    files = {file: fetch([url + file for url in base_urls(name)], folder / file, md5, fix=how)
             for file, md5 in source.files.items()}
    arrays = source.read(files)
    decoded.parent.mkdir(parents=True, exist_ok=True)
    part = decoded.with_name(f".{decoded.stem}.{os.getpid()}.part.npz")
    np.savez(part, **arrays)
    os.replace(part, decoded)
    return arrays
