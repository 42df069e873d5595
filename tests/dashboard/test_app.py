"""Every page of the dashboard under Streamlit's AppTest, on a seeded, an empty and a broken store."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import dpplat.dashboard

APP = str(Path(dpplat.dashboard.__file__).parent / "app.py")


def open_page(monkeypatch, store, page=None):
    monkeypatch.setenv("DPPLAT_STORE", str(store))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py")
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart_specs(at):
    """The Vega-Lite specs of the page's charts (Altair charts render as arrow_vega_lite_chart)."""
    import json

    found = at.get("arrow_vega_lite_chart") + at.get("vega_lite_chart")
    return [json.loads(c.proto.spec) for c in found]


def encodings(spec):
    out = []
    for layer in [spec, *spec.get("layer", [])]:
        out.append(layer.get("encoding", {}))
    return out


def test_runs_page_lists_the_run_and_charts_privacy_utility(monkeypatch, seeded_store):
    at = open_page(monkeypatch, seeded_store["path"])
    assert at.title[0].value == "Runs"
    frame = at.dataframe[0].value
    run = seeded_store["run"]
    assert list(frame["id"]) == [run.run_id] and frame["status"].iloc[0] == "finished"
    assert frame["epsilon spent"].iloc[0] == pytest.approx(run.epsilon)
    assert frame["accuracy"].iloc[0] == pytest.approx(run.accuracy)
    specs = chart_specs(at)
    enc = encodings(specs[0])[0]
    assert enc["x"]["field"] == "epsilon" and enc["y"]["field"] == "accuracy" and enc["color"]["field"] == "family"
    assert enc["x"]["scale"]["type"] == "log"


def test_run_page_shows_parameters_statement_and_curves(monkeypatch, seeded_store):
    at = open_page(monkeypatch, seeded_store["path"], "run")
    run = seeded_store["run"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["epsilon spent"] == f"{run.epsilon:.3f}"
    assert metrics["test accuracy"] == f"{run.accuracy:.2%}"
    table = at.table[0].value
    assert "noise multiplier" in list(table["parameter"])
    assert "add/remove-one" in at.code[0].value
    specs = chart_specs(at)
    fields = {e.get("y", {}).get("field") for s in specs for e in encodings(s)}
    assert {"epsilon", "budget", "loss", "value"} <= fields


def test_privacy_audit_page_shows_intervals_roc_and_posterior(monkeypatch, seeded_store):
    at = open_page(monkeypatch, seeded_store["path"], "privacy_audit")
    results = seeded_store["audit"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["claimed epsilon"] == "∞ (non-private)"
    assert metrics["Bayesian 95% interval"] == f"[{results['bayes']['low']:.2f}, {results['bayes']['high']:.2f}]"
    summary = at.dataframe[0].value
    assert set(summary["attack"]) == set(results["roc"])
    specs = chart_specs(at)
    scales = [e.get("x", {}).get("scale", {}).get("type") for s in specs for e in encodings(s)]
    assert "log" in scales  # the log-log ROC
    assert any(e.get("y", {}).get("field") == "density" for s in specs for e in encodings(s))


def test_privacy_audit_warns_when_lower_bound_exceeds_claim(monkeypatch, tmp_path, seeded_store):
    import json
    import shutil
    import sqlite3

    path = tmp_path / "claim.db"
    shutil.copy(seeded_store["path"], path)
    con = sqlite3.connect(path)
    results = json.loads(con.execute("SELECT results FROM audits").fetchone()[0])
    results.update(claimed_epsilon=0.1, exceeds_claim=True)
    con.execute("UPDATE audits SET results = ?", (json.dumps(results),))
    con.commit()
    con.close()
    at = open_page(monkeypatch, path, "privacy_audit")
    assert "exceeds the claimed epsilon" in at.error[0].value


def test_privacy_card_exports_markdown_and_json(monkeypatch, seeded_store):
    at = open_page(monkeypatch, seeded_store["path"], "privacy_card")
    run = seeded_store["run"]
    text = at.markdown[0].value
    assert f"({run.epsilon:.3f}, 1e-05)-differential privacy" in text and "audit" in text
    assert len(at.get("download_button")) == 2


def test_defense_audit_page_without_audits_says_what_it_shows(monkeypatch, seeded_store):
    at = open_page(monkeypatch, seeded_store["path"], "defense_audit")
    assert "No defense audit" in at.info[0].value


@pytest.mark.parametrize("page", [None, "run", "privacy_audit", "privacy_card"])
def test_empty_store_shows_what_to_run(monkeypatch, tmp_path, page):
    from dpplat.store import RunStore

    RunStore(tmp_path / "empty.db").close()
    at = open_page(monkeypatch, tmp_path / "empty.db", page)
    assert "dpplat" in at.info[0].value


@pytest.mark.parametrize("content", [None, b"this is not a database" * 20])
def test_missing_or_corrupt_store_shows_a_clear_error(monkeypatch, tmp_path, content):
    path = tmp_path / "bad.db"
    if content:
        path.write_bytes(content)
    at = open_page(monkeypatch, path)
    assert "Cannot open the run store" in at.error[0].value


def test_defense_audit_page_charts_standard_vs_oars(monkeypatch, tmp_path):
    """Seeded through the store API with the summary shape a defense audit stores."""
    from dpplat.store import RunStore

    store = RunStore(tmp_path / "def.db")
    audit = store.create_audit(kind="oars", params={"dataset": "mnist", "defense": "blacklight"})
    summaries = [
        {"defense": "blacklight", "attack": "nes", "mode": "standard", "success_rate": 0.04, "mean_queries": 900.0},
        {"defense": "blacklight", "attack": "nes", "mode": "oars", "success_rate": 0.95, "mean_queries": 4200.0},
    ]
    store.finish_audit(audit, {"summaries": summaries})
    store.close()
    at = open_page(monkeypatch, tmp_path / "def.db", "defense_audit")
    table = at.dataframe[0].value
    assert list(table["success_rate"]) == [0.04, 0.95]
    specs = chart_specs(at)
    assert {e.get("y", {}).get("field") for s in specs for e in encodings(s)} == {"success_rate"}


def test_checkout_entry_script_serves_the_same_app(monkeypatch, seeded_store):
    """`streamlit run dashboards/app.py` from a checkout renders the same pages."""
    monkeypatch.setenv("DPPLAT_STORE", str(seeded_store["path"]))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert at.title[0].value == "Runs" and len(at.dataframe) == 1


def test_a_run_whose_process_is_gone_shows_as_interrupted(monkeypatch, tmp_path):
    import subprocess
    import sys

    from dpplat.store import RunStore

    path = tmp_path / "s.db"
    store = RunStore(path)
    run = store.create_run(dataset="mnist", model="cnn", config={"family": "plain"}, epsilon=0.5)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store.conn.execute("UPDATE runs SET owner_pid = ? WHERE id = ?", (gone.pid, run))  # stored as running
    store.conn.commit()
    store.close()
    at = open_page(monkeypatch, path)
    assert at.dataframe[0].value["status"].iloc[0] == "interrupted"


def test_a_damaged_store_gets_a_message_not_a_traceback(monkeypatch, tmp_path):
    from tests.data_store.test_store_reliability import damaged_store

    damaged_store(tmp_path / "s.db")
    at = open_page(monkeypatch, tmp_path / "s.db")
    assert any("is damaged" in e.value for e in at.error)
