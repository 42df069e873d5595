"""The learning-rate schedule: a function of the step alone, validated when the config is built, and continued
where it stopped when a crashed run resumes."""

import math

import pytest

from dpplat import data, training
from dpplat.cli import main
from dpplat.store import RunStore
from dpplat.training import TrainConfig, train
from tests.test_resume import config, crash


def test_cosine_decays_from_lr_to_zero_and_constant_keeps_lr():
    cosine = config(lr=0.2, lr_schedule="cosine")
    assert cosine.learning_rate(0, 100) == pytest.approx(0.2)
    assert cosine.learning_rate(50, 100) == pytest.approx(0.1)
    assert cosine.learning_rate(25, 100) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)))
    assert cosine.learning_rate(100, 100) == pytest.approx(0.0, abs=1e-15)
    rates = [cosine.learning_rate(s, 100) for s in range(100)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert {config(lr=0.2).learning_rate(s, 100) for s in (0, 50, 99)} == {0.2}


def test_an_unknown_schedule_is_refused_with_the_choices(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"lr_schedule \(--lr-schedule\) must be one of 'constant', 'cosine'"):
        config(lr_schedule="step")
    recipe = tmp_path / "r.toml"
    recipe.write_text('dataset = "mnist"\nmodel = "mlp"\nepsilon = 1.0\nlr_schedule = "linear"\n')
    code = main(["train", "--config", str(recipe), "--store", str(tmp_path / "s.db"), "--quiet"])
    assert code == 2 and "lr_schedule (--lr-schedule) must be one of" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists() or RunStore(tmp_path / "s.db").runs() == []


def record_rates(monkeypatch) -> list[float]:
    """The learning rate the training loop sets before each step, in order."""
    rates: list[float] = []
    set_rate = training.set_learning_rate

    def recording(optimizer, lr):
        set_rate(optimizer, lr)
        rates.append(optimizer.param_groups[0]["lr"])

    monkeypatch.setattr(training, "set_learning_rate", recording)
    return rates


def test_each_step_trains_at_the_scheduled_rate(tmp_path, monkeypatch):
    rates = record_rates(monkeypatch)
    cfg = config(lr=0.5, lr_schedule="cosine")
    result = train(cfg, store=RunStore(tmp_path / "s.db"), quiet=True)
    assert result.steps == 16 and rates == pytest.approx([cfg.learning_rate(s, 16) for s in range(16)])
    assert rates[0] == pytest.approx(0.5) and rates[-1] < 0.01


def test_a_resumed_run_continues_the_schedule_from_its_checkpoint(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "s.db")
    crash(store, 11, lr=0.5, lr_schedule="cosine")  # the checkpoint is at step 8
    rates = record_rates(monkeypatch)
    result = train(None, store=store, quiet=True, resume=1)
    assert result.steps == 16
    assert rates == pytest.approx([config(lr=0.5, lr_schedule="cosine").learning_rate(s, 16) for s in range(8, 16)])
    assert TrainConfig.from_stored(store.get_run(1).config).lr_schedule == "cosine"


def test_audit_training_follows_the_schedule_too(monkeypatch):
    """``fit`` (the loop audits use) trains each step at the scheduled rate, private or not."""
    cfg = config(lr=0.5, lr_schedule="cosine", epochs=1)
    train_set = data.load_dataset("mnist", subset=512, seed=0)
    for private in (True, False):
        rates = record_rates(monkeypatch)
        training.fit(cfg, train_set, private=private)
        assert rates == pytest.approx([cfg.learning_rate(s, 8) for s in range(8)])
