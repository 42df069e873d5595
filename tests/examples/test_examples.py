"""The examples run in the suite on tiny settings, so they never rot."""

import importlib.util
from pathlib import Path

import pytest

from dpplat.store import RunStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_with_budget(tmp_path, capsys):
    accuracy, statement = load("train_with_budget").main(
        ["--epsilon", "3", "--epochs", "1", "--subset", "2048", "--store", str(tmp_path / "s.db")]
    )
    assert statement.epsilon <= 3.0 and statement.steps == 8
    assert accuracy > 0.2
    assert "add/remove-one" in capsys.readouterr().out
    run = RunStore(tmp_path / "s.db").get_run(1)
    assert run.epsilon == pytest.approx(statement.epsilon)


def test_audit_a_model(tmp_path, capsys):
    results = load("audit_a_model").main(["--epsilon", "inf", "--models", "4", "--challenges", "32",
                                          "--base-size", "300", "--epochs", "8", "--workdir", str(tmp_path)])
    assert results["bayes"]["lower_bound"] > 0
    assert "claimed epsilon inf vs empirical lower bound" in capsys.readouterr().out


def test_attack_a_defense(tmp_path, capsys):
    outcomes = load("attack_a_defense").main(["--attack", "nes", "--images", "2", "--budget", "5000", "--epochs", "1",
                                              "--workdir", str(tmp_path)])
    assert all(r.stopped == "rejected" and not r.success for r in outcomes["standard"])
    assert any(r.success for r in outcomes["oars"])
    out = capsys.readouterr().out
    assert "Blacklight flags" in out and "nes oars" in out


def test_your_model_and_data(tmp_path, capsys, monkeypatch):
    from dpplat.models.imported import import_builder

    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    import_builder.cache_clear()
    result, report = load("your_model_and_data").main(["--epsilon", "8", "--epochs", "2", "--train-size", "1200",
                                                       "--audit-models", "2", "--folder", str(tmp_path)])
    run = RunStore(tmp_path / "dpplat.db").get_run(result.run_id)
    assert run.model == "your_model_and_data:small_cnn" and run.config["family"] == "user"
    assert run.dataset == str(tmp_path / "your_data.npz") and result.accuracy > 0.4  # 5 classes: chance is 20%
    assert report["models"] == 2 and RunStore(tmp_path / "dpplat.db").audits()[0]["status"] == "finished"
    assert "Review both: dpplat dashboard" in capsys.readouterr().out
