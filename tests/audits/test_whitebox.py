"""The white-box audit with gradient canaries: a correct training passes, the injected faults fail loudly, the CLI
stores the audit, and bad input gets one line."""

import json

import pytest

from dpplat.audits.whitebox import WhiteboxConfig, run_whitebox
from dpplat.cli import main
from dpplat.store import RunStore

SMALL = dict(epsilon=2.0, steps=150, subset=2000, batch_size=128, canaries=4000)  # about 20 s each on 2 cores


@pytest.fixture(scope="module")
def correct():
    return run_whitebox(WhiteboxConfig(**SMALL))


def test_a_correct_training_passes_with_a_model_based_estimate_near_its_epsilon(correct):
    assert not correct["exceeds_claim"] and correct["verdict"].startswith(("PASS", "SUSPECT"))
    assert correct["lower_bound"] < correct["claimed_epsilon"]
    assert correct["lower_bound"] > 0.2  # the audit sees the canaries: not a vacuous bound
    fdp = correct["one_run_fdp"]  # the f-DP reading of the guesses: tighter, still below the claim
    assert correct["lower_bound"] < fdp["epsilon"] < correct["claimed_epsilon"]
    assert fdp["mu"] < correct["claimed_mu"]
    assert correct["gdp_epsilon"] == pytest.approx(correct["claimed_epsilon"], rel=0.25)
    # the accountant on the measured noise and canary shift: the run's mechanism, within 15% of the claim
    assert correct["measured_mechanism_epsilon"] == pytest.approx(correct["claimed_epsilon"], rel=0.15)
    assert correct["measured_noise"] == pytest.approx(1.0, abs=0.05)
    # read off the steps that sampled each canary, the clipped length is measured to a few percent
    assert correct["canary_shift_error"] < 0.03
    assert correct["measured_canary_shift"] == pytest.approx(1.0, abs=4 * correct["canary_shift_error"])
    assert correct["accounted_size"] == 2000 + correct["included"]  # canaries are examples


def test_half_the_noise_fails_loudly(correct):
    faulty = run_whitebox(WhiteboxConfig(**SMALL, inject="half-noise"))
    assert faulty["exceeds_claim"] and faulty["verdict"].startswith("FAIL")
    assert faulty["claimed_epsilon"] == pytest.approx(correct["claimed_epsilon"])  # the accountant is told sigma
    assert faulty["bayes"]["lower_bound"] > faulty["claimed_epsilon"]
    assert faulty["one_run_fdp"]["epsilon"] > faulty["claimed_epsilon"]  # one run's guesses refute the claim
    assert "f-DP 95% bound refutes it" in faulty["verdict"]
    assert faulty["measured_noise"] == pytest.approx(0.5, abs=0.05)
    assert faulty["gdp_epsilon"] > 1.5 * faulty["claimed_epsilon"]
    assert faulty["measured_sigma"] == pytest.approx(faulty["noise_multiplier"] / 2, rel=0.1)
    assert faulty["measured_mechanism_epsilon"] > 2 * faulty["claimed_epsilon"]


def test_an_unclipped_layer_fails_loudly_through_the_oversized_canaries():
    faulty = run_whitebox(WhiteboxConfig(**SMALL, inject="no-clip-one-layer"))
    assert faulty["exceeds_claim"] and "clipping is not applied" in faulty["verdict"]
    assert faulty["measured_canary_shift"] > 2
    assert faulty["inject_group"] == faulty["clipping_groups"][-1]


def test_a_two_process_run_is_audited_and_noise_on_every_rank_reads_as_less_leakage(correct):
    """Two ranks (gloo): the correct run adds the noise once, so it measures as one run in one process does;
    noise added on both ranks measures sqrt(2) times the claimed noise and leaks less, so it passes."""
    together = run_whitebox(WhiteboxConfig(**SMALL, processes=2))
    assert not together["exceeds_claim"] and together["lower_bound"] > 0.2
    assert together["measured_noise"] == pytest.approx(1.0, abs=0.05)
    assert together["measured_canary_shift"] == pytest.approx(1.0, abs=0.15)
    doubled = run_whitebox(WhiteboxConfig(**SMALL, processes=2, inject="noise-per-rank"))
    assert doubled["measured_noise"] == pytest.approx(2 ** 0.5, abs=0.07)
    assert not doubled["exceeds_claim"] and doubled["verdict"].startswith("PASS")
    assert doubled["claimed_epsilon"] == pytest.approx(correct["claimed_epsilon"])
    assert doubled["gdp_epsilon"] < 0.85 * together["gdp_epsilon"]


def test_the_cli_prints_json_stores_the_audit_and_exits_1_on_a_failed_audit(tmp_path, capsys):
    store = tmp_path / "s.db"
    args = ["audit", "whitebox", "--steps", "60", "--subset", "1000", "--batch-size", "100", "--canaries", "1000",
            "--store", str(store), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"claimed_epsilon", "lower_bound", "gdp_epsilon", "canaries", "steps", "verdict"} <= set(out)
    assert main([*args, "--inject", "half-noise"]) == 1
    assert json.loads(capsys.readouterr().out)["verdict"].startswith("FAIL")
    audits = RunStore(store).audits(kind="whitebox")
    assert [a["status"] for a in audits] == ["finished", "finished"]
    assert audits[1]["params"]["inject"] == "half-noise" and audits[1]["results"]["exceeds_claim"]

    from tests.dashboard.test_app import chart_specs, encodings, open_page

    monkeypatch = pytest.MonkeyPatch()
    try:
        at = open_page(monkeypatch, store, "privacy_audit")
    finally:
        monkeypatch.undo()
    assert at.error[0].value.startswith("FAIL")  # the newest audit, the faulty one, comes first
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["one-run lower bound (95%)"] == f"{audits[1]['results']['lower_bound']:.3f}"
    fields = {e.get("x", {}).get("field") for spec in chart_specs(at) for e in encodings(spec)}
    assert "score" in fields


USER_MODULE = '''
from torch import nn


def no_parameters(num_classes, in_channels, image_size):
    return nn.Flatten()
'''


@pytest.mark.parametrize("flags,message", [
    (["--canaries", "0"], "canaries must be"),
    (["--steps", "0"], "steps must be"),
    (["--epsilon", "0"], "epsilon must be"),
    (["--inject", "noise-per-rank"], "noise-per-rank adds the noise on every rank"),
    (["--model", "wb_user_models:no_parameters"], "has no trainable parameters"),
])
def test_bad_input_gets_one_line_and_stores_nothing(tmp_path, monkeypatch, capsys, flags, message):
    (tmp_path / "wb_user_models.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "s.db"
    RunStore(store).close()
    code = main(["audit", "whitebox", "--subset", "500", "--steps", "5", *flags, "--store", str(store)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert RunStore(store).audits() == []


def test_an_opacus_run_is_audited_through_the_same_canaries_and_passes():
    """The canaries go through Opacus's own clipping and noise; Opacus keeps its claim as dpplat does."""
    results = run_whitebox(WhiteboxConfig(**SMALL, clipping="flat", subject="opacus"))
    assert results["subject"] == "opacus" and not results["exceeds_claim"]
    assert results["measured_noise"] == pytest.approx(1.0, abs=0.05)
    assert results["measured_canary_shift"] == pytest.approx(1.0, abs=0.2)
    assert results["gdp_epsilon"] == pytest.approx(results["claimed_epsilon"], rel=0.25)
    with pytest.raises(ValueError, match="--subject opacus audits Opacus as it is"):
        WhiteboxConfig(subject="opacus")


def test_runs_pool_their_own_canaries_into_one_game():
    one = run_whitebox(WhiteboxConfig(steps=30, subset=500, batch_size=50, canaries=500))
    two = run_whitebox(WhiteboxConfig(steps=30, subset=500, batch_size=50, canaries=500, runs=2))
    assert (one["canaries"], two["canaries"]) == (500, 1000) and two["runs"] == 2
    assert two["claimed_epsilon"] == pytest.approx(one["claimed_epsilon"])  # each canary is in one run only
    assert sum(two["histogram"]["in"]) == two["included"] and sum(two["histogram"]["out"]) == 1000 - two["included"]
