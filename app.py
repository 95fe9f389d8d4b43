"""The operator console: navigation and the shared frame only; each step is a page in pages/."""

from __future__ import annotations

import contextlib
import logging

import streamlit as st

from migrator.cliniko.keys import parse_key
from migrator.console import ConsoleSettings, masked
from migrator.errors import MigratorError

st.set_page_config(page_title="Cliniko migrator", page_icon=":material/move_up:", layout="wide")

pages = [
    st.Page("pages/connect.py", title="1 · Connect", icon=":material/key:", default=True),
    st.Page("pages/preview.py", title="2 · Preview", icon=":material/query_stats:"),
    st.Page("pages/mapping.py", title="3 · Mapping", icon=":material/join:"),
    st.Page("pages/scope.py", title="4 · Scope", icon=":material/filter_alt:"),
    st.Page("pages/run.py", title="5 · Run", icon=":material/play_circle:"),
    st.Page("pages/review.py", title="6 · Review", icon=":material/fact_check:"),
    st.Page("pages/batches.py", title="7 · Batches", icon=":material/inventory_2:"),
]
navigation = st.navigation(pages)


def frame() -> None:
    """The sidebar: who is connected (the key masked) and where the workspace is."""
    with st.sidebar:
        st.markdown("### Cliniko migrator")
        source = st.session_state.get("source_identity")
        if source is not None and "source_key" in st.session_state:
            st.caption(f"Source: **{source.account or 'account'}** ({source.shard}), as {source.user}")
            st.caption(masked(parse_key(st.session_state["source_key"])))
        else:
            st.caption("Not connected yet.")
        with contextlib.suppress(MigratorError):  # the page says what is wrong with the setting
            st.caption(f"Workspace: `{ConsoleSettings.from_env().workspace}`")


try:
    navigation.run()
except MigratorError as exc:  # every page catches its own; this is the net under them
    st.error(str(exc))
except Exception as exc:
    logging.getLogger("console").exception("page failed")
    st.error(
        f"Something unexpected went wrong on this page ({type(exc).__name__}); reload the page to try again "
        "(the console's log has the details)."
    )
finally:  # drawn after the page, so that it shows what the page just did (a connection, a disconnection)
    frame()
