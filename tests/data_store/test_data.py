"""Dataset loading from the shipped files: shapes, checksums, clear errors, deterministic subsets."""

import shutil

import numpy as np
import pytest

from dpplat import data


def test_mnist_shapes_and_normalisation():
    train = data.load_dataset("mnist", "train")
    x, y = train.tensors
    assert x.shape == (60000, 1, 28, 28) and y.shape == (60000,)
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01
    assert set(y.unique().tolist()) == set(range(10))


def test_fashion_mnist_test_split():
    x, y = data.load_dataset("fashion-mnist", "test").tensors
    assert x.shape == (10000, 1, 28, 28) and int(y.max()) == 9


def test_the_cifar10_jpeg_copy_is_decoded_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DPPLAT_CACHE", str(tmp_path))
    x, y = data.load_dataset("cifar10-jpeg", "test", subset=50).tensors
    assert x.shape == (50, 3, 32, 32)
    cached = list(tmp_path.glob("datasets/cifar10-jpeg-*.npz"))
    assert len(cached) == 1
    arrays = data.load_arrays("cifar10-jpeg")
    assert arrays["x_train"].shape == (50000, 32, 32, 3) and arrays["x_train"].dtype == np.uint8


def test_subset_is_deterministic_and_seeded():
    a = data.load_dataset("mnist", subset=100, seed=3).tensors[1]
    b = data.load_dataset("mnist", subset=100, seed=3).tensors[1]
    c = data.load_dataset("mnist", subset=100, seed=4).tensors[1]
    assert (a == b).all() and not (a == c).all()


def test_a_missing_copy_names_the_file_and_the_folder_it_was_expected_in(tmp_path):
    with pytest.raises(data.DatasetError, match=r"cifar10_jpeg.npz is missing: expected it at .*--data-dir"):
        data.load_dataset("cifar10-jpeg", data_dir=tmp_path)


def test_corrupt_file_is_detected_by_checksum(tmp_path):
    source = data.dataset_file("mnist")
    corrupt = tmp_path / "mnist.npz"
    shutil.copy(source, corrupt)
    with open(corrupt, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(data.DatasetError, match="corrupt: its SHA-256 .* Replace it with an intact copy"):
        data.load_dataset("mnist", data_dir=tmp_path)


def test_unknown_dataset_and_bad_subset():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        data.load_dataset("svhn")
    with pytest.raises(ValueError, match="subset must be between"):
        data.load_dataset("mnist", subset=0)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DPPLAT_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path
