"""Preview: what the run will read for the chosen scope, and how long that takes at the key's pace."""

from __future__ import annotations

import polars as pl
import streamlit as st

from console_ui import (
    cliniko_target,
    current_preview,
    next_step,
    require_source,
    scope_sentence,
    settings,
    table,
)
from migrator.console import entity_label
from migrator.errors import MigratorError

st.title("Preview: what the run will read")
require_source("the preview counts the source account's records.")

if st.session_state.get("plan_incomplete"):
    st.info(f"{st.session_state.plan_incomplete} The preview counts what a run would read once it is done.")
    st.stop()
st.caption(f"{scope_sentence()}. Change these on the Scope page; the counts follow.")
recount = st.button("Count again", key="recount", icon=":material/refresh:")
try:
    result = current_preview(recount=recount)
except MigratorError as exc:
    st.error(str(exc))
    st.stop()

pace = settings().requests_per_minute
approx = "" if result.exact else "≈ "
cols = st.columns(3)
cols[0].metric("Records to read", f"{approx}{result.records:,}")
cols[1].metric("Requests", f"{approx}{result.requests:,}")
cols[2].metric(
    "Minutes at the key's pace",
    f"{approx}{result.estimated_minutes:g}" if pace > 0 else "unpaced",
    help=f"{pace:g} requests per minute per key (Cliniko allows 200)." if pace > 0 else None,
)

counts = result.frame.select(
    pl.col("entity").map_elements(entity_label, return_dtype=pl.String).alias("Data type"),
    pl.col("records").alias("Records"),
    pl.col("requests").alias("Requests"),
    pl.when(pl.col("exact")).then(pl.lit("")).otherwise(pl.lit("≈")).alias("Estimate"),
    pl.col("how").alias("How it was counted"),
)
table(counts, height="content")
if not result.exact:
    st.caption(
        "≈ marks estimates. Under a business or practitioner filter, which patients come across is known only "
        "once the run has read the appointments, invoices and notes in scope, so patients and what follows them "
        "are estimated from the share of appointments in scope. That is low when patients are seen at several of "
        "the businesses (or by several practitioners), so each such row also says how many there could be at "
        "most that way; the few billed or written about without an appointment in scope come on top. The run "
        "reports the exact figures."
    )
st.caption("Reading costs one request per 100 records, and at least one per list.")
if cliniko_target() is not None:
    from migrator.destinations.cliniko import NOT_TRANSFERABLE

    st.subheader("Not transferred into a Cliniko account")
    st.markdown("\n".join(f"- **{entity_label(e)}**: {why}" for e, why in NOT_TRANSFERABLE.items()))
next_step("Next: check the mapping", "mapping", key="next_mapping")
