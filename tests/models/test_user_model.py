"""A user's own model named by ``module:function``, from a file outside the package: trained, resumed, audited by
spawned workers and reloaded; bad paths and bad builders get one line and store nothing."""

import sys

import pytest
import torch

from dpplat.cli import main
from dpplat.store import RunStore

USER_MODULE = '''
from torch import nn


def small_mlp(num_classes, in_channels, image_size):
    """Two linear layers on the flattened image."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 32), nn.Tanh(),
                         nn.Linear(32, num_classes))


def with_batch_norm(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                         nn.Linear(4 * (image_size - 2) ** 2, num_classes))


def not_a_module(num_classes, in_channels, image_size):
    return "a string"


LAYERS = 3
'''


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """The user's folder, holding their module (not installed, not in the package) and their store."""
    (tmp_path / "my_models.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    from dpplat.models.imported import import_builder

    import_builder.cache_clear()
    yield tmp_path
    sys.modules.pop("my_models", None)
    import_builder.cache_clear()


TRAIN = ["train", "--dataset", "mnist", "--model", "my_models:small_mlp", "--epsilon", "4", "--epochs", "1",
         "--batch-size", "64", "--subset", "512", "--test-subset", "200", "--accountant", "rdp", "--quiet"]


def test_a_model_from_the_users_own_file_trains_resumes_audits_and_reloads(user_folder, capsys):
    store = user_folder / "s.db"
    assert main([*TRAIN, "--store", str(store)]) == 0
    run = RunStore(store).get_run(1)
    assert run.model == "my_models:small_mlp" and run.config["family"] == "user" and run.status == "finished"
    assert run.accuracy > 0.3

    from dpplat.audits.target import load_run_model

    loaded, _ = load_run_model(RunStore(store), 1)
    assert isinstance(loaded.model[1], torch.nn.Linear) and loaded.model[1].in_features == 784

    sys.modules.pop("my_models", None)  # the audit's spawned workers import it afresh, from the current folder
    assert main(["audit", "mia", "--run", "1", "--models", "2", "--challenges", "8", "--base-size", "200",
                 "--epochs", "1", "--workers", "2", "--store", str(store)]) == 0
    audit = RunStore(store).audits()[0]
    assert audit["status"] == "finished" and audit["params"]["train"]["model"] == "my_models:small_mlp"


def test_ray_workers_import_the_users_model_from_the_drivers_import_folders(user_folder, monkeypatch):
    """The module sits in a folder the user's script put on sys.path, not in the current folder."""
    pytest.importorskip("ray", reason="Ray is installed with the test extras (pip install -e '.[test]')")
    import ray

    from dpplat.audits.mia import MIAConfig, run_mia
    from dpplat.training import TrainConfig

    (user_folder / "lib").mkdir()
    (user_folder / "lib" / "lib_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(user_folder / "lib"))
    train = TrainConfig(model="lib_models:small_mlp", epochs=1, batch_size=64, accountant="rdp")
    config = MIAConfig(dataset="mnist", epsilon=8.0, models=2, challenges=8, base_size=200, train=train,
                       backend="ray")
    try:
        results = run_mia(config, user_folder / "ray-work")
    finally:
        ray.shutdown()
        sys.modules.pop("lib_models", None)
    assert results["models"] == 2 and len(list((user_folder / "ray-work").glob("model-*.npz"))) == 2


@pytest.mark.parametrize("model,message", [
    ("no_such_module:build", "cannot import no_such_module"),
    ("my_models:missing", "my_models has no attribute 'missing'"),
    ("my_models:LAYERS", "is a int, not a function"),
    ("my_models:not_a_module", "returned a str, not a torch.nn.Module"),
    ("my_models:with_batch_norm", "is BatchNorm2d"),
    ("my models:x", "neither a zoo name nor an import path"),
])
def test_a_bad_import_path_or_builder_gets_one_line_and_stores_nothing(user_folder, capsys, model, message):
    store = user_folder / "s.db"
    args = [*TRAIN, "--store", str(store)]
    args[args.index("my_models:small_mlp")] = model
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert RunStore(store).runs() == []
