"""A user's ImageFolder (DIR/train/<class>/*.png, DIR/test/<class>/...): decoded once and cached, classes named by
their folders, read as one channel or RGB, trained from the CLI; a bad layout gets one line and stores nothing."""

import os

import numpy as np
import pytest
from PIL import Image

from dpplat import data
from dpplat.cli import main
from dpplat.store import RunStore

CLASSES = ("seven", "three", "zero")  # sorted: label 0 is "seven"
DIGITS = {"seven": 7, "three": 3, "zero": 0}


def image_folder(root, *, train=60, test=15, rgb=False, suffix=".png"):
    """MNIST digits 0, 3 and 7 as image files, named by class folders."""
    arrays = data.load_arrays("mnist")
    for split, n in (("train", train), ("test", test)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in np.flatnonzero(arrays[f"y_{split}"] == DIGITS[name])[:n]:
                image = Image.fromarray(arrays[f"x_{split}"][i])
                (image.convert("RGB") if rgb else image).save(folder / f"{i}{suffix}")
    return root


def test_an_image_folder_reads_to_its_pixels_with_classes_named_by_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DPPLAT_CACHE", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "digits")
    info = data.dataset_info(str(root))
    assert (info.channels, info.size, info.classes) == (1, 28, CLASSES)
    assert (info.train_size, info.test_size) == (180, 45)
    arrays = data.load_arrays(str(root))
    mnist = data.load_arrays("mnist")
    first_seven = np.flatnonzero(mnist["y_train"] == 7)[0]
    files = sorted((root / "train" / "seven").iterdir())
    index = [p.name for p in files].index(f"{first_seven}.png")
    assert np.array_equal(arrays["x_train"][index], mnist["x_train"][first_seven])  # PNG is lossless
    assert arrays["y_train"][:60].tolist() == [0] * 60 and sorted(set(arrays["y_test"].tolist())) == [0, 1, 2]
    assert len(list((tmp_path / "cache" / "datasets").glob("imagefolder-*.npz"))) == 1


def test_a_changed_file_is_decoded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("DPPLAT_CACHE", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "digits", train=10, test=3)
    before = data.load_arrays(str(root))["x_train"][0].copy()
    target = sorted((root / "train" / "seven").iterdir())[0]
    Image.fromarray(np.full((28, 28), 255, dtype=np.uint8)).save(target)
    os.utime(target, ns=(1, 1))  # another modification time, whatever the clock's resolution
    after = data.load_arrays(str(root))["x_train"][0]
    assert not np.array_equal(before, after) and (after == 255).all()
    assert len(list((tmp_path / "cache" / "datasets").glob("imagefolder-*.npz"))) == 2


def test_colour_jpegs_read_as_three_channels(tmp_path, monkeypatch):
    monkeypatch.setenv("DPPLAT_CACHE", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "digits", train=5, test=2, rgb=True, suffix=".jpg")
    info = data.dataset_info(str(root))
    assert info.channels == 3 and data.load_dataset(str(root), "test").tensors[0].shape == (6, 3, 28, 28)


def test_an_image_folder_trains_from_the_cli_and_is_stored_by_absolute_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DPPLAT_CACHE", str(tmp_path / "cache"))
    image_folder(tmp_path / "digits", train=200, test=40)
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "s.db"
    assert main(["train", "--dataset", "digits", "--model", "cnn", "--epsilon", "8", "--delta", "1e-4",
                 "--epochs", "3", "--batch-size", "60", "--accountant", "rdp", "--quiet", "--store", str(store)]) == 0
    run = RunStore(store).get_run(1)
    assert run.dataset == str(tmp_path / "digits") and run["dataset_size"] == 600
    assert run.accuracy > 0.5  # three classes: chance is 33%


def _empty_class(root):
    for p in (root / "train" / "zero").iterdir():
        p.unlink()


def _odd_size(root):
    Image.new("L", (20, 28)).save(root / "train" / "three" / "odd.png")


def _test_only_class(root):
    (root / "test" / "eight").mkdir()
    Image.new("L", (28, 28)).save(root / "test" / "eight" / "1.png")


def _broken_image(root):
    (root / "test" / "three" / "broken.png").write_bytes(b"not a png")


@pytest.mark.parametrize("change,message", [
    (_empty_class, "zero holds no .png, .jpg or .jpeg file"),
    (_odd_size, "odd.png is 20x28 but the other images are 28x28"),
    (_test_only_class, "eight is a test class that the training split lacks"),
    (_broken_image, "broken.png cannot be read as an image"),
    (lambda root: (root / "test").rename(root / "validation"), "has no test/ folder"),
])
def test_a_bad_image_folder_gets_one_line_and_stores_nothing(tmp_path, monkeypatch, capsys, change, message):
    monkeypatch.setenv("DPPLAT_CACHE", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "digits", train=4, test=2)
    change(root)
    store = tmp_path / "s.db"
    assert main(["train", "--dataset", str(root), "--model", "mlp", "--epsilon", "8", "--delta", "1e-4",
                 "--epochs", "1", "--quiet", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert RunStore(store).runs() == []
