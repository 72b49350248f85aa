"""Instruments: reliability by wave, item-total plot, invariance ladder."""

import altair as alt
import polars as pl
import streamlit as st

outputs = st.session_state["outputs"]
st.title("Instruments")

rel = outputs.table("reliability")
if rel is None or rel.height == 0:
    st.info("No reliability yet: run `flourish run STUDY.toml`.")
    st.stop()

low = rel.filter(pl.col("alpha") < 0.7)
if low.height:
    st.warning("Scales with alpha < 0.7: " + ", ".join(
        sorted({f"{i}.{s}" for i, s in low.select("instrument", "scale").iter_rows()})))

st.subheader("Reliability by wave")
missing = st.radio("Missing-data handling", ["pairwise", "listwise"], horizontal=True)
table = rel.filter(pl.col("missing") == missing)
st.dataframe(table.pivot(on="wave", index=["instrument", "scale"], values="alpha",
                         sort_columns=True), hide_index=True)
st.dataframe(table.select("instrument", "scale", "wave", "n", "alpha", "std_alpha", "omega",
                          "message"), hide_index=True)

st.subheader("Corrected item–total correlations")
items = outputs.table("reliability_items")
if items is not None and items.height:
    scales = sorted({f"{i}.{s}" for i, s in items.select("instrument", "scale").unique().iter_rows()})
    pick = st.selectbox("Scale", scales, index=scales.index("who5.total") if "who5.total" in scales else 0)
    inst, scale = pick.split(".", 1)
    sub = items.filter((pl.col("instrument") == inst) & (pl.col("scale") == scale)
                       & (pl.col("missing") == missing))
    st.altair_chart(
        alt.Chart(sub).mark_line(point=True).encode(
            x=alt.X("wave:O"), y=alt.Y("r_drop:Q", title="r.drop"), color="item:N"),
        use_container_width=True,
    )

st.subheader("Measurement invariance ladder")
inv = outputs.table("invariance")
if inv is None or inv.height == 0:
    st.info("No grouping (country, cohort, language) in the participants table.")
else:
    st.caption(f"Groups: {inv['group'][0]}. A level holds when its fit stays acceptable "
               "(ΔCFI ≤ 0.01 from the level below).")
    for row in inv.iter_rows(named=True):
        icon = "✅" if row["holds"] else "❌"
        st.markdown(f"{icon} **{row['instrument']} — {row['level']}**: χ²={row['chisq']:.1f} "
                    f"(df {row['df']}), CFI={row['cfi']:.3f}, RMSEA={row['rmsea']:.3f} — "
                    f"{row['decision']}")
    if inv.filter((pl.col("level") == "scalar") & ~pl.col("holds")).height:
        st.warning("Scalar invariance fails: comparing group means on that instrument is flagged.")
