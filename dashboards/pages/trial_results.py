"""Trial results: forest plot across domains, SRM and plan-status badges, trajectories."""

import altair as alt
import polars as pl
import streamlit as st

from dashboards.data import compute_score_summary

outputs = st.session_state["outputs"]
st.title("Trial results")

effects = outputs.table("effects")
if effects is None or effects.height == 0:
    st.info("No effects yet: the study needs an analysis plan and `flourish run`.")
    st.stop()

statuses = sorted(effects.filter(pl.col("role") != "exploratory")["plan_status"].unique().to_list())
if statuses == ["locked"]:
    st.success("Analysis plan: sealed and unchanged (locked).")
elif "deviated" in statuses:
    st.error("Analysis plan DEVIATED from its seal: the results below are not the "
             "pre-registered analysis. Run `flourish prereg verify` for the diff.")
else:
    st.warning(f"Analysis plan status: {', '.join(statuses) or 'none'} (not sealed).")

srm = outputs.table("sample_ratio")
if srm is not None and srm.height:
    if srm["flagged"][0]:
        st.error(f"Sample-ratio mismatch: p = {srm['p_value'][0]:.2g} (< 0.001).")
    else:
        st.success(f"No sample-ratio mismatch (p = {srm['p_value'][0]:.2g}).")

flagged = effects.filter(pl.col("flag").is_not_null())
for row in flagged.iter_rows(named=True):
    st.error(f"{row['hypothesis']}: {row['instrument']}.{row['scale']} is flagged "
             f"**{row['flag']}** (significantly harmful).")

st.subheader("Effects across domains")
show = effects.filter(pl.col("estimate").is_not_null()).with_columns(
    (pl.col("instrument") + "." + pl.col("scale")).alias("outcome"),
    (pl.col("role") == "primary").alias("primary"),
)
roles = st.multiselect("Roles", ["primary", "secondary", "guardrail", "exploratory"],
                       default=["primary", "secondary", "guardrail"])
show = show.filter(pl.col("role").is_in(roles))
for method in show["method"].unique().sort().to_list():
    part = show.filter(pl.col("method") == method)
    base = alt.Chart(part).encode(y=alt.Y("outcome:N", sort=None, title=None))
    st.caption(f"{method}: {part['estimand'][0] if part.height else ''}")
    st.altair_chart(
        base.mark_rule().encode(x=alt.X("ci_low:Q", title="Effect (treatment − control), 95% CI"),
                                x2="ci_high:Q")
        + base.mark_point(filled=True, size=80).encode(
            x="estimate:Q",
            color=alt.Color("primary:N", scale=alt.Scale(domain=[True, False],
                                                         range=["#d62728", "#1f77b4"])),
            tooltip=["hypothesis", "outcome", "estimate", "ci_low", "ci_high", "p_adjusted",
                     "plan_status"])
        + alt.Chart(pl.DataFrame({"x": [0.0]})).mark_rule(strokeDash=[4, 4]).encode(x="x:Q"),
        use_container_width=True,
    )
st.dataframe(show.drop("primary"), hide_index=True)

st.subheader("Mean trajectories by arm")
scores, participants = outputs.scores, outputs.participants
if scores is not None and participants is not None:
    outcomes = show["outcome"].unique().sort().to_list() or ["who5.total"]
    pick = st.selectbox("Outcome", outcomes)
    inst, scale = pick.split(".", 1)
    sub = scores.filter((pl.col("instrument") == inst) & (pl.col("scale") == scale))
    means = compute_score_summary(sub, participants)
    st.altair_chart(
        alt.Chart(means).mark_area(opacity=0.2).encode(x="wave:O", y="ci_low:Q", y2="ci_high:Q",
                                                         color="arm:N")
        + alt.Chart(means).mark_line(point=True).encode(
            x="wave:O", y=alt.Y("mean:Q", title=pick), color="arm:N"),
        use_container_width=True,
    )
