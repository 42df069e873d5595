"""A user's dataset as image files in the ImageFolder layout, decoded once with Pillow and cached.

``DIR/train/<class>/*.png|jpg|jpeg`` and ``DIR/test/<class>/...``: the classes are the
training split's sub-folders in sorted order (label 0 is the first), and every test class
must be one of them. All images must have one square size. They are read as one channel
when every file is greyscale and as RGB otherwise. The decoded arrays are cached under the
cache folder, keyed by every file's path, size and modification time, so a changed file is
decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from dpplat.dataset_types import DatasetError
from dpplat.published_data import cache_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
LAYOUT = "DIR/train/<class>/*.png|jpg|jpeg and DIR/test/<class>/..."


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def list_files(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """The class names and, per split, every image file with its label; refuses a layout it cannot read."""
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DatasetError(f"{root} has no {split}/ folder; an ImageFolder dataset is laid out as {LAYOUT}.")
    classes = [p.name for p in _visible_dirs(root / "train")]
    if len(classes) < 2:
        raise DatasetError(f"{root / 'train'} holds {len(classes)} class folder(s); a classifier needs at least 2 "
                           f"({LAYOUT}).")
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in ("train", "test"):
        files[split] = []
        for folder in _visible_dirs(root / split):
            if folder.name not in classes:
                raise DatasetError(f"{folder} is a test class that the training split lacks; the classes are "
                                   f"{', '.join(classes)}. Rename or remove it.")
            images = _images(folder)
            if not images:
                raise DatasetError(f"class folder {folder} holds no .png, .jpg or .jpeg file; add images or remove "
                                   "the folder.")
            files[split] += [(path, classes.index(folder.name)) for path in images]
        if not files[split]:
            raise DatasetError(f"{root / split} holds no class folders with images ({LAYOUT}).")
    return classes, files


def _cache_key(root: Path, files: dict[str, list[tuple[Path, int]]]) -> str:
    digest = hashlib.sha256(str(root).encode())
    for split in ("train", "test"):
        for path, label in files[split]:
            stat = path.stat()
            digest.update(f"{split}|{path.relative_to(root)}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _decode(files: dict[str, list[tuple[Path, int]]]) -> dict[str, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    every = [path for split in ("train", "test") for path, _ in files[split]]
    modes, sizes = {}, {}
    for path in every:
        try:
            with Image.open(path) as img:  # lazy: reads the header only
                modes[path], sizes[path] = img.mode, img.size
        except (OSError, UnidentifiedImageError) as err:
            raise DatasetError(f"{path} cannot be read as an image ({err}); replace or remove it.") from None
    size = max(set(sizes.values()), key=list(sizes.values()).count)
    odd = next((path for path in every if sizes[path] != size), None)
    if odd is not None:
        raise DatasetError(f"{odd} is {sizes[odd][0]}x{sizes[odd][1]} but the other images are {size[0]}x{size[1]}; "
                           "all images need one size (resize them).")
    if size[0] != size[1]:
        raise DatasetError(f"the images are {size[0]}x{size[1]}; dpplat's models take square images (crop or pad them).")
    mode = "L" if all(m in GREY_MODES for m in modes.values()) else "RGB"
    arrays = {}
    for split in ("train", "test"):
        shape = (len(files[split]), size[1], size[0]) + (() if mode == "L" else (3,))
        x = np.empty(shape, dtype=np.uint8)
        for i, (path, _) in enumerate(files[split]):
            try:
                with Image.open(path) as img:
                    x[i] = np.asarray(img.convert(mode))
            except (OSError, UnidentifiedImageError) as err:
                raise DatasetError(f"{path} cannot be decoded ({err}); replace or remove it.") from None
        arrays[f"x_{split}"] = x
        arrays[f"y_{split}"] = np.array([label for _, label in files[split]], dtype=np.int64)
    return arrays


_DECODED: dict[str, tuple[dict[str, np.ndarray], list[str]]] = {}  # this process's last folders, by cache key


def image_folder_arrays(root: str | Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays (channels last, uint8) and class names of an ImageFolder dataset."""
    root = Path(root).expanduser().resolve()
    classes, files = list_files(root)
    key = _cache_key(root, files)
    if key not in _DECODED:
        if len(_DECODED) >= 4:
            _DECODED.pop(next(iter(_DECODED)))
        _DECODED[key] = _read_or_decode(key, classes, files)
    return _DECODED[key]


def _read_or_decode(key: str, classes: list[str], files: dict[str, list[tuple[Path, int]]]):
    cached = cache_dir() / "datasets" / f"imagefolder-{key}.npz"
    if cached.is_file():
        try:
            with np.load(cached) as npz:
                return {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}, json.loads(str(npz["classes"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            cached.unlink(missing_ok=True)  # a broken cache is rebuilt, never trusted
    arrays = _decode(files)
    cached.parent.mkdir(parents=True, exist_ok=True)
    part = cached.with_name(f".{cached.stem}.{os.getpid()}.part.npz")
    np.savez(part, **arrays, classes=np.array(json.dumps(classes)))
    os.replace(part, cached)
    return arrays, classes
