"""Audit trail (hosted instances, operators): every sign-in and action with its tenant, role and time; CSV export."""

from __future__ import annotations

import polars as pl
import streamlit as st

from console_ui import principal, settings
from migrator.console import export
from migrator.errors import MigratorError
from migrator.hosted import account_label, audit_frame

who = principal()
st.title("Audit trail")
if who is None or not who.operator:
    st.info("The audit trail is for operators.")
    st.stop()
st.markdown(
    "Every sign-in, connection, run, stop, resume, deletion, go-live and read of Cliniko on the Review page, "
    "on this instance, newest first, with the clinic account it concerns (tenant: its id; account: its name), who "
    "acted and in which role. "
    "No key is ever recorded."
)
try:
    with settings().open_ledger() as ledger:
        frame = audit_frame(ledger, who)
except MigratorError as exc:
    st.error(str(exc))
    st.stop()

left, right = st.columns(2)
names = {
    r["tenant"]: r["account"] for r in frame.select("tenant", "account").drop_nulls().iter_rows(named=True)
}
tenants = sorted((t for t in frame["tenant"].unique().to_list() if t), key=lambda t: (names.get(t, "~"), t))
chosen = left.multiselect(
    "Clinic accounts", tenants, key="audit_tenants", format_func=lambda t: account_label(t, names)
)
actions = sorted(frame["action"].unique().to_list())
picked = right.multiselect("Actions", actions, key="audit_actions")
view = frame
if chosen:
    view = view.filter(pl.col("tenant").is_in(chosen))
if picked:
    view = view.filter(pl.col("action").is_in(picked))
st.caption(f"{view.height:,} of {frame.height:,} lines.")
st.dataframe(view, hide_index=True)
st.download_button(
    "Export as CSV",
    data=export(view, "csv", spreadsheet_safe=True),
    file_name="audit-trail.csv",
    mime="text/csv",
    key="audit_export",
    on_click="ignore",
    icon=":material/download:",
)
