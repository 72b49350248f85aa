"""Bayesian growth: posterior densities, per-country shrinkage, P(benefit), gate status."""

import altair as alt
import polars as pl
import streamlit as st

from dashboards.data import compute_raw_country_slopes, load_posterior_draws

outputs = st.session_state["outputs"]
st.title("Bayesian growth model")

post = outputs.table("posterior")
if post is None or post.height == 0:
    st.info("No posterior: the plan has no bayes_growth hypothesis, or `flourish run` has not run.")
    st.stop()

for hyp, grp in post.group_by("hypothesis", maintain_order=True):
    gate = grp["gate"][0]
    (st.success if gate == "pass" else st.error)(
        f"{hyp[0]}: diagnostics gate **{gate}** (R-hat ≤ 1.01, ESS ≥ 400, no divergences)")

st.subheader("P(benefit)")
effects = post.filter(pl.col("parameter").str.starts_with("slope_effect")
                      | pl.col("parameter").str.starts_with("difference_final_wave"))
st.dataframe(effects.select("hypothesis", "parameter", "mean", "sd", "hdi_low", "hdi_high",
                            "prob_positive", "prob_above_mid", "r_hat", "ess_bulk", "gate"),
             hide_index=True)

st.subheader("Posterior density of the effect on the slope")
draws = load_posterior_draws(outputs.output_dir / "posterior.nc")
if draws is not None:
    st.altair_chart(
        alt.Chart(draws).transform_density("value", as_=["value", "density"])
        .mark_area(opacity=0.6).encode(x=alt.X("value:Q", title="Slope effect per wave"),
                                        y="density:Q"),
        use_container_width=True,
    )

st.subheader("Per-country effects: raw vs partially pooled")
pooled = post.filter(pl.col("parameter").str.starts_with("slope_effect[country=")).with_columns(
    pl.col("parameter").str.extract(r"country=([^\]]+)").alias("country"))
raw = compute_raw_country_slopes(outputs)
if pooled.height and raw is not None:
    both = pl.concat([
        raw.select("country", pl.col("raw_estimate").alias("estimate"),
                   pl.lit("raw (per country OLS)").alias("kind")),
        pooled.select("country", pl.col("mean").alias("estimate"),
                      pl.lit("pooled (posterior mean)").alias("kind")),
    ])
    st.altair_chart(
        alt.Chart(both).mark_line(point=True).encode(
            x=alt.X("kind:N", title=None, sort=["raw (per country OLS)", "pooled (posterior mean)"]),
            y=alt.Y("estimate:Q", title="Slope effect per wave"), color="country:N"),
        use_container_width=True,
    )
