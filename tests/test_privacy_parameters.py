"""Non-finite, degenerate and out-of-range privacy parameters: one clear line at once, by every door (CLI, recipe
file, Python API), and a noise multiplier of 0 is called what it is, never given a DP guarantee."""

import math
import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpplat import PrivacyEngine
from dpplat.cli import main
from dpplat.store import RunStore
from dpplat.training import TrainConfig

COMMON = ["train", "--dataset", "mnist", "--model", "mlp", "--epochs", "1", "--batch-size", "64", "--subset", "256",
          "--test-subset", "100", "--quiet", "--accountant", "prv"]


@pytest.mark.parametrize("args,message", [
    (["--sigma", "nan"], "must be a finite number"),
    (["--sigma", "inf"], "must be a finite number"),
    (["--sigma", "-1"], "must be a finite number >= 0"),
    (["--sigma", "0", "--epsilon", "2"], "--sigma 0 adds no noise"),
    (["--sigma", "0"], "--sigma 0 adds no noise"),  # the default budget (epsilon 2) cannot hold either
    (["--sigma", "1e-9", "--epsilon", "2"], "already spends epsilon"),
    (["--epsilon", "nan"], "must be a finite number"),
    (["--epsilon", "inf"], "an infinite --epsilon needs --sigma"),
    (["--epsilon", "2", "--delta", "nan"], "must be a finite number"),
    (["--epsilon", "2", "--lr", "nan"], "lr (--lr) must be a finite number"),
    (["--epsilon", "2", "--lr", "0"], "lr (--lr) must be > 0"),
    (["--epsilon", "2", "--max-grad-norm", "inf"], "max_grad_norm (--max-grad-norm) must be a finite number"),
    (["--epsilon", "2", "--momentum", "1.5"], "momentum (--momentum) must be >= 0 and < 1"),
    (["--epsilon", "2", "--seed", "-3"], "seed (--seed) must be >= 0"),
    (["--epsilon", "2", "--subset", "0"], "subset (--subset) must be >= 1"),
    (["--epsilon", "2", "--data-norm-noise", "nan"], "data_norm_noise (--data-norm-noise) must be a finite"),
])
def test_bad_numbers_get_one_line_at_once_and_store_nothing(tmp_path, capsys, args, message):
    store = tmp_path / "s.db"
    started = time.monotonic()
    assert main([*COMMON, "--store", str(store), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert time.monotonic() - started < 30, "refused at once, not after a long search"
    assert not store.exists() or RunStore(store).runs() == []


def test_sigma_zero_with_an_infinite_budget_trains_and_says_it_is_not_private(tmp_path, capsys):
    store = tmp_path / "s.db"
    assert main([*COMMON, "--store", str(store), "--sigma", "0", "--epsilon", "inf"]) == 0
    out = capsys.readouterr()
    run = RunStore(store).get_run(1)
    assert run.status == "finished" and run["steps"] == 4 and math.isinf(run.epsilon)
    assert "NOT DIFFERENTIALLY PRIVATE" in run["statement"] and "-differential privacy" not in run["statement"]
    assert "-DP" not in out.out and "warning: noise multiplier 0" in out.err


def test_the_python_api_and_recipe_files_check_the_same_values(tmp_path):
    with pytest.raises(ValueError, match="must be a finite number"):
        TrainConfig(sigma=float("nan"))
    with pytest.raises(ValueError, match="epochs .--epochs. must be an integer, got 'one'"):
        TrainConfig(epochs="one")
    recipe = tmp_path / "r.toml"
    recipe.write_text('dataset = "mnist"\nmodel = "mlp"\nepsilon = 2.0\nsigma = nan\n')
    with pytest.raises(ValueError, match="sigma .--sigma. must be a finite number"):
        TrainConfig.from_toml(recipe)
    model = nn.Linear(4, 2)
    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,))), batch_size=8)
    for sigma in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ValueError, match="finite number >= 0"):
            PrivacyEngine().make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                         data_loader=loader, noise_multiplier=sigma, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="no epsilon budget can hold"):
        PrivacyEngine().make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                     data_loader=loader, noise_multiplier=0.0, max_grad_norm=1.0,
                                     target_epsilon=2.0, target_delta=1e-5)


def test_a_tiny_noise_multiplier_reports_a_finite_upper_bound_instead_of_failing():
    """PRV cannot discretise sigma = 1e-9; the RDP bound (also an upper bound) stands in."""
    from dpplat.engine.accounting import epsilon_of, make_accountant

    epsilon = epsilon_of(make_accountant("prv"), 1e-5, [(1e-9, 0.1, 1)])
    assert epsilon > 1e6
    assert math.isinf(epsilon_of(make_accountant("prv"), 1e-5, [(0.0, 0.1, 3)]))


@pytest.mark.parametrize("secure", [False, True])
def test_the_privacy_statement_says_whether_secure_mode_was_on(secure):
    model = nn.Linear(4, 2)
    loader = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))), batch_size=8)
    engine = PrivacyEngine(accountant="rdp", secure_mode=secure)
    engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
                        noise_multiplier=1.0, max_grad_norm=1.0)
    text = str(engine.privacy_statement(1e-3))
    assert ("secure mode: noise and sampling from the OS CSPRNG" in text) == secure
    assert ("secure mode off" in text) == (not secure)


def test_audit_estimate_refuses_delta_zero_before_printing_anything(capsys):
    code = main(["audit", "estimate", "--fp", "1", "--fn", "1", "--negatives", "10", "--positives", "10",
                 "--delta", "0"])
    out = capsys.readouterr()
    assert code == 2 and out.out == "" and "delta must be in (0, 1)" in out.err
