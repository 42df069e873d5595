"""A user's own .npz: layouts detected, shapes and classes read from the data, trained and audited end to end;
bad files get one line and store nothing."""

import numpy as np
import pytest

from dpplat import data
from dpplat.cli import main
from dpplat.store import RunStore


def user_npz(path, *, layout="nchw", dtype="float", classes=4, train=600, test=200):
    """A user's dataset built from MNIST: the first ``classes`` digits, 20x20 crops, in the given layout."""
    arrays = data.load_arrays("mnist")
    out = {}
    for split, n in (("train", train), ("test", test)):
        keep = np.flatnonzero(arrays[f"y_{split}"] < classes)[:n]
        x = arrays[f"x_{split}"][keep][:, 4:24, 4:24]
        x = x.astype(np.float32) / 255 if dtype == "float" else x
        x = {"nhw": x, "nhwc": x[..., None], "nchw": x[:, None]}[layout]
        out[f"x_{split}"], out[f"y_{split}"] = x, arrays[f"y_{split}"][keep].astype(np.int32)
    np.savez(path, **out)
    return path


@pytest.mark.parametrize("layout,dtype", [("nchw", "float"), ("nhwc", "uint8"), ("nhw", "uint8")])
def test_layouts_and_dtypes_read_to_the_same_images(tmp_path, layout, dtype):
    path = user_npz(tmp_path / f"{layout}.npz", layout=layout, dtype=dtype)
    info = data.dataset_info(str(path))
    assert (info.channels, info.size, len(info.classes)) == (1, 20, 4)
    x, y = data.load_dataset(str(path), "train").tensors
    assert x.shape == (600, 1, 20, 20) and set(y.tolist()) == {0, 1, 2, 3}
    reference = user_npz(tmp_path / "ref.npz", layout="nhw", dtype="uint8")
    assert np.allclose(x.numpy(), data.load_dataset(str(reference), "train").tensors[0].numpy(), atol=1e-6)


def test_a_users_npz_trains_audits_and_is_stored_by_absolute_path(tmp_path, monkeypatch, capsys):
    user_npz(tmp_path / "digits.npz")
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "s.db"
    assert main(["train", "--dataset", "digits.npz", "--model", "cnn", "--epsilon", "8", "--delta", "1e-4",
                 "--epochs", "2", "--batch-size", "64", "--accountant", "rdp", "--quiet", "--store", str(store)]) == 0
    run = RunStore(store).get_run(1)
    assert run.dataset == str(tmp_path / "digits.npz") and run["dataset_size"] == 600
    assert run.accuracy > 0.5  # four digit classes: chance is 25%
    assert main(["audit", "mia", "--run", str(run.id), "--models", "2", "--challenges", "8", "--base-size", "200",
                 "--epochs", "1", "--workers", "1", "--store", str(store)]) == 0
    assert RunStore(store).audits()[-1]["status"] == "finished"


@pytest.mark.parametrize("change,message", [
    (lambda a: a.pop("y_test"), "lacks y_test"),
    (lambda a: a.update(y_test=a["y_test"] + 7), "outside 0..3"),
    (lambda a: a.update(y_train=a["y_train"][:-5]), "holds 600 images but y_train has shape (595,)"),
    (lambda a: a.update(x_train=a["x_train"] * 3), "not within [0, 1]"),
    (lambda a: a.update(x_train=a["x_train"][:, :, :, :15]), "dpplat's models take square images"),
])
def test_a_bad_npz_gets_one_line_and_stores_nothing(tmp_path, capsys, change, message):
    good = dict(np.load(user_npz(tmp_path / "good.npz")))
    change(good)
    np.savez(tmp_path / "bad.npz", **good)
    store = tmp_path / "s.db"
    for command in (["train", "--model", "mlp", "--epsilon", "8", "--delta", "1e-4", "--epochs", "1", "--quiet"],
                    ["audit", "mia", "--models", "2", "--challenges", "8", "--base-size", "100"]):
        assert main([*command, "--dataset", str(tmp_path / "bad.npz"), "--store", str(store)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert RunStore(store).runs() == [] and RunStore(store).audits() == []


def test_a_missing_file_is_named(tmp_path, capsys):
    assert main(["train", "--dataset", str(tmp_path / "nope.npz"), "--model", "mlp", "--epsilon", "8",
                 "--store", str(tmp_path / "s.db")]) == 2
    assert "nope.npz does not exist" in capsys.readouterr().err


def test_a_defense_audit_runs_on_a_small_users_npz(tmp_path, capsys):
    """Every draw (target training set, attacked and benign images) is capped by what the user's file holds."""
    path = user_npz(tmp_path / "digits.npz", train=1500, test=300)
    store = tmp_path / "s.db"
    assert main(["audit", "oars", "--dataset", str(path), "--model", "mlp", "--defense", "blacklight", "--attack",
                 "square", "--mode", "standard", "--images", "1", "--budget", "200", "--workers", "1",
                 "--store", str(store)]) == 0
    audit = RunStore(store).audits()[0]
    assert audit["status"] == "finished" and audit["results"]["defenses"]["blacklight"]["benign_images"] == 300
    assert audit["results"]["summaries"][0]["images"] == 1
