"""Runs: every training run, filters, and the privacy–utility chart."""

import altair as alt
import streamlit as st

from dpplat.dashboard import loaders

st.title("Runs")
store = loaders.open_store()
if store is not None:
    frame = loaders.runs(loaders.store_path())
    if frame.empty:
        loaders.empty_store_message()
    else:
        left, middle, right = st.columns(3)
        datasets = left.multiselect("Dataset", sorted(frame["dataset"].unique()))
        models = middle.multiselect("Model", sorted(frame["model"].unique()))
        statuses = right.multiselect("Status", sorted(frame["status"].unique()))
        shown = frame
        if datasets:
            shown = shown[shown["dataset"].isin(datasets)]
        if models:
            shown = shown[shown["model"].isin(models)]
        if statuses:
            shown = shown[shown["status"].isin(statuses)]
        table = shown[["id", "name", "dataset", "model", "target_epsilon", "epsilon", "delta", "accuracy",
                       "evaluated_on", "status", "started"]].rename(columns={"target_epsilon": "epsilon claimed (budget)", "epsilon": "epsilon spent",
                                  "evaluated_on": "accuracy on"})
        st.dataframe(table, hide_index=True, width="stretch")
        st.subheader("Privacy–utility")
        points = shown.dropna(subset=["epsilon", "accuracy"])
        if points.empty:
            st.caption("No finished run with an epsilon and an accuracy yet.")
        else:
            chart = alt.Chart(points).mark_circle(size=90).encode(
                x=alt.X("epsilon:Q", title="epsilon spent", scale=alt.Scale(type="log")),
                y=alt.Y("accuracy:Q", title="accuracy (test, or validation where held out)", scale=alt.Scale(zero=False)),
                color=alt.Color("family:N", title="model family"),
                tooltip=["id", "model", "dataset", "epsilon", "accuracy", "evaluated_on"],
            )
            st.altair_chart(chart, width="stretch")
