"""Resuming a run never reports less epsilon than it spent: checkpoints carry their store and run, and the
store's count of started steps rebuilds the accountant."""

import shutil

import pytest
import torch
from opacus.accountants import create_accountant

from dpplat import data
from dpplat.checkpoints import CheckpointError, checkpoint_path
from dpplat.cli import main
from dpplat.store import RunStore
from dpplat.training import TrainConfig, train
from tests.test_train_cli import CrashingDataset

SIGMA, STEPS_PER_EPOCH = 1.0, 8  # 512 examples at batch 64: q = 1/8


def config(**changes) -> TrainConfig:
    base = dict(dataset="mnist", model="mlp", sigma=SIGMA, epsilon=None, epochs=2, batch_size=64, subset=512,
                test_subset=200, accountant="rdp", seed=0)
    return TrainConfig(**{**base, **changes})


def crash(store: RunStore, after_steps: float, **changes) -> int:
    """Start a run that dies while loading the batch after about ``after_steps`` steps; returns its id."""
    base = data.load_dataset("mnist", subset=512, seed=0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config(**changes), store=store, quiet=True,
              train_set=CrashingDataset(base, fail_after=int(after_steps * 64)))
    return store.runs()[-1].id


def rdp_epsilon(steps: int, sigma: float = SIGMA) -> float:
    accountant = create_accountant("rdp")
    accountant.history = [(sigma, 1 / STEPS_PER_EPOCH, steps)]
    return accountant.get_epsilon(delta=1e-5)


def recorded_epsilon(store: RunStore, run_id: int) -> float:
    return max(s["epsilon"] for s in store.steps(run_id) if s["epsilon"] is not None)


def test_two_stores_in_one_folder_keep_their_own_checkpoints(tmp_path):
    """Run 1 of X.db and run 1 of Y.db: a resume of X continues X, never Y."""
    x = RunStore(tmp_path / "X.db")
    crash(x, 11)
    spent_x = x.get_run(1)["spent_steps"]
    y = RunStore(tmp_path / "Y.db")
    train(config(sigma=4.0), store=y, quiet=True)  # a quieter run, finished, in the same folder
    assert checkpoint_path(x, 1) != checkpoint_path(y, 1) and x.store_id != y.store_id
    before = recorded_epsilon(x, 1)
    result = train(None, store=x, quiet=True, resume=1)
    assert result.status == "finished" and result.steps == 16
    assert result.epsilon >= before
    assert result.epsilon == pytest.approx(rdp_epsilon(spent_x + 16 - STEPS_PER_EPOCH))
    assert result.epsilon != pytest.approx(y.get_run(1).epsilon)


def _refused(store: RunStore, run_id: int, match: str) -> None:
    path = checkpoint_path(store, run_id)
    before = path.read_bytes() if path.exists() else None
    row = store.get_run(run_id).row
    with pytest.raises(CheckpointError, match=match):
        train(None, store=store, quiet=True, resume=run_id)
    assert (path.read_bytes() if path.exists() else None) == before, "a refused checkpoint is left as it is"
    after = store.get_run(run_id).row
    assert {k: after[k] for k in ("spent_steps", "steps", "epsilon", "checkpoint_step")} == \
        {k: row[k] for k in ("spent_steps", "steps", "epsilon", "checkpoint_step")}


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    store = RunStore(tmp_path / "s.db")
    crash(store, 11)
    crash(store, 11, sigma=4.0)
    shutil.copyfile(checkpoint_path(store, 2), checkpoint_path(store, 1))
    _refused(store, 1, "belongs to run 2")


def test_a_checkpoint_of_another_store_is_refused(tmp_path):
    x, y = RunStore(tmp_path / "X.db"), RunStore(tmp_path / "Y.db")
    crash(x, 11)
    crash(y, 11)
    shutil.copyfile(checkpoint_path(y, 1), checkpoint_path(x, 1))
    _refused(x, 1, "belongs to another store")


def test_a_truncated_checkpoint_is_refused(tmp_path):
    store = RunStore(tmp_path / "s.db")
    crash(store, 11)
    path = checkpoint_path(store, 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _refused(store, 1, "cannot be read")


def test_a_checkpoint_with_a_truncated_accountant_history_is_refused(tmp_path):
    store = RunStore(tmp_path / "s.db")
    crash(store, 11)
    path = checkpoint_path(store, 1)
    state = torch.load(path, weights_only=False)
    state["accountant"]["history"] = [(SIGMA, 1 / STEPS_PER_EPOCH, 3)]  # 3 steps, for a checkpoint at step 8
    torch.save(state, path)
    _refused(store, 1, "truncated accountant history")


def test_a_checkpoint_from_an_older_step_is_refused(tmp_path):
    store = RunStore(tmp_path / "s.db")
    crash(store, 11, epochs=3)
    old = tmp_path / "epoch-1.pt"
    shutil.copyfile(checkpoint_path(store, 1), old)
    base = data.load_dataset("mnist", subset=512, seed=0)
    with pytest.raises(RuntimeError, match="simulated crash"):  # epoch 2 ends and checkpoints; epoch 3 crashes
        train(None, store=store, quiet=True, resume=1, train_set=CrashingDataset(base, fail_after=10 * 64))
    assert store.get_run(1)["checkpoint_step"] == 16
    shutil.copyfile(old, checkpoint_path(store, 1))
    _refused(store, 1, "older than the checkpoint at step 16")


def test_a_second_crash_after_resuming_keeps_every_started_step_charged(tmp_path):
    """Started steps only go up: a resumed run that crashes again still owes the steps of both attempts."""
    store = RunStore(tmp_path / "s.db")
    crash(store, 11)
    first = store.get_run(1)["spent_steps"]
    assert first > STEPS_PER_EPOCH
    base = data.load_dataset("mnist", subset=512, seed=0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(None, store=store, quiet=True, resume=1, train_set=CrashingDataset(base, fail_after=3 * 64))
    run = store.get_run(1)
    second = run["spent_steps"]
    assert second == first + (run["steps"] - STEPS_PER_EPOCH) and second > first
    assert run.epsilon == pytest.approx(rdp_epsilon(second))
    result = train(None, store=store, quiet=True, resume=1)
    assert result.steps == 16
    assert store.get_run(1)["spent_steps"] == second + 16 - STEPS_PER_EPOCH
    assert result.epsilon == pytest.approx(rdp_epsilon(second + 16 - STEPS_PER_EPOCH))
    epsilons = [s["epsilon"] for s in store.steps(1) if s["epsilon"] is not None]
    assert result.epsilon >= max(epsilons) - 1e-12


def test_a_run_without_a_checkpoint_restarts_from_step_zero_with_its_steps_charged(tmp_path):
    store = RunStore(tmp_path / "s.db")
    crash(store, 5)  # before the first checkpoint at step 8
    run = store.get_run(1)
    assert run["checkpoint_step"] is None and 0 < run["spent_steps"] < STEPS_PER_EPOCH
    result = train(None, store=store, quiet=True, resume=1)
    assert result.status == "finished" and result.steps == 16
    assert result.epsilon == pytest.approx(rdp_epsilon(run["spent_steps"] + 16))


def test_resumed_steps_draw_fresh_noise(tmp_path):
    """The steps retaken after a crash do not replay the noise their first attempt released."""
    store = RunStore(tmp_path / "s.db")
    crash(store, 11)
    checkpoint = torch.load(checkpoint_path(store, 1), weights_only=False)
    from dpplat.resume import _reseed
    from dpplat.training import make_private_model

    cfg = config()
    _, engine, (_, optimizer, loader) = make_private_model(cfg, data.load_dataset("mnist", subset=512, seed=0))
    optimizer.generator.set_state(checkpoint["noise_rng"])
    replayed = torch.randn(5, generator=optimizer.generator)
    optimizer.generator.set_state(checkpoint["noise_rng"])
    _reseed(engine, loader, cfg.seed, store.get_run(1)["spent_steps"])
    assert not torch.equal(torch.randn(5, generator=optimizer.generator), replayed)


def test_cli_resume_refuses_flags_and_finished_runs(tmp_path, capsys):
    store = tmp_path / "s.db"
    args = ["train", "--dataset", "mnist", "--model", "mlp", "--sigma", "1.0", "--epsilon", "inf", "--epochs", "1",
            "--batch-size", "64", "--subset", "256", "--test-subset", "100", "--store", str(store), "--quiet",
            "--accountant", "rdp"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "1", "--store", str(store), "--epochs", "3"]) == 2
    assert "drop --epochs" in capsys.readouterr().err
    assert main(["train", "--resume", "1", "--store", str(store)]) == 2
    assert "run 1 is finished: there is nothing to resume" in capsys.readouterr().err
