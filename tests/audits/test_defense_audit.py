"""The defense audit end to end: CLI, plans, the store, resumption, and the dashboard page that reads it."""

import dataclasses
from pathlib import Path

import pytest
import torch

from dpplat.audits.defense_audit import DefenseAuditConfig, prepare_target
from dpplat.audits.plans import load_plan
from dpplat.audits.target import train_target
from dpplat.cli import main
from dpplat.store import RunStore

PLANS = Path(__file__).resolve().parents[2] / "audits"


def test_cli_runs_stores_and_resumes(tmp_path, capsys, monkeypatch):
    store = tmp_path / "s.db"
    argv = ["audit", "defenses", "--dataset", "mnist", "--defense", "blacklight,none", "--attack", "nes", "--mode", "all",
            "--images", "2", "--budget", "3000", "--workers", "1", "--store", str(store)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "blacklight" in out and "false positives" in out
    audit = RunStore(store).audits(kind="oars")[0]
    summaries = {(s["defense"], s["mode"]): s for s in audit["results"]["summaries"]}
    assert set(summaries) == {(d, m) for d in ("blacklight", "none") for m in ("standard", "oars", "oars-paper")}
    assert summaries[("blacklight", "standard")]["success_rate"] == 0.0
    assert summaries[("blacklight", "standard")]["mean_rejections"] >= 1
    assert summaries[("blacklight", "oars")]["success_rate"] > 0
    assert summaries[("none", "standard")]["mean_rejections"] == 0
    assert audit["results"]["defenses"]["blacklight"]["false_positive_rate"] <= 0.01
    records = Path(audit["results"]["records_path"])
    assert records.exists()
    # the same audit again reuses every finished job
    assert main(argv) == 0
    assert "6 jobs (6 already done)" in capsys.readouterr().err

    from tests.dashboard.test_app import open_page

    at = open_page(monkeypatch, store, "defense_audit")
    table = at.dataframe[0].value
    assert set(table["defense"]) == {"blacklight", "none"} and set(table["mode"]) == {"standard", "oars", "oars-paper"}
    assert any("false positives" in c.value for c in at.caption)


def test_shipped_plans_cover_every_defense_and_attack_in_both_modes():
    for name in ("oars-mnist.toml", "oars-cifar10.toml"):
        config = load_plan(PLANS / name)
        assert isinstance(config, DefenseAuditConfig)
        assert set(config.defenses) == {"none", "blacklight", "piha", "stateful-detection"}
        assert set(config.attacks) == {"nes", "square", "hsja", "qeba", "surfree", "boundary"}
        assert config.modes == ["standard", "oars"] and config.budget == 100_000


def test_skipped_images_are_the_rest_of_a_larger_draw(mnist_model):
    """``skip_images`` gives a sample disjoint from a first one, and the same images, targets and start images as
    the larger audit that contains both."""
    from dpplat.audits.defense_audit import choose_images

    larger = choose_images(mnist_model, DefenseAuditConfig(dataset="mnist", images=6))
    first = choose_images(mnist_model, DefenseAuditConfig(dataset="mnist", images=3))
    rest = choose_images(mnist_model, DefenseAuditConfig(dataset="mnist", images=3, skip_images=3))
    assert rest == larger[3:]
    assert not {r["index"] for r in rest} & {r["index"] for r in first}
    with pytest.raises(ValueError, match="skip_images must be 0 or more"):
        DefenseAuditConfig(skip_images=-1).validate()


def test_a_work_folder_of_other_images_is_refused_and_kept(mnist_model, tmp_path):
    """Its finished job files belong to its images: resuming there with another selection would mix two samples."""
    from dpplat.audits.defense_audit import run_defense_audit

    first = DefenseAuditConfig(dataset="mnist", defenses=["none"], attacks=["square"], modes=["standard"], images=2,
                               budget=50, workers=1)
    run_defense_audit(first, tmp_path, model=mnist_model.model)
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    further = dataclasses.replace(first, skip_images=2)
    with pytest.raises(ValueError, match="holds an audit of other images"):
        run_defense_audit(further, tmp_path, model=mnist_model.model)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == kept, "nothing already there is lost"
    assert run_defense_audit(first, tmp_path)["summaries"][0]["images"] == 2, "the same selection resumes"


@pytest.mark.parametrize("flags,message", [
    (["--defense", "blackligth"], "unknown defense 'blackligth'"),
    (["--attack", "nse"], "unknown attack 'nse'"),
    (["--budget", "0"], "budget must be positive"),
    (["--images", "0"], "images must be at least 1"),
    (["--mode", "oars-papr"], "unknown mode 'oars-papr'"),
])
def test_bad_flags_get_clear_errors(tmp_path, capsys, flags, message):
    assert main(["audit", "oars", "--store", str(tmp_path / "s.db"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not RunStore(tmp_path / "s.db").audits(), "nothing is stored for a refused audit"


@pytest.fixture
def thread_count():
    """The caller's torch thread count, restored after a test that changes it."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_the_audit_target_does_not_depend_on_the_thread_count(tmp_path, thread_count):
    """Trained on all of a machine's threads, a target depends on the thread count: two machines' targets classify
    different test images correctly, so their audits draw different images. One thread makes it the same."""
    config = DefenseAuditConfig(dataset="mnist", target_epochs=1, target_subset=512)
    weights = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        (tmp_path / f"threads-{threads}").mkdir()
        path = prepare_target(config, tmp_path / f"threads-{threads}")
        weights.append(torch.cat([w.flatten() for w in torch.load(path, weights_only=False)["state"].values()]))
        assert torch.get_num_threads() == threads, "the caller's thread count is restored"
    assert torch.equal(weights[0], weights[1])


def test_the_examples_target_is_the_audits_target(tmp_path, thread_count):
    """``train_target`` (the example's and the tests' model) trains by the audit's recipe on one thread too,
    so on two threads it gives the weights the audit's target has."""
    config = DefenseAuditConfig(dataset="mnist", target_epochs=1, target_subset=512)
    torch.set_num_threads(2)
    example = train_target("mnist", epochs=1, subset=512).model.state_dict()
    assert torch.get_num_threads() == 2, "the caller's thread count is restored"
    torch.set_num_threads(1)
    audit = torch.load(prepare_target(config, tmp_path), weights_only=False)["state"]
    assert example.keys() == audit.keys()
    assert all(torch.equal(example[k], audit[k]) for k in audit)


def test_mode_groups_expand_in_a_plan_or_the_api_as_on_the_cli():
    from dpplat.audits.attacks import MODES
    from dpplat.audits.defense_audit import DefenseAuditConfig

    assert DefenseAuditConfig(modes=["all"]).modes == list(MODES)
    assert DefenseAuditConfig(modes=["both", "oars-paper"]).modes == ["standard", "oars", "oars-paper"]
