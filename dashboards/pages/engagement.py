"""Engagement vs wellbeing: within- vs between-person effects, arm comparison, the flag."""

import altair as alt
import polars as pl
import streamlit as st

outputs = st.session_state["outputs"]
st.title("Engagement vs wellbeing")

div = outputs.table("divergence")
if div is None or div.height == 0:
    st.info("No telemetry analysis: the study has no [telemetry] section, or it has not run.")
    st.stop()

fired = div.filter(pl.col("flag"))
if fired.height:
    for row in fired.iter_rows(named=True):
        st.error(f"Divergence: {row['instrument']}.{row['scale']} — {row['explanation']}")
else:
    st.success("No divergence: no wellbeing domain falls while engagement rises.")

st.subheader("Within- vs between-person association per scale")
long = pl.concat([
    div.select((pl.col("instrument") + "." + pl.col("scale")).alias("outcome"),
               pl.lit(kind).alias("effect"),
               pl.col(f"{kind}_estimate").alias("estimate"),
               pl.col(f"{kind}_ci_low").alias("ci_low"), pl.col(f"{kind}_ci_high").alias("ci_high"))
    for kind in ("within", "between")
])
base = alt.Chart(long).encode(y=alt.Y("outcome:N", title=None), color="effect:N",
                              yOffset="effect:N")
st.altair_chart(base.mark_rule().encode(x=alt.X("ci_low:Q", title="Association per unit of "
                                                "engagement (95% CI)"), x2="ci_high:Q")
                + base.mark_point(filled=True).encode(x="estimate:Q"), use_container_width=True)

st.subheader("Treatment effect on engagement and on each scale")
st.dataframe(div.select("instrument", "scale", "effect_engagement_estimate",
                        "effect_engagement_ci_low", "effect_engagement_ci_high",
                        "effect_scale_estimate", "effect_scale_ci_low", "effect_scale_ci_high",
                        "flag", "explanation"), hide_index=True)
