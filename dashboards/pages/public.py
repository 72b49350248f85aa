"""Public view: only differentially private release objects, never participant rows."""

import streamlit as st

from dashboards.data import load_public_releases

outputs = st.session_state["outputs"]
st.title("Public results (differentially private)")
st.caption("Every number on this page is a DP release from the study's privacy ledger; "
           "noise is added so that no participant's data can be inferred.")

releases = load_public_releases(outputs.output_dir / "releases")
if not releases:
    st.info("No releases yet: run `flourish release STUDY.toml`.")
    st.stop()
for rel in releases:
    st.subheader(rel.kind.replace("_", " ").capitalize())
    st.caption(f"{rel.mechanism}; ε = {rel.epsilon:.3g} ({rel.privacy_definition}); "
               f"release {rel.release_id[:16]}")
    st.dataframe(rel.to_frame(), hide_index=True)
