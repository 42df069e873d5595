"""The canary game end to end on an MNIST subset, the audit CLI, plans and bad inputs."""

import dataclasses
import math

import numpy as np
import torch
import pytest

from dpplat.audits.mia import MIAConfig, run_mia
from dpplat.audits.plans import load_plan
from dpplat.audits.roc import roc_curve
from dpplat.cli import main
from dpplat.store import RunStore
from dpplat.training import TrainConfig


def tiny(epsilon, **kw):
    train = TrainConfig(model="mlp", epochs=12, batch_size=64, lr=0.1 if math.isinf(epsilon) else 0.5,
                        momentum=0.9, max_grad_norm=1.0, accountant="rdp")
    return MIAConfig(dataset="mnist", epsilon=epsilon, models=6, challenges=64, base_size=400, train=train,
                     workers=2, **kw)


def test_non_private_model_leaks_and_dp_model_does_not(tmp_path):
    leaky = run_mia(tiny(math.inf), tmp_path / "inf")
    assert leaky["bayes"]["lower_bound"] > 0.5
    assert leaky["roc"]["loss"]["auc"] > 0.8
    assert leaky["claimed_epsilon"] is None and not leaky["exceeds_claim"]
    private = run_mia(tiny(1.0), tmp_path / "eps1")
    assert private["bayes"]["lower_bound"] <= 1.0
    assert private["clopper_pearson"]["lower_bound"] <= 1.0
    assert private["one_run"]["lower_bound"] <= 1.0
    assert not private["exceeds_claim"]
    c = private["counts"]
    assert c["negatives"] + c["positives"] == 6 * 32  # only the non-calibration half is counted
    assert set(private["roc"]) == {"loss", "confidence", "lira-offline", "lira-online"}


def test_killed_audit_resumes_without_retraining(tmp_path):
    config = tiny(math.inf)
    first = run_mia(config, tmp_path)
    files = sorted(tmp_path.glob("model-*.npz"))
    assert len(files) == 6
    mtimes = [f.stat().st_mtime_ns for f in files]
    files[2].unlink()  # as if the audit died before model 2 finished
    again = run_mia(config, tmp_path)
    assert [f.stat().st_mtime_ns for i, f in enumerate(sorted(tmp_path.glob("model-*.npz"))) if i != 2] == \
        [m for i, m in enumerate(mtimes) if i != 2]
    assert again["counts"] == first["counts"]  # same seeds and masks: the retrained model is the same


def test_roc_curve_basics():
    roc = roc_curve(np.array([0.9, 0.8, 0.7, 0.1]), np.array([True, True, False, False]))
    assert roc.auc == pytest.approx(1.0) and roc.tpr_at(0.0) == 1.0
    with pytest.raises(ValueError, match="both members and non-members"):
        roc_curve(np.array([1.0, 2.0]), np.array([True, True]))


def test_audit_estimate_cli_prints_both_intervals(capsys):
    assert main(["audit", "estimate", "--fp", "10", "--fn", "10", "--negatives", "100", "--positives", "100",
                 "--delta", "1e-5"]) == 0
    out = capsys.readouterr().out
    assert "bayes (jeffreys)" in out and "clopper-pearson" in out


@pytest.mark.parametrize("args,message", [
    (["--fp", "101", "--fn", "0", "--negatives", "100", "--positives", "100", "--delta", "1e-5"], "cannot exceed"),
    (["--fp", "-1", "--fn", "0", "--negatives", "100", "--positives", "100", "--delta", "1e-5"], "non-negative"),
    (["--fp", "1", "--fn", "0", "--negatives", "100", "--positives", "100", "--delta", "1"], "delta must be"),
    (["--fp", "1", "--fn", "0", "--negatives", "100", "--positives", "100", "--delta", "1e-5", "--confidence", "1.5"],
     "confidence must be"),
])
def test_audit_estimate_bad_inputs(args, message, capsys):
    assert main(["audit", "estimate", *args]) == 2
    assert message in capsys.readouterr().err


def test_audit_mia_cli_stores_the_audit(tmp_path, capsys):
    store = tmp_path / "s.db"
    code = main(["audit", "mia", "--dataset", "mnist", "--model", "mlp", "--epsilon", "8", "--models", "4",
                 "--challenges", "32", "--base-size", "300", "--epochs", "3", "--store", str(store), "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Claimed epsilon: 8" in out and "Bayesian (jeffreys prior)" in out and "independent" in out
    audit = RunStore(store).audits(kind="mia")[0]
    assert audit["status"] == "finished" and audit["params"]["epsilon"] == 8.0
    assert audit["results"]["counts"]["negatives"] + audit["results"]["counts"]["positives"] == 4 * 16
    assert RunStore(store).artifacts(kind="mia-scores")


def test_shipped_plans_parse():
    for name, eps in [("mnist-eps1", 1.0), ("mnist-eps8", 8.0), ("mnist-epsinf", math.inf)]:
        plan = load_plan(f"audits/{name}.toml")
        assert plan.epsilon == eps and plan.models == 16 and plan.train.model == "mlp"


def test_bad_plan_and_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "mia"\nmodles = 3\n')
    with pytest.raises(ValueError, match="unknown key"):
        load_plan(bad)
    with pytest.raises(ValueError, match="attack must be one of"):
        MIAConfig(attack="magic")


def test_ray_backend_runs_the_same_jobs_as_the_process_pool(tmp_path):
    """Ray started locally (no cluster address): same models, same counts as the local backend."""
    pytest.importorskip("ray", reason="Ray is installed with the test extras (pip install -e '.[test]')")
    import ray

    local = run_mia(tiny(math.inf), tmp_path / "local")
    try:
        remote = run_mia(dataclasses.replace(tiny(math.inf), backend="ray"), tmp_path / "ray")
    finally:
        ray.shutdown()
    assert remote["counts"] == local["counts"]
    assert len(list((tmp_path / "ray").glob("model-*.npz"))) == 6


def test_crafted_canaries_are_the_same_images_in_every_model_and_a_non_private_model_memorises_them(tmp_path):
    from dpplat.audits.mia import crafted_images
    from dpplat.data import load_dataset

    x = load_dataset("mnist", "train", subset=100).tensors[0]
    a, b = crafted_images(x, count=5, seed=3), crafted_images(x, count=5, seed=3)
    assert torch.equal(a, b) and a.shape == (5, 1, 28, 28) and not torch.equal(a, crafted_images(x, count=5, seed=4))
    assert a.min() >= x.min() and a.max() <= x.max()
    leaky = run_mia(tiny(math.inf, canary="crafted"), tmp_path / "crafted")
    assert leaky["canary"] == "crafted" and leaky["bayes"]["lower_bound"] > 0.5


def test_clipbkd_canaries_lie_along_the_datas_least_variance_directions_and_a_non_private_model_memorises_them(
        tmp_path):
    from dpplat.audits.mia import clipbkd_images
    from dpplat.data import load_dataset

    x = load_dataset("mnist", "train", subset=2000).tensors[0]
    canaries = clipbkd_images(x, count=8, seed=3)
    assert canaries.shape == (8, 1, 28, 28) and torch.equal(canaries, clipbkd_images(x, count=8, seed=3))
    flat = x.reshape(len(x), -1).double()
    offsets = canaries.reshape(8, -1).double() - flat.mean(0)
    directions = offsets / offsets.norm(dim=1, keepdim=True)
    spread = ((flat - flat.mean(0)) @ directions.T).std(0)  # how far real images move along each canary
    random = torch.nn.functional.normalize(torch.randn(8, flat.shape[1], dtype=torch.float64), dim=1)
    assert spread.max() < 0.05 * ((flat - flat.mean(0)) @ random.T).std(0).min()
    assert torch.allclose(offsets.norm(dim=1), (flat - flat.mean(0)).norm(dim=1).median().expand(8), rtol=0.02)
    with pytest.raises(ValueError, match="785 challenges exceed the 784 dimensions"):
        clipbkd_images(x, count=785, seed=3)
    leaky = run_mia(tiny(math.inf, canary="clipbkd"), tmp_path / "clipbkd")
    assert leaky["canary"] == "clipbkd" and leaky["bayes"]["lower_bound"] > 0.5
