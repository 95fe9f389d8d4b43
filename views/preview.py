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
# Into a Cliniko account every record is a request of its own on the destination's key: those
# writes, not the reads, set how long the transfer takes.
transfer = None
if cliniko_target() is not None:  # the Cliniko destination's module loads only when one is used
    from migrator.destinations.cliniko import NOT_TRANSFERABLE, transfer_estimate

    transfer = transfer_estimate(result)
cols = st.columns(3 if transfer is None else 4)
cols[0].metric("Records to read", f"{approx}{result.records:,}")
cols[1].metric("Requests", f"{approx}{result.requests:,}")
if transfer is not None:
    cols[2].metric(
        "Writes into Cliniko",
        f"{approx}{transfer.writes:,}",
        help="Requests on the destination account's key: one per record, two for a file, and one more for "
        "each cancelled appointment or attendee and each archived patient; a record linked to an equal one "
        "costs none.",
    )
minutes = result.estimated_minutes if transfer is None else transfer.minutes
cols[-1].metric(
    "Minutes at the key's pace" if transfer is None else "Minutes at the keys' pace",
    f"{approx}{minutes:g}" if pace > 0 else "unpaced",
    help=f"{pace:g} requests per minute per key (Cliniko allows 200)"
    + ("." if transfer is None else "; the source is read while the destination is written.")
    if pace > 0
    else None,
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
st.caption(
    "Reading costs one request per 100 records, and at least one per list."
    + (
        ""
        if transfer is None
        else " Writing into a Cliniko account costs one request per record (a file two, after a read to "
        "download it), on that account's own key: the writes set the transfer's time."
    )
)
if transfer is not None:
    st.subheader("Not transferred into a Cliniko account")
    st.markdown("\n".join(f"- **{entity_label(e)}**: {why}" for e, why in NOT_TRANSFERABLE.items()))
next_step("Next: check the mapping", "mapping", key="next_mapping")
