"""Flourish dashboard: a Streamlit multipage app on one study's outputs.

Started by ``flourish dashboard STUDY.toml`` (which sets ``FLOURISH_STUDY``). Pages only read
outputs and draw; what they show is computed in ``dashboards/data.py``.
"""

from pathlib import Path

import streamlit as st

from dashboards.data import locate_outputs

HERE = Path(__file__).parent / "pages"

st.set_page_config(page_title="Flourish", layout="wide")

if "outputs" not in st.session_state:
    try:
        st.session_state["outputs"] = locate_outputs()
    except Exception as exc:  # a user mistake: say what is wrong, draw nothing else
        st.error(f"Cannot open the study: {exc}")
        st.stop()

outputs = st.session_state["outputs"]
st.sidebar.markdown(f"**{outputs.name}**  \n`{outputs.output_dir}`")

pages = {
    "Study": [
        st.Page(HERE / "overview.py", title="Overview", default=True),
        st.Page(HERE / "data_quality.py", title="Data quality"),
        st.Page(HERE / "instruments_page.py", title="Instruments"),
    ],
    "Analysis": [
        st.Page(HERE / "trial_results.py", title="Trial results"),
        st.Page(HERE / "bayesian.py", title="Bayesian"),
        st.Page(HERE / "engagement.py", title="Engagement vs wellbeing"),
    ],
    "Public": [
        st.Page(HERE / "privacy_page.py", title="Privacy"),
        st.Page(HERE / "public.py", title="Public results"),
    ],
}
st.navigation(pages).run()
