"""Run: DP parameters, the privacy statement, epsilon over steps against the budget, loss and accuracy."""

import altair as alt
import pandas as pd
import streamlit as st

from dpplat.dashboard import loaders

st.title("Run")
chosen = loaders.select_run("Run")
if chosen is not None:
    path, frame, run = chosen
    run_id = int(run["id"])
    cols = st.columns(4)
    cols[0].metric("epsilon spent", f"{run['epsilon']:.3f}" if pd.notna(run["epsilon"]) else "—")
    cols[1].metric("delta", f"{run['delta']:g}" if pd.notna(run["delta"]) else "—")
    cols[2].metric(f"{run['evaluated_on']} accuracy", f"{run['accuracy']:.2%}" if pd.notna(run["accuracy"]) else "—")
    cols[3].metric("status", run["status"])
    params = pd.DataFrame({
        "parameter": ["noise multiplier", "clip norm (total C)", "clipping", "sampling rate", "steps",
                      "accountant", "delta", "budget (epsilon)", "dataset size"],
        "value": [str(run[k]) for k in ("noise_multiplier", "max_grad_norm", "clipping", "sample_rate", "steps",
                                        "accountant", "delta", "target_epsilon", "dataset_size")],
    })
    st.table(params)
    if isinstance(run["statement"], str):
        st.subheader("Privacy statement")
        st.code(run["statement"], language=None)
    if isinstance(run["message"], str) and run["message"]:
        st.caption(run["message"])
    history = loaders.steps(path, run_id)
    if history.empty:
        st.caption("No steps recorded yet.")
    else:
        st.subheader("Epsilon spent over steps")
        eps = alt.Chart(history.dropna(subset=["epsilon"])).mark_line(point=True).encode(
            x=alt.X("step:Q"), y=alt.Y("epsilon:Q", title="epsilon spent"))
        layers = [eps]
        if pd.notna(run["target_epsilon"]):
            budget = pd.DataFrame({"budget": [run["target_epsilon"]]})
            layers.append(alt.Chart(budget).mark_rule(color="red", strokeDash=[6, 3]).encode(y="budget:Q"))
        st.altair_chart(alt.layer(*layers), width="stretch")
        left, right = st.columns(2)
        with left:
            st.subheader("Training loss")
            st.caption("Computed on private batches: not covered by the guarantee.")
            st.altair_chart(alt.Chart(history.dropna(subset=["loss"])).mark_line().encode(x="step:Q", y="loss:Q"),
                            width="stretch")
        with right:
            st.subheader("Accuracy")
            acc = history.melt(id_vars=["step"], value_vars=["accuracy", "test_accuracy"], var_name="split").dropna()
            st.altair_chart(alt.Chart(acc).mark_line(point=True).encode(
                x="step:Q", y=alt.Y("value:Q", title="accuracy"), color="split:N"), width="stretch")
