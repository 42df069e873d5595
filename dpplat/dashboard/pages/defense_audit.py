"""Defense audit: attack success by defense and attack, standard vs OARS, and success against queries."""

import altair as alt
import pandas as pd
import streamlit as st

from dpplat.dashboard import loaders

st.title("Defense audit")
found = loaders.finished_audits("oars", "No defense audit in this store yet. A defense audit attacks a trained "
                                         "model behind a stateful defense (Blacklight, PIHA, Stateful Detection) in "
                                         "standard and OARS form; its results appear here.")
if found is not None:
    rows = []
    for a in found:
        for s in a["results"].get("summaries", []):
            rows.append({"audit": a["id"], "dataset": a["params"].get("dataset"), **s})
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, width="stretch")
    for a in found:
        budget = a["results"].get("budget")
        for name, cal in a["results"].get("defenses", {}).items():
            st.caption(f"Audit {a['id']}: {name} flags {100 * cal['false_positive_rate']:.1f}% of "
                       f"{cal['benign_images']} benign test images (false positives)"
                       + (f"; query budget {budget:,} per image" if budget else ""))
    st.subheader("Attack success rate, standard vs OARS")
    st.altair_chart(alt.Chart(table).mark_bar().encode(
        x=alt.X("mode:N", title=None), y=alt.Y("success_rate:Q", title="attack success rate"),
        color="mode:N", column=alt.Column("attack:N"), row=alt.Row("defense:N")))
    st.subheader("Success rate against queries used")
    st.altair_chart(alt.Chart(table.dropna(subset=["mean_queries"])).mark_circle(size=90).encode(
        x=alt.X("mean_queries:Q", title="mean queries (successes)", scale=alt.Scale(type="log")),
        y=alt.Y("success_rate:Q"), color="mode:N", shape="defense:N", tooltip=list(table.columns)),
        width="stretch")
