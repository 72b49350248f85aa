"""Privacy: the budget from the ledger, the releases that verify, and the files that do not."""

import polars as pl
import streamlit as st

from dashboards.data import (
    compute_budget,
    compute_figure_table,
    compute_release_table,
    load_public_releases,
)
from dashboards.report import ledger_head

outputs = st.session_state["outputs"]
st.title("Privacy")

if outputs.spec is None:
    st.info("No study spec: open the dashboard with `flourish dashboard STUDY.toml`.")
    st.stop()
view = load_public_releases(outputs.spec)
if view.problem:
    st.error(f"Nothing is shown as DP: {view.problem}.")
if view.summary is not None:
    budget = compute_budget(view.summary)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("ε spent", f"{budget['spent']:.3g}")
    c2.metric("ε left", f"{budget['remaining']:.3g}")
    c3.metric("ε total budget", f"{budget['budget']:.3g}")
    c4.metric("releases charged", f"{budget['n_releases']}")
    st.progress(min(budget["spent"] / budget["budget"], 1.0) if budget["budget"] else 0.0,
                text=f"{budget['spent']:.3g} of {budget['budget']:.3g} spent")
    head = ledger_head(view.summary, [s.stamp for s in view.releases])
    if head is not None:
        st.markdown("Ledger head (published in the report's `flourish-ledger-head` meta tag):")
        st.code(f"{head.ledger_id}:{head.seq}:{head.entry_hash}", language=None, wrap_lines=True)
    if view.summary.verified:
        st.success("The ledger's hash chain verifies.")
st.caption("The ledger (beside study.toml) is authoritative: `flourish ledger STUDY.toml`.")

st.subheader("Releases that verify against the ledger")
if view.releases:
    st.dataframe(compute_release_table(view), hide_index=True)
    newest = view.releases[-1].release
    st.subheader("Figures of the newest release")
    st.caption("ε per figure, the noise margin planned before any data were read, and the "
               "usefulness threshold it had to beat; a figure that could not is withheld.")
    st.dataframe(compute_figure_table(newest), hide_index=True)
else:
    st.info("No verified releases yet: run `flourish release STUDY.toml`.")

if view.rejected:
    st.subheader("Files not shown")
    st.caption("Not stored releases, or stamps the ledger does not verify: never shown as DP.")
    st.dataframe(pl.DataFrame(view.rejected, schema=["file", "reason"], orient="row"),
                 hide_index=True)
report = outputs.output_dir / "report" / "index.html"
if report.exists():
    st.markdown(f"Public report: `{report}`")
