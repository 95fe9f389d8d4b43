"""The operator console: navigation and the shared frame only; each step is a page in pages/."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="Cliniko migrator", page_icon=":material/move_up:", layout="wide")

pages = [
    st.Page("pages/connect.py", title="Connect", icon=":material/key:", default=True),
]
navigation = st.navigation(pages)

with st.sidebar:
    st.markdown("### Cliniko migrator")
    source = st.session_state.get("source_identity")
    if source is not None:
        st.caption(f"Source: **{source.account or 'account'}** ({source.shard}), as {source.user}")
    else:
        st.caption("Not connected yet.")

navigation.run()
