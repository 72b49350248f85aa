"""Public view: only releases whose ledger stamp verifies, drawn as the public report draws them."""

import html

import streamlit as st

from dashboards.data import compute_budget, compute_figure_table, load_public_releases
from dashboards.report import (
    WITHHELD_TEXT,
    describe_effect,
    describe_threshold,
    fragment_css,
    primary_effect,
    render_profile_html,
    render_trajectory_svg,
    short_label,
    svg_as_images,
)

outputs = st.session_state["outputs"]
st.title("Public results (differentially private)")
st.caption("Only releases whose ledger stamp verifies against the study's privacy ledger are "
           "shown; every number is differentially private.")

if outputs.spec is None:
    st.info("No study spec: open the dashboard with `flourish dashboard STUDY.toml`.")
    st.stop()
view = load_public_releases(outputs.spec)
if view.problem:
    st.warning(f"Nothing can be shown as DP: {view.problem}.")
if view.rejected:
    with st.expander(f"{len(view.rejected)} file(s) in releases/ not shown: they do not verify"):
        for path, reason in view.rejected:
            st.markdown(f"- `{path}`: {reason}")
if not view.releases or view.summary is None:
    st.info("No verified releases yet: run `flourish release STUDY.toml`.")
    st.stop()

choices = list(reversed(view.releases))
stored = st.selectbox(
    "Release", choices, index=0,
    format_func=lambda s: (f"ledger entry {s.stamp.seq} · {s.release.created_at[:10]} · "
                           f"ε {s.release.epsilon:.3g}" + (" (newest)" if s is choices[0] else "")),
)
rel = stored.release
budget = compute_budget(view.summary)
c1, c2, c3, c4 = st.columns(4)
c1.metric("ε of this release", f"{rel.epsilon:.3g}")
c2.metric("ε spent", f"{budget['spent']:.3g}")
c3.metric("ε left", f"{budget['remaining']:.3g}")
c4.metric("ε total budget", f"{budget['budget']:.3g}")

fig = primary_effect(rel)
if fig is not None:
    st.subheader("Headline")
    st.markdown(f"**{describe_effect(fig, rel)}**")
    if (mid := describe_threshold(fig)):
        st.markdown(mid)

st.html(f"<style>{fragment_css()}</style>")
st.subheader("Result on each part of wellbeing")
st.html(f'<div class="flourish-public">{svg_as_images(render_profile_html(rel))}</div>')

for means in (f for f in rel.figures if f.kind == "means"):
    st.subheader(f"Average {short_label(means)} score over time")
    if means.released:
        svg = svg_as_images(render_trajectory_svg(means, rel))
        st.html(f'<div class="flourish-public"><figure data-figure-id="{html.escape(means.id)}">'
                f"{svg}</figure></div>")
    else:
        st.markdown(f"_{WITHHELD_TEXT}_")

with st.expander("Every declared figure of this release"):
    st.dataframe(compute_figure_table(rel), hide_index=True)
report = outputs.output_dir / "report" / "index.html"
if report.exists():
    st.markdown(f"Public report (what the public reads): `{report}`")
