"""A validation share held out of the training set: disjoint and seeded, not trained on, and what the run reports."""

import pytest
import torch
from torch.utils.data import TensorDataset

from dpplat import data
from dpplat.cli import main
from dpplat.holdout import hold_out
from dpplat.store import RunStore
from dpplat.training import TrainConfig, evaluate, train


def test_the_held_out_share_is_disjoint_from_the_rest_and_fixed_by_the_seed():
    examples = TensorDataset(torch.arange(100.0)[:, None], torch.arange(100))
    kept, held = hold_out(examples, 0.2, seed=3)
    assert (len(kept), len(held)) == (80, 20)
    kept_ids, held_ids = set(kept.tensors[1].tolist()), set(held.tensors[1].tolist())
    assert not kept_ids & held_ids and kept_ids | held_ids == set(range(100))
    assert torch.equal(kept.tensors[0][:, 0].long(), kept.tensors[1])  # images stay with their labels
    assert torch.equal(hold_out(examples, 0.2, seed=3)[1].tensors[1], held.tensors[1])
    assert not torch.equal(hold_out(examples, 0.2, seed=4)[1].tensors[1], held.tensors[1])
    with pytest.raises(ValueError, match="at least one example on each side"):
        hold_out(examples, 0.001, seed=0)


def test_a_run_with_a_validation_share_trains_on_the_rest_and_reports_the_held_out_accuracy(tmp_path):
    config = TrainConfig(subset=1000, validation=0.2, epochs=1, batch_size=100, epsilon=3.0, accountant="rdp")
    result = train(config, store=RunStore(tmp_path / "s.db"), quiet=True)
    run = RunStore(tmp_path / "s.db").get_run(result.run_id)
    assert run["dataset_size"] == 800 and run["steps"] == 8  # N is what is trained on: the held-out share is not
    _, held = hold_out(data.load_dataset("mnist", "train", subset=1000, seed=0), 0.2, seed=0)
    assert result.accuracy == evaluate(result.model, held) == run.accuracy


def test_the_cli_names_the_split_it_measured_and_refuses_a_share_outside_0_1(tmp_path, capsys):
    args = ["train", "--subset", "600", "--epochs", "1", "--batch-size", "100", "--accountant", "rdp"]
    assert main([*args, "--validation", "0.25", "--store", str(tmp_path / "a.db")]) == 0
    assert "Validation accuracy:" in capsys.readouterr().out
    assert main([*args, "--validation", "1", "--store", str(tmp_path / "b.db"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--validation" in err[0]
    assert not (tmp_path / "b.db").exists() or RunStore(tmp_path / "b.db").runs() == []
