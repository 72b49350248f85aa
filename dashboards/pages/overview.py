"""Overview: participants per arm and wave, response rates, attrition, score distributions."""

import altair as alt
import streamlit as st

from dashboards.data import (
    compute_attrition_funnel,
    compute_participation,
    compute_score_summary,
)

outputs = st.session_state["outputs"]
st.title("Overview")

scores, participants = outputs.scores, outputs.participants
if scores is None or participants is None:
    st.info("No scores yet: run `flourish run STUDY.toml` first.")
    st.stop()

summary = outputs.validation_summary
c1, c2, c3, c4 = st.columns(4)
c1.metric("Participants randomised", f"{participants.height:,}")
c2.metric("Waves", scores["wave"].n_unique())
c3.metric("Response rows accepted", f"{summary.get('accepted', 0):,}")
c4.metric("Rows quarantined", f"{summary.get('quarantined', 0):,}")

st.subheader("Participants per arm and wave")
participation = compute_participation(scores, participants)
st.dataframe(participation, hide_index=True)
st.altair_chart(
    alt.Chart(participation).mark_line(point=True).encode(
        x=alt.X("wave:O", title="Wave"),
        y=alt.Y("response_rate:Q", title="Response rate", scale=alt.Scale(domain=[0, 1])),
        color="arm:N",
    ),
    use_container_width=True,
)

st.subheader("Attrition funnel")
funnel = compute_attrition_funnel(scores, participants)
st.altair_chart(
    alt.Chart(funnel).mark_bar().encode(
        x=alt.X("wave:O", title="Still responding at wave ≥"),
        y=alt.Y("retained:Q", title="Participants"),
        color="arm:N", xOffset="arm:N",
    ),
    use_container_width=True,
)

st.subheader("Score distributions")
scale_ids = sorted({f"{i}.{s}" for i, s in scores.select("instrument", "scale").unique().iter_rows()})
default = "who5.total" if "who5.total" in scale_ids else scale_ids[0]
choice = st.selectbox("Scale", scale_ids, index=scale_ids.index(default))
inst, scale = choice.split(".", 1)
chosen = scores.filter((scores["instrument"] == inst) & (scores["scale"] == scale))
chosen = chosen.join(participants.select("participant_id", "arm"), on="participant_id")
st.altair_chart(
    alt.Chart(chosen.drop_nulls("score")).mark_boxplot().encode(
        x=alt.X("wave:O", title="Wave"), y=alt.Y("score:Q", title=choice),
        color="arm:N", xOffset="arm:N",
    ),
    use_container_width=True,
)
means = compute_score_summary(chosen.drop("arm"), participants)
st.altair_chart(
    alt.Chart(means).mark_errorbar().encode(
        x="wave:O", y=alt.Y("ci_low:Q", title=f"Mean {choice} (95% CI)"), y2="ci_high:Q",
        color="arm:N",
    ) + alt.Chart(means).mark_line(point=True).encode(x="wave:O", y="mean:Q", color="arm:N"),
    use_container_width=True,
)
