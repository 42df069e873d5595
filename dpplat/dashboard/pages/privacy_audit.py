"""Privacy audit: ROC curves, the epsilon posterior with its interval, Clopper–Pearson and one-run bounds, the claim.

Both dpplat's membership-inference audits and audits of the user's own attack scores (``dpplat audit scores``)
are shown; their stored results share one shape.
"""

import altair as alt
import pandas as pd
import streamlit as st

from dpplat.dashboard import loaders

st.title("Privacy audit")
EMPTY = ("No privacy audit in this store yet. Run one with:\n\n```bash\ndpplat audit run mnist-eps8\n"
         "dpplat audit whitebox --epsilon 2\n```\n\nor estimate epsilon from your own attack's scores with "
         "`dpplat audit scores`.")


def whitebox_section(audits: list[dict]) -> None:
    """Gradient-canary audits: the bounds against the accountant's epsilon, the verdict, the score histograms."""
    st.header("White-box audits (gradient canaries)")

    def label(a):
        r = a["results"]
        return f"audit {a['id']}: {a['params']['model']} on {a['params']['dataset']}, inject {r['inject']}"

    audit = st.selectbox("White-box audit", audits[::-1], format_func=label)
    r = audit["results"]
    (st.error if r["exceeds_claim"] else st.success)(r["verdict"])
    fdp = r.get("one_run_fdp")  # audits stored before the f-DP bound existed have none
    cols = st.columns(5 if fdp else 4)
    cols[0].metric("accountant's epsilon", f"{r['claimed_epsilon']:.3f}")
    cols[1].metric("one-run lower bound (95%)", f"{r['lower_bound']:.3f}")
    cols[2].metric("Bayesian lower bound (95%)", f"{r['bayes']['lower_bound']:.3f}")
    cols[3].metric("model-based (mu-GDP) epsilon", f"{r['gdp_epsilon']:.3f}")
    if fdp:
        cols[4].metric("one-run f-DP bound (95%, Gaussian curves)", f"{fdp['epsilon']:.3f}",
                       help=f"mu >= {fdp['mu']:.3f}; the claim read as mu-GDP is mu {r['claimed_mu']:.3f}")
    st.caption(f"{r['canaries']} canaries ({r['included']} included), {r['steps']} steps, sigma "
               f"{r['noise_multiplier']:.3f}, q {r['sample_rate']:.4g}, delta {r['delta']:g}; measured noise "
               f"{r['measured_noise']:.2f} x claimed, canary contribution {r['measured_canary_shift']:.2f} x C"
               + (f"; the accountant on that measured mechanism (sigma {r['measured_sigma']:.3f}) gives epsilon "
                  f"{r['measured_mechanism_epsilon']:.3f}" if "measured_mechanism_epsilon" in r else "")
               + ". " + r["accounting_note"])
    h = r["histogram"]
    edges = h["edges"]
    rows = [{"score": (edges[i] + edges[i + 1]) / 2, "canaries": count, "group": group}
            for group in ("in", "out") for i, count in enumerate(h[group])]
    st.altair_chart(alt.Chart(pd.DataFrame(rows)).mark_bar(opacity=0.5).encode(
        x=alt.X("score:Q", title="canary score (log-likelihood ratio)"),
        y=alt.Y("canaries:Q", stack=None), color=alt.Color("group:N", title="canary")), width="stretch")


found = None
if loaders.open_store() is not None:
    path = loaders.store_path()
    found = loaders.finished_of(path, ("mia", "scores")) or None
    white = loaders.finished_of(path, ("whitebox",))
    if found is None and not white:
        st.info(EMPTY)
    if white:
        whitebox_section(white)
if found is not None:
    def label(a):
        eps = a["results"]["claimed_epsilon"]
        what = a["params"]["dataset"] if a["kind"] == "mia" else "your scores"
        run = f", run {a['run_id']}" if a.get("run_id") else ""
        return f"audit {a['id']}: {what}{run}, claimed epsilon {'∞' if eps is None else eps}"

    audit = st.selectbox("Audit", found[::-1], format_func=label)
    r = audit["results"]
    b, cp, one = r["bayes"], r["clopper_pearson"], r["one_run"]
    claimed = r["claimed_epsilon"]
    if r["exceeds_claim"]:
        st.error(f"An empirical lower bound exceeds the claimed epsilon = {claimed}: a bug in training or "
                 "accounting, or a broken guarantee. Do not trust this model's claim until explained.")
    cols = st.columns(4)
    cols[0].metric("claimed epsilon", "∞ (non-private)" if claimed is None else f"{claimed:g}")
    cols[1].metric(f"Bayesian {r['confidence']:.0%} interval", f"[{b['low']:.2f}, {b['high']:.2f}]")
    cols[2].metric("Clopper–Pearson interval", f"[{cp['low']:.2f}, {cp['high']:.2f}]")
    cols[3].metric("one-run lower bound", f"{one['lower_bound']:.2f}")
    c = r["counts"]
    if audit["kind"] == "mia":
        setup = (f"{r['models']} models, {r['challenges']} canaries ({r['reported_challenges']} counted), attack "
                 f"{r['attack']}")
    else:
        setup = (f"your attack's scores of {r['members']} members and {r['non_members']} non-members (half chose the "
                 f"threshold {r['threshold']:.4g}, half are counted)")
    st.caption(f"{setup}: FP {c['fp']}/{c['negatives']}, FN {c['fn']}/{c['positives']}, delta {r['delta']:g}. "
               + r["independence_note"])

    st.subheader("Posterior of epsilon")
    density = pd.DataFrame({"epsilon": b["grid"], "density": b["density"]})
    marks = [("Bayesian low", b["low"]), ("Bayesian high", b["high"]), ("Clopper–Pearson low", cp["low"]),
             ("one-run bound", one["lower_bound"])]
    if claimed is not None:
        marks.append(("claimed epsilon", claimed))
    lines = pd.DataFrame(marks, columns=["bound", "epsilon"])
    area = alt.Chart(density).mark_area(opacity=0.4).encode(x=alt.X("epsilon:Q"), y=alt.Y("density:Q"))
    rules = alt.Chart(lines).mark_rule(strokeWidth=2).encode(x="epsilon:Q", color=alt.Color("bound:N"),
                                                             tooltip=["bound", "epsilon"])
    st.altair_chart(area + rules, width="stretch")

    st.subheader("ROC curves")
    rows = []
    for attack, roc in r["roc"].items():
        rows += [{"attack": attack, "fpr": f, "tpr": t} for f, t in zip(roc["fpr"], roc["tpr"])]
    roc_frame = pd.DataFrame(rows)
    summary = pd.DataFrame([{"attack": a, "AUC": v["auc"], "TPR @ 1% FPR": v["tpr_at_1pct_fpr"],
                             "TPR @ 0.1% FPR": v["tpr_at_0.1pct_fpr"]} for a, v in r["roc"].items()])
    st.dataframe(summary, hide_index=True)
    left, right = st.columns(2)
    with left:
        st.caption("linear axes")
        st.altair_chart(alt.Chart(roc_frame).mark_line().encode(
            x=alt.X("fpr:Q", title="false positive rate"), y=alt.Y("tpr:Q", title="true positive rate"),
            color="attack:N"), width="stretch")
    with right:
        st.caption("log-log axes")
        positive = roc_frame[(roc_frame["fpr"] > 0) & (roc_frame["tpr"] > 0)]
        st.altair_chart(alt.Chart(positive).mark_line().encode(
            x=alt.X("fpr:Q", title="false positive rate", scale=alt.Scale(type="log")),
            y=alt.Y("tpr:Q", title="true positive rate", scale=alt.Scale(type="log")),
            color="attack:N"), width="stretch")
