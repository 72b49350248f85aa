"""Data quality: quarantine by reason, with a drill-down to the rows."""

import altair as alt
import polars as pl
import streamlit as st

from dashboards.data import compute_quarantine_by_reason

outputs = st.session_state["outputs"]
st.title("Data quality")

summary = outputs.validation_summary
quarantine = outputs.quarantine
if quarantine is None or not summary:
    st.info("No validation outputs yet: run `flourish validate STUDY.toml` first.")
    st.stop()

rows_in, accepted, quarantined = summary["rows_in"], summary["accepted"], summary["quarantined"]
c1, c2, c3 = st.columns(3)
c1.metric("Rows in", f"{rows_in:,}")
c2.metric("Accepted", f"{accepted:,}")
c3.metric("Quarantined", f"{quarantined:,}")
if rows_in == accepted + quarantined:
    st.success(f"Row accounting adds up: {rows_in:,} = {accepted:,} + {quarantined:,}")
else:
    st.error(f"Row accounting does NOT add up: {rows_in:,} ≠ {accepted:,} + {quarantined:,}")

for issue in summary.get("file_issues") or []:
    st.warning(f"{issue['source']}: {issue['reason']}")
if summary.get("coerced_by_kind"):
    st.caption("Coerced (accepted after an explicit, reported fix): " + ", ".join(
        f"{k}: {v:,}" for k, v in summary["coerced_by_kind"].items()))

if quarantine.height == 0:
    st.success("No rows were quarantined.")
    st.stop()

st.subheader("Quarantine by reason")
by_reason = compute_quarantine_by_reason(quarantine)
st.altair_chart(
    alt.Chart(by_reason).mark_bar().encode(
        x=alt.X("sum(rows):Q", title="Rows"), y=alt.Y("reason:N", sort="-x", title=None),
        color=alt.Color("source:N", title="File"),
    ),
    use_container_width=True,
)

st.subheader("Rows")
reasons = sorted(quarantine["reason"].unique().to_list())
picked = st.selectbox("Reason", reasons, key="reason")
st.dataframe(quarantine.filter(pl.col("reason") == picked).sort("source", "row"),
             hide_index=True)
