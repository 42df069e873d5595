"""A user's own model module and data, from a folder outside the package: trained, audited (dpplat's canaries drawn
from the user's data, and the user's own attack scores), and shown by the dashboard's pages under AppTest."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from dpplat.cli import main
from dpplat.store import RunStore
from tests.dashboard.test_app import open_page
from tests.data_store.test_image_folder import image_folder
from tests.data_store.test_user_data import user_npz

USER_MODULE = '''
from torch import nn


def tiny_cnn(num_classes, in_channels, image_size):
    """One strided convolution and a linear head, sized from the data."""
    side = (image_size - 4) // 2 + 1
    return nn.Sequential(nn.Conv2d(in_channels, 8, 4, stride=2), nn.GroupNorm(2, 8), nn.Tanh(), nn.Flatten(),
                         nn.Linear(8 * side * side, num_classes))
'''


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """The user's folder with their module in it (not installed), as the current folder."""
    (tmp_path / "user_nets.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DPPLAT_CACHE", str(tmp_path / "cache"))
    from dpplat.models.imported import import_builder

    import_builder.cache_clear()
    yield tmp_path
    sys.modules.pop("user_nets", None)
    import_builder.cache_clear()


def train_and_audit(store, dataset, canary):
    assert main(["train", "--dataset", dataset, "--model", "user_nets:tiny_cnn", "--epsilon", "8", "--delta", "1e-4",
                 "--epochs", "3", "--batch-size", "60", "--lr", "2", "--accountant", "rdp", "--quiet",
                 "--store", str(store)]) == 0
    run = RunStore(store).runs()[-1]
    assert run.model == "user_nets:tiny_cnn" and run.dataset == str(Path(dataset).resolve())
    assert main(["audit", "mia", "--run", str(run.id), "--models", "2", "--challenges", "8", "--base-size", "150",
                 "--epochs", "1", "--canary", canary, "--workers", "2", "--store", str(store)]) == 0
    return run


def test_a_users_module_and_npz_train_audit_and_show_on_the_dashboard(user_folder, monkeypatch, capsys):
    user_npz(user_folder / "digits.npz", train=600, test=200)
    store = user_folder / "s.db"
    run = train_and_audit(store, "digits.npz", "natural")
    assert run.accuracy > 0.5  # four classes: chance is 25%
    mia = RunStore(store).audits(kind="mia")[0]
    assert mia["status"] == "finished" and mia["params"]["canary"] == "natural" and mia["run_id"] == run.id

    rng = np.random.default_rng(0)
    np.savetxt(user_folder / "members.txt", rng.normal(1, 1, 300))
    np.savetxt(user_folder / "non_members.txt", rng.normal(0, 1, 300))
    assert main(["audit", "scores", "--members", "members.txt", "--non-members", "non_members.txt", "--run",
                 str(run.id), "--store", str(store), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["claimed_epsilon"] == pytest.approx(run.epsilon) and scores["audit_id"] == 2

    runs_page = open_page(monkeypatch, store)
    frame = runs_page.dataframe[0].value
    assert list(frame["id"]) == [run.id] and frame["dataset"].iloc[0] == str(user_folder / "digits.npz")
    assert frame["model"].iloc[0] == "user_nets:tiny_cnn"
    run_page = open_page(monkeypatch, store, "run")
    assert run_page.selectbox[0].value == run.id
    assert {m.label: m.value for m in run_page.metric}["epsilon spent"] == f"{run.epsilon:.3f}"
    audit_page = open_page(monkeypatch, store, "privacy_audit")
    options = audit_page.selectbox[0].options
    assert any("your scores, run 1" in o for o in options) and any("digits.npz, run 1" in o for o in options)
    assert "members and 300 non-members" in audit_page.caption[0].value  # the newest audit: the user's scores


def test_a_users_module_and_image_folder_train_audit_and_show_on_the_dashboard(user_folder, monkeypatch):
    image_folder(user_folder / "digits", train=150, test=30)
    store = user_folder / "s.db"
    run = train_and_audit(store, "digits", "mislabeled")
    assert run.accuracy > 0.5  # three classes: chance is 33%
    assert RunStore(store).audits()[0]["status"] == "finished"
    frame = open_page(monkeypatch, store).dataframe[0].value
    assert frame["dataset"].iloc[0] == str(user_folder / "digits")
    options = open_page(monkeypatch, store, "privacy_audit").selectbox[0].options
    assert options == [f"audit 1: {user_folder / 'digits'}, run 1, claimed epsilon 8.0"]
