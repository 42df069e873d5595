"""``dpplat audit scores``: epsilon estimates from a user's own attack scores, threshold chosen on a held-out half."""

import json

import numpy as np
import pytest

from dpplat.audits import audit_scores, estimate_epsilon
from dpplat.cli import main
from dpplat.store import RunStore


def test_separated_scores_give_a_positive_bound_and_overlapping_ones_none():
    rng = np.random.default_rng(0)
    members, non_members = rng.normal(3, 1, 500), rng.normal(0, 1, 500)
    strong = audit_scores(members, non_members, delta=1e-5)
    assert strong.lower_bound > 0.5 and strong.low <= strong.lower_bound <= strong.high
    assert strong.positives == 250 and strong.negatives == 250  # the other halves chose the threshold
    again = estimate_epsilon(strong.fp, strong.fn, strong.negatives, strong.positives, 1e-5, method="bayes")
    assert again.lower_bound == pytest.approx(strong.lower_bound)
    blind = audit_scores(rng.normal(0, 1, 500), rng.normal(0, 1, 500), delta=1e-5)
    assert blind.lower_bound < 0.2 and blind.clopper_pearson_lower_bound < 0.2


def test_cli_reads_npy_and_text_and_prints_json(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "members.npy", rng.normal(2, 1, 200))
    np.savetxt(tmp_path / "non_members.txt", rng.normal(0, 1, 200))
    assert main(["audit", "scores", "--members", str(tmp_path / "members.npy"), "--non-members",
                 str(tmp_path / "non_members.txt"), "--delta", "1e-5", "--json", "--no-store"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"lower_bound", "low", "high", "threshold", "fp", "fn", "negatives", "positives"} <= set(out)
    assert out["lower_bound"] > 0 and "audit_id" not in out


def test_a_score_audit_is_stored_under_its_run_with_the_runs_claim(tmp_path, capsys):
    store_path = tmp_path / "s.db"
    with RunStore(store_path) as store:
        run = store.create_run(dataset="mnist", model="cnn", config={"dataset": "mnist"})
        store.update_run(run, epsilon=0.5, delta=1e-5, status="finished")
    rng = np.random.default_rng(2)
    np.save(tmp_path / "members.npy", rng.normal(4, 1, 400))  # far more separable than epsilon = 0.5 allows
    np.save(tmp_path / "non_members.npy", rng.normal(0, 1, 400))
    assert main(["audit", "scores", "--members", str(tmp_path / "members.npy"), "--non-members",
                 str(tmp_path / "non_members.npy"), "--run", str(run), "--store", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert "Claimed epsilon 0.5: an empirical lower bound exceeds it" in out and "Audit 1 stored in" in out
    audit = RunStore(store_path).audits()[0]
    assert (audit["kind"], audit["run_id"], audit["status"]) == ("scores", run, "finished")
    results = audit["results"]
    assert results["claimed_epsilon"] == 0.5 and results["delta"] == 1e-5 and results["exceeds_claim"]
    assert results["bayes"]["lower_bound"] > 0.5 and len(results["bayes"]["grid"]) == len(results["bayes"]["density"])
    assert results["roc"]["your scores"]["auc"] > 0.95 and results["members"] == 400
    assert audit["params"]["members"] == str(tmp_path / "members.npy")
    assert RunStore(store_path).get_run(run).epsilon == 0.5  # the run itself is not changed


@pytest.mark.parametrize("content,message", [
    ("1.0\nnan\n2.0\n", "non-finite score (nan) at entry 2"),
    ("1.0\n", "holds 1 score(s); at least 2"),
    ("1.0\nhigh\n", "cannot be read as numbers"),
])
def test_bad_score_files_get_one_line(tmp_path, capsys, content, message):
    (tmp_path / "bad.txt").write_text(content)
    np.savetxt(tmp_path / "ok.txt", np.arange(10.0))
    code = main(["audit", "scores", "--members", str(tmp_path / "bad.txt"), "--non-members", str(tmp_path / "ok.txt"),
                 "--delta", "1e-5", "--store", str(tmp_path / "s.db")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.db").exists()  # refused before the store is opened
