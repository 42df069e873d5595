"""Shipped recipes and audit plans are found by name from any folder; ``dpplat recipes`` and ``dpplat audit plans``
list them with what they measured."""

from pathlib import Path

import pytest

import dpplat
from dpplat.audits.plans import load_plan
from dpplat.cli import main
from dpplat.shipped import available, resolve
from dpplat.training import TrainConfig

ROOT = Path(dpplat.__file__).resolve().parents[1]


def test_recipes_lists_every_shipped_recipe_with_its_measured_accuracy(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for path in (ROOT / "models").glob("*.toml"):
        assert path.stem in out
    row = next(line for line in out.splitlines() if line.startswith("mnist-scatnet-linear-eps1 "))
    accuracy = available("recipe")[[r.name for r in available("recipe")].index("mnist-scatnet-linear-eps1")]
    assert f"{accuracy.settings['result']['test_accuracy']:.2%}" in row


def test_audit_plans_lists_every_shipped_plan(capsys):
    assert main(["audit", "plans"]) == 0
    out = capsys.readouterr().out
    assert {p.stem for p in (ROOT / "audits").glob("*.toml")} <= {line.split()[0] for line in out.splitlines()
                                                                    if line.strip()}


def test_a_bare_name_or_the_documented_path_resolves_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve("recipe", "mnist-cnn-eps1") == ROOT / "models" / "mnist-cnn-eps1.toml"
    assert resolve("recipe", "models/mnist-cnn-eps1.toml") == ROOT / "models" / "mnist-cnn-eps1.toml"
    assert TrainConfig.from_toml("mnist-cnn-eps1", epochs=1).model == "cnn"
    assert load_plan("mnist-eps8.toml").epsilon == 8.0
    (tmp_path / "mnist-cnn-eps1").write_text('dataset = "mnist"\nmodel = "mlp"\n')  # a file of that name wins
    assert TrainConfig.from_toml("mnist-cnn-eps1").model == "mlp"


def test_an_unknown_name_gets_one_line_listing_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "mnist-cnn-eps100", "--store", str(tmp_path / "s.db")]) == 2
    err = capsys.readouterr().err
    assert "recipe mnist-cnn-eps100 is neither a file nor the name of a shipped recipe" in err
    assert "mnist-cnn-eps1" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(FileNotFoundError, match="dpplat audit plans lists them"):
        load_plan("no-such-plan")
