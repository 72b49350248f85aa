"""Privacy: the budget, the releases and their accuracy (internal view of the ledger)."""

import json

import polars as pl
import streamlit as st

outputs = st.session_state["outputs"]
st.title("Privacy")

releases_dir = outputs.output_dir / "releases"
files = sorted(releases_dir.glob("*.json")) if releases_dir.exists() else []
if not files:
    st.info("No releases yet: run `flourish release STUDY.toml`.")
    st.stop()
rows = []
for f in files:
    rel = json.loads(f.read_text())
    rows.append({"kind": rel["kind"], "release_id": rel["release_id"][:16],
                 "epsilon": rel["epsilon"], "mechanism": rel["mechanism"],
                 "accuracy": json.dumps(rel.get("accuracy")), "created_at": rel["created_at"]})
table = pl.DataFrame(rows)
st.metric("ε spent by the releases shown", f"{table['epsilon'].sum():.3g}")
st.caption("The ledger (beside study.toml) is authoritative: `flourish ledger STUDY.toml`.")
st.dataframe(table, hide_index=True)
report = outputs.output_dir / "report" / "index.html"
if report.exists():
    st.markdown(f"Public report: `{report}`")
