"""``dpplat audit scores``: epsilon estimates from a user's own attack scores, threshold chosen on a held-out half."""

import json

import numpy as np
import pytest

from dpplat.audits import audit_scores, estimate_epsilon
from dpplat.cli import main


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
                 str(tmp_path / "non_members.txt"), "--delta", "1e-5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"lower_bound", "low", "high", "threshold", "fp", "fn", "negatives", "positives"} <= set(out)
    assert out["lower_bound"] > 0


@pytest.mark.parametrize("content,message", [
    ("1.0\nnan\n2.0\n", "non-finite score (nan) at entry 2"),
    ("1.0\n", "holds 1 score(s); at least 2"),
    ("1.0\nhigh\n", "cannot be read as numbers"),
])
def test_bad_score_files_get_one_line(tmp_path, capsys, content, message):
    (tmp_path / "bad.txt").write_text(content)
    np.savetxt(tmp_path / "ok.txt", np.arange(10.0))
    code = main(["audit", "scores", "--members", str(tmp_path / "bad.txt"), "--non-members", str(tmp_path / "ok.txt"),
                 "--delta", "1e-5"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
