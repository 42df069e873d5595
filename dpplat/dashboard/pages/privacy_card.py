"""Privacy card: one exportable page per model for a reviewer (Markdown and JSON)."""

import json

import pandas as pd
import streamlit as st

from dpplat.dashboard import loaders

st.title("Privacy card")
chosen = loaders.select_run("Model (run)")
if chosen is not None:
    path, frame, run = chosen
    run_id = int(run["id"])
    audits = [a for a in loaders.audits(path) if a["run_id"] == run_id and a["results"]]
    value = lambda v: None if pd.isna(v) else (v.item() if hasattr(v, "item") else v)  # noqa: E731
    card = {
        "model": run["model"], "family": run["family"], "dataset": run["dataset"],
        "dataset_size": value(run["dataset_size"]),
        "guarantee": {"epsilon": value(run["epsilon"]), "delta": value(run["delta"]),
                      "adjacency": "add/remove one example", "budget": value(run["target_epsilon"])},
        "accountant": run["accountant"], "noise_multiplier": value(run["noise_multiplier"]),
        "clipping": run["clipping"], "max_grad_norm": value(run["max_grad_norm"]),
        "sampling_rate": value(run["sample_rate"]), "steps": value(run["steps"]),
        "accuracy": value(run["accuracy"]), "accuracy_on": run["evaluated_on"], "status": run["status"],
        "audits": [{"id": a["id"], "kind": a["kind"],
                    "bayes_interval": [a["results"]["bayes"]["low"], a["results"]["bayes"]["high"]]
                    if "bayes" in a["results"] else None,
                    "exceeds_claim": a["results"].get("exceeds_claim")} for a in audits],
    }
    g = card["guarantee"]
    eps_text = f"{g['epsilon']:.3f}" if g["epsilon"] is not None else "—"
    markdown = "\n".join([
        f"# Privacy card: {card['model']} on {card['dataset']} (run {run_id})",
        "",
        f"- **Guarantee:** ({eps_text}, {g['delta']:g})-differential privacy, {g['adjacency']} adjacency",
        f"- **Training data:** {card['dataset']}, {card['dataset_size']} examples",
        f"- **Mechanism:** DP-SGD, noise multiplier {card['noise_multiplier']}, {card['clipping']} clipping "
        f"(total C = {card['max_grad_norm']}), sampling rate {card['sampling_rate']}, {card['steps']} steps",
        f"- **Accountant:** {card['accountant']}",
        f"- **Accuracy ({card['accuracy_on']} split):** {card['accuracy']}",
        f"- **Audits:** {len(card['audits'])}" + "".join(
            f"\n  - audit {a['id']} ({a['kind']}): Bayesian interval {a['bayes_interval']}, "
            f"exceeds claim: {a['exceeds_claim']}" for a in card["audits"]),
    ])
    st.markdown(markdown)
    if isinstance(run["statement"], str):
        with st.expander("Full privacy statement"):
            st.code(run["statement"], language=None)
    left, right = st.columns(2)
    left.download_button("Download Markdown", markdown, file_name=f"privacy-card-run-{run_id}.md")
    right.download_button("Download JSON", json.dumps(card, indent=2), file_name=f"privacy-card-run-{run_id}.json")
