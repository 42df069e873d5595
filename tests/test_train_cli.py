"""End-to-end ``dpplat train`` on a small MNIST subset, budget stop, resume after a crash, bad inputs."""

import pytest
import torch
from opacus.accountants import create_accountant

from dpplat import data
from dpplat.cli import main
from dpplat.store import RunStore
from dpplat.training import TrainConfig, train


def test_train_writes_a_run_to_a_temporary_store(tmp_path, capsys):
    store = tmp_path / "runs.db"
    code = main(["train", "--dataset", "mnist", "--model", "cnn", "--epsilon", "3", "--delta", "1e-5",
                 "--epochs", "1", "--batch-size", "128", "--max-grad-norm", "1.0", "--subset", "2048",
                 "--test-subset", "500", "--store", str(store), "--seed", "1", "--accountant", "rdp"])
    out = capsys.readouterr().out
    assert code == 0
    assert "add/remove-one" in out and f"stored in {store.resolve()}" in out
    run = RunStore(store).get_run(1)
    assert run.status == "finished" and run["steps"] == 16
    assert 0 < run.epsilon <= 3.0
    assert run.accuracy > 0.3  # 16 noisy steps on 2k images: far above the 10% of chance
    steps = RunStore(store).steps(1)
    assert steps[-1]["epsilon"] == pytest.approx(run.epsilon)
    assert all(a["epsilon"] <= b["epsilon"] for a, b in zip(steps, steps[1:]))
    assert "(" + f"{run.epsilon:.3f}" in run["statement"]


def test_sigma_with_budget_stops_before_exceeding(tmp_path, capsys):
    store = tmp_path / "runs.db"
    code = main(["train", "--dataset", "mnist", "--model", "mlp", "--sigma", "3.0", "--epsilon", "1.0",
                 "--delta", "1e-5", "--epochs", "5", "--batch-size", "256", "--subset", "1024",
                 "--test-subset", "200", "--store", str(store), "--accountant", "rdp"])
    out = capsys.readouterr().out
    assert code == 0 and "privacy budget epsilon = 1.0 was reached" in out
    run = RunStore(store).get_run(1)
    assert run.status == "budget_exhausted" and run.epsilon <= 1.0 and run["steps"] == 5
    over = create_accountant("rdp")
    over.history = [(3.0, 0.25, run["steps"] + 1)]
    assert over.get_epsilon(delta=1e-5) > 1.0


class CrashingDataset(torch.utils.data.Dataset):
    """Raises after a number of item reads, like a process killed mid-epoch."""

    def __init__(self, inner, fail_after):
        self.inner, self.reads, self.fail_after = inner, 0, fail_after

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > self.fail_after:
            raise RuntimeError("simulated crash")
        return self.inner[i]


def test_resume_after_crash_counts_every_started_step(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    config = TrainConfig(dataset="mnist", model="mlp", sigma=1.0, epsilon=None, epochs=2, batch_size=64,
                         subset=512, test_subset=200, accountant="rdp", seed=0)
    base = data.load_dataset("mnist", subset=512, seed=0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, store=store, quiet=True, train_set=CrashingDataset(base, fail_after=11 * 64))
    run = store.get_run(1)
    assert run.status == "interrupted"
    started = run["steps"]
    assert started > 8  # the crash came after the checkpoint at the end of epoch 1 (8 steps)
    result = train(config, store=store, quiet=True, resume=1)
    assert result.status == "finished" and result.steps == 16
    reference = create_accountant("rdp")
    reference.history = [(1.0, 1 / 8, 16 + (started - 8))]  # lost steps stay charged
    assert result.epsilon == pytest.approx(reference.get_epsilon(delta=1e-5))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--epsilon", "0"], "epsilon (--epsilon) must be > 0"),
        (["--epsilon", "-2"], "epsilon (--epsilon) must be > 0"),
        (["--epsilon", "1", "--delta", "0"], "delta must be in"),
        (["--epsilon", "1", "--delta", "1.5"], "delta must be in"),
        (["--epsilon", "1", "--model", "resnet-1000"], "unknown model"),
        (["--epsilon", "1", "--device", "gpu"], "--device must be"),
    ],
)
def test_bad_inputs_exit_2_with_a_clear_message(tmp_path, capsys, args, message):
    code = main(["train", "--subset", "256", "--store", str(tmp_path / "s.db"), "--quiet", *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_data_file_and_corrupt_store(tmp_path, capsys):
    assert main(["train", "--dataset", "cifar10-jpeg", "--data-dir", str(tmp_path), "--store", str(tmp_path / "s.db"),
                 "--quiet"]) == 2
    assert "cifar10_jpeg.npz is missing" in capsys.readouterr().err
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"definitely not sqlite" * 50)
    assert main(["train", "--subset", "256", "--store", str(bad), "--quiet"]) == 2
    assert "not a dpplat store" in capsys.readouterr().err
    assert bad.read_bytes() == b"definitely not sqlite" * 50


@pytest.mark.parametrize("delta", ["0.01", str(1 / 256)])
def test_delta_at_or_above_one_over_n_is_refused_unless_allowed(tmp_path, capsys, delta):
    args = ["train", "--subset", "256", "--test-subset", "100", "--epsilon", "5", "--delta", delta,
            "--batch-size", "128", "--store", str(tmp_path / "s.db"), "--quiet", "--model", "mlp"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "is at least 1/N" in err and "--allow-large-delta" in err and len(err.strip().splitlines()) == 1
    assert RunStore(tmp_path / "s.db").runs() == []  # refused before anything is stored
    assert main([*args, "--allow-large-delta"]) == 0
    assert "warning: delta" in capsys.readouterr().err


def test_config_file_with_flag_overrides(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('dataset = "mnist"\nmodel = "mlp"\nepsilon = 4.0\nepochs = 1\nbatch_size = 128\n'
                      'subset = 512\ntest_subset = 100\n[result]\naccuracy = 0.5\n')
    config = TrainConfig.from_toml(recipe, epsilon=2.0)
    assert (config.model, config.epsilon, config.batch_size) == ("mlp", 2.0, 128)
    assert config.extra == {"result": {"accuracy": 0.5}}
    assert main(["train", "--config", str(recipe), "--store", str(tmp_path / "s.db"), "--quiet"]) == 0


def test_demo_trains_audits_and_prints_the_dashboard_command(tmp_path, capsys):
    store = tmp_path / "demo.db"
    assert main(["demo", "--store", str(store), "--epochs", "1", "--subset", "2048", "--audit-models", "3"]) == 0
    out = capsys.readouterr().out
    assert "Test accuracy" in out and "Claimed epsilon: 2" in out and "Bayesian" in out
    assert f"dashboard --store {store.resolve()}" in out
    s = RunStore(store)
    assert s.get_run(1).status == "finished" and s.audits(run_id=1)[0]["status"] == "finished"


def test_augmentation_multiplicity_and_ema(tmp_path, capsys):
    """K views per example cost no privacy: epsilon equals the K = 1 run's; EMA weights are evaluated."""
    common = ["train", "--dataset", "mnist", "--model", "mlp", "--sigma", "1.0", "--epsilon", "50", "--epochs", "1",
              "--batch-size", "128",
              "--subset", "512", "--test-subset", "200", "--accountant", "rdp", "--quiet"]
    assert main([*common, "--store", str(tmp_path / "a.db")]) == 0
    assert main([*common, "--store", str(tmp_path / "b.db"), "--augmult", "4", "--ema-decay", "0.9"]) == 0
    plain, augmented = RunStore(tmp_path / "a.db").get_run(1), RunStore(tmp_path / "b.db").get_run(1)
    assert augmented.epsilon == pytest.approx(plain.epsilon)
    assert augmented.config["augmult"] == 4 and augmented.status == "finished"
    checkpoint = RunStore(tmp_path / "b.db").artifacts(1, kind="checkpoint")[0]["path"]
    extra = torch.load(checkpoint, weights_only=False)["extra"]
    assert set(extra["ema"]) == {name for name, _ in build_model_names()}


def test_ema_weights_are_what_the_run_reports_returns_and_stores(tmp_path):
    """With EMA, the accuracy, the returned model and the stored model are all the average, not the last step."""
    from dpplat.audits.target import load_run_model
    from dpplat.training import evaluate

    config = TrainConfig(dataset="mnist", model="mlp", sigma=1.0, epsilon=50, epochs=1, batch_size=128, subset=512,
                         test_subset=200, accountant="rdp", ema_decay=0.5, optimizer="adam", lr=1e-2)
    store = RunStore(tmp_path / "runs.db")
    result = train(config, store=store, quiet=True)
    test_set = data.load_dataset("mnist", "test", subset=200, seed=0)
    assert evaluate(result.model, test_set) == pytest.approx(result.accuracy)
    loaded, _ = load_run_model(store, result.run_id)
    with torch.no_grad():
        assert torch.allclose(loaded.model(test_set.tensors[0]), result.model.eval()(test_set.tensors[0]))
    last_step = torch.load(store.artifacts(result.run_id, kind="checkpoint")[0]["path"], weights_only=False)["module"]
    averaged = result.model.state_dict()
    assert any(not torch.allclose(averaged[k], v) for k, v in last_step.items()), "EMA equals the last step's weights"


def build_model_names():
    from dpplat.models import create

    return create("mlp").state_dict().items()
