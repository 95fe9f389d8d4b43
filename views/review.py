"""Review: skipped records with their reasons, count differences, patient balances, and downloads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TypeVar

import polars as pl
import streamlit as st
from pydantic import SecretStr

from console_ui import (
    cliniko_target,
    connected,
    hosted,
    next_step,
    open_destination,
    principal,
    run_registry,
    session_memo,
    settings,
    source_client,
    source_key,
    table,
    tenant_scope,
    use_typed_key,
    work_tenant,
)
from migrator.cliniko.client import ClinikoClient
from migrator.console import (
    batch_destination_problem,
    cliniko_account,
    entity_label,
    export,
    on_disk,
    unfinished_sentence,
)
from migrator.destinations.local import LocalStore
from migrator.errors import MigratorError
from migrator.hosted import Principal, audited_read, count_as, source_as
from migrator.ledger import Batch, Ledger
from migrator.opening_balance import opening_balances
from migrator.plan import records_of
from migrator.reconcile import (
    REMOVED_SINCE_WHY,
    counts,
    counts_and_missing,
    flagged,
    invoice_check,
    merged_counts,
    missing,
    skipped,
    updated,
)
from migrator.workflow import source_account_of

COLUMN_NAMES = {
    "entity": "Data type",
    "in_scope": "In scope",
    "created": "Created",
    "linked": "Linked",
    "already_present": "Already present",
    "skipped": "Skipped",
    "removed_since": "Removed since",
    "in_destination": "In the destination",
    "in_destination_records": "As destination records",
    "difference": "Difference",
    "in_destination_total": "Destination total",
    "in_scope_total": "In scope, all runs",
    "source_count": "At the source now",
    "source_difference": "Source difference",
    # The skipped and flagged rows: the code is what the chart and the filter use, the sentence says it.
    "source_id": "Source id",
    "dest_id": "Destination id",
    "action": "Came across as",
    "reason_code": "Code",
    "reason": "Reason",
}

state = st.session_state
config = settings()
cache: dict[tuple[str, str], pl.DataFrame] = state.setdefault("review_cache", {})


T = TypeVar("T")


def unless_changed(stamp: object, batch_id: str, what: str, read: Callable[[], T]) -> T:
    """``read()``, kept for the session while the workspace's files stay as ``stamp`` says (:func:`on_disk`).

    Every click renders the page again, and a large clinic's counts take seconds to read
    from the ledger and the store: they are read again once either changed (a run, a
    top-up, a deletion, in this process or another), or another batch is reviewed.
    """
    return session_memo(f"review_read_{what}", (batch_id, stamp), read)


def downloads(frame: pl.DataFrame, name: str) -> None:
    left, right, _ = st.columns([1, 1, 3])
    left.download_button(
        "CSV",
        data=export(frame, "csv"),
        file_name=f"{name}.csv",
        mime="text/csv",
        key=f"download_{name}_csv",
        on_click="ignore",
        icon=":material/download:",
    )
    right.download_button(
        "Parquet",
        data=export(frame, "parquet"),
        file_name=f"{name}.parquet",
        mime="application/vnd.apache.parquet",
        key=f"download_{name}_parquet",
        on_click="ignore",
        icon=":material/download:",
    )


@contextmanager
def session_source(batch: Batch, read: str) -> Iterator[ClinikoClient]:
    """A client of the source key this session verified; a hosted instance audits the read as ``review_read``.

    A read with a key given for it is audited by :func:`source_as`; one with the session's
    own key is a key's access to the clinic's records all the same.
    """
    who = principal()
    with ExitStack() as stack:
        if who is not None:
            stack.enter_context(audited_read(config, who, batch, read, key="session"))
        yield stack.enter_context(source_client())


def count_in_destination(batch_id: str, who: Principal, key: SecretStr, *, session_key: bool = False) -> None:
    """Count a batch's Cliniko destination now, keeping what was counted at the source before."""
    cache[(batch_id, "counts")] = merged_counts(
        count_as(config, who, batch_id, key, session_key=session_key), cache.get((batch_id, "counts"))
    )


def count_with_key(batch_id: str) -> None:
    """Count a batch's Cliniko destination with a key typed for it (hosted; a callback: the box is emptied)."""

    def count(who: Principal, key: SecretStr) -> None:
        count_in_destination(batch_id, who, key)

    use_typed_key(
        "review_dest_key",
        error="review_count_error",
        missing="Enter an API key of the destination account to count there.",
        step=count,
    )


def count_with_session_key(batch_id: str) -> None:
    """Count a batch's Cliniko destination with the key this session verified of that account (hosted; a callback)."""
    key, who = source_key(), principal()
    if key is None or who is None:
        state.review_count_error = "Connect the account's key again on the Connect page to count there."
        return
    try:
        count_in_destination(batch_id, who, key, session_key=True)
    except MigratorError as exc:
        state.review_count_error = str(exc)


def count_at_source(batch: Batch, client: ClinikoClient) -> None:
    """Count again at the source; a Cliniko destination this session holds no key of keeps its last count."""
    if batch_destination_problem(batch.destination, cliniko_target()):
        with config.open_ledger() as ledger:
            fresh = counts(ledger, batch.id, source=client)
        cache[(batch.id, "counts")] = merged_counts(fresh, cache.get((batch.id, "counts")))
    else:
        with open_destination(batch.destination) as (ledger, store):
            cache[(batch.id, "counts")] = counts(ledger, batch.id, store=store, source=client)


def compare_balances(
    ledger: Ledger,
    batch_id: str,
    client: ClinikoClient,
    store: LocalStore,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Balances, and invoices held by another patient, from one read of the source's invoices (cached)."""
    found = invoice_check(ledger, batch_id, source=client, store=store, progress=progress)
    cache[(batch_id, "balances")] = found.balances
    cache[(batch_id, "moved_invoices")] = found.moved


def read_at_source(batch_id: str, what: str, box: str) -> None:
    """Counts, opening balances or balances with a key of the source typed in ``box`` (hosted; a callback)."""

    def read(who: Principal, key: SecretStr) -> None:
        with source_as(config, who, batch_id, key, read=what.replace("_", " ")) as (batch, client):
            if what == "source_counts":
                count_at_source(batch, client)
            elif what == "opening_balances":
                with config.open_ledger() as ledger:
                    cache[(batch_id, what)] = opening_balances(ledger, batch_id, source=client)
            else:
                with config.open_store(batch.destination) as (ledger, store):
                    compare_balances(ledger, batch_id, client, store)

    use_typed_key(
        box,
        error=f"{box}_error",
        missing="Enter an API key of the source account for this read.",
        step=read,
    )


def ask_source_key(batch_id: str, what: str, *, label: str, button: str, why: str) -> None:
    """A hosted session's key went with its run: a key of the source, asked for this read only."""
    box = f"{button}_key"
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    left.text_input(
        "An API key of the source account",
        type="password",
        key=box,
        help="Any user's key of that account: used for this read only, never kept.",
    )
    right.button(label, key=button, on_click=read_at_source, args=(batch_id, what, box), help=why)
    if error := state.pop(f"{box}_error", None):
        st.error(error)


#: How many differing balances the bar chart names (the largest first); the table has them all.
CHARTED = 40


def money_columns(*names: str) -> dict[str, object]:
    """Money shown with its cents (133.20, not 133.2): a column configuration for ``table``."""
    return {name: st.column_config.NumberColumn(name, format="%.2f") for name in names}


def labelled(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col("entity").map_elements(entity_label, return_dtype=pl.String))


st.title("Review")
try:
    with config.open_ledger() as ledger:
        every = ledger.batches(tenant=tenant_scope())
        batches = [b for b in every if b.status not in ("deleting", "deleted")]
except MigratorError as exc:
    st.error(str(exc))
    st.stop()
if not batches:
    st.info("No batch to review yet: start one on the Run page.")
    st.stop()

# What was counted or compared before a batch ran, was topped up or was deleted may no longer
# hold (deleting one batch takes records others found already present): start afresh.
generation = [(b.id, b.status) for b in every]
if state.get("review_generation") != generation:
    cache.clear()
    state["review_generation"] = generation

ids = [b.id for b in batches]
preferred = state.get("run_batch")
batch_id = st.selectbox(
    "Batch",
    ids,
    index=ids.index(preferred) if preferred in ids else 0,
    key="review_batch",
    format_func=lambda i: f"{i} · {next(b.status for b in batches if b.id == i)}",
)
batch = next(b for b in batches if b.id == batch_id)
identity = state.get("source_identity")
if hosted():  # hosted batches name their source by account id: the tenant
    same_source = connected() and work_tenant() == batch.source_account
else:
    with config.open_ledger() as ledger:  # a renamed account goes by the name its batches have
        same_source = connected() and source_account_of(identity, ledger) == batch.source_account
handle = run_registry().get(batch.id, tenant=tenant_scope())
running = (handle is not None and handle.running) or batch.running_elsewhere()
with config.open_ledger() as ledger:
    stopped_part_way = unfinished_sentence(batch, ledger.progress(batch.id), running=running)
if stopped_part_way:
    st.warning(stopped_part_way)
elif batch.status == "running":
    st.info("This batch is still running: the figures below are as far as it has got.")
so_far = " so far" if stopped_part_way or batch.status == "running" else ""

# --- counts --------------------------------------------------------------------------------
st.subheader("Counts: did every record arrive?")
COUNTS_CAPTION = (
    "What the batch found in scope at the source, what became of each record, and how many of the records "
    "it brought are in the destination now. A fresh count at the source costs one request per list."
)
fresh = False
if hosted() and not same_source:  # keys go when a run ends: one is asked for this count only
    st.caption(COUNTS_CAPTION)
    ask_source_key(
        batch_id,
        "source_counts",
        label="Count again at the source",
        button="review_source_counts",
        why="Reads each list's total at the source: one request per list.",
    )
else:
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    left.caption(COUNTS_CAPTION)
    fresh = right.button(
        "Count again at the source",
        key="review_source_counts",
        disabled=not same_source,
        help=None if same_source else f"Connect {batch.source_account}'s key to count at the source.",
    )
to_cliniko = batch.destination.startswith("cliniko:")
unreachable = batch_destination_problem(batch.destination, cliniko_target())
missing_frame: pl.DataFrame | None = None  # which records are missing: looked up only when some are
try:
    if fresh:
        with st.spinner("Counting at the source…"), session_source(batch, "source counts") as client:
            count_at_source(batch, client)
    if unreachable:  # a Cliniko account this session holds no key of: the ledger's side only
        count_frame = cache.get((batch_id, "counts")) if batch.status != "running" else None
        if (
            hosted()
        ):  # keys go when a run ends: the session's own if it is that account's, else one for this count
            own = connected() and batch.destination == f"cliniko:{work_tenant()}"
            if count_frame is None:
                st.caption(
                    "This batch wrote into this clinic's Cliniko account: until it is counted there, the counts "
                    "below are the ledger's only."
                    if own
                    else f"This batch wrote into {cliniko_account(batch)}, and this session holds no key of it "
                    "now: until you give one, the counts below are the ledger's only."
                )
            if own:  # the clinic the batch wrote into, its own key verified: nothing to ask for
                count_button = st.container()
            else:
                key_box, count_button = st.columns([3, 2], vertical_alignment="bottom")
                key_box.text_input(
                    "An API key of the destination account",
                    type="password",
                    key="review_dest_key",
                    help="Any user's key of that account: used for this count only, never kept.",
                )
            count_button.button(
                "Count in the destination",
                key="review_dest_count",
                on_click=count_with_session_key if own else count_with_key,
                args=(batch_id,),
                help="Reads the account's lists with the key this session verified: one request per 100 records."
                if own
                else "Reads the destination's lists: one request per 100 records.",
            )
            if error := state.pop("review_count_error", None):
                st.error(error)
        else:
            st.caption(f"{unreachable} Until then the counts below are the ledger's only.")
        with config.open_ledger() as ledger:
            stamp = on_disk(ledger)
            if count_frame is None:
                count_frame = unless_changed(stamp, batch_id, "counts", lambda: counts(ledger, batch_id))
            skipped_frame = unless_changed(stamp, batch_id, "skipped", lambda: skipped(ledger, batch_id))
            flagged_frame = unless_changed(stamp, batch_id, "flagged", lambda: flagged(ledger, batch_id))
            updated_frame = unless_changed(stamp, batch_id, "updated", lambda: updated(ledger, batch_id))
    else:
        with open_destination(batch.destination) as (ledger, store):
            stamp = on_disk(ledger, [batch.destination])
            count_frame = cache.get((batch_id, "counts")) if batch.status != "running" else None
            if count_frame is None and to_cliniko:
                with st.spinner("Counting in the destination…"):
                    count_frame = counts(ledger, batch_id, store=store)
                if batch.status != "running":  # API counts: once per batch and session
                    cache[(batch_id, "counts")] = count_frame
            elif count_frame is None:
                with st.spinner("Counting in the destination…"):
                    count_frame, missing_frame = unless_changed(
                        stamp,
                        batch_id,
                        "counts_and_missing",
                        lambda: counts_and_missing(ledger, batch_id, store=store),
                    )
            if (
                missing_frame is None
                and not to_cliniko
                and (count_frame["difference"].fill_null(0) < 0).any()
            ):
                # Counted at the source this session: which records are missing, a second look.
                missing_frame = unless_changed(
                    stamp, batch_id, "missing", lambda: missing(ledger, batch_id, store=store)
                )
            skipped_frame = unless_changed(stamp, batch_id, "skipped", lambda: skipped(ledger, batch_id))
            flagged_frame = unless_changed(stamp, batch_id, "flagged", lambda: flagged(ledger, batch_id))
            updated_frame = unless_changed(stamp, batch_id, "updated", lambda: updated(ledger, batch_id))
except MigratorError as exc:
    st.error(str(exc))
    st.stop()

differing = count_frame.filter(pl.col("difference").fill_null(0) != 0)
if count_frame["in_destination"].null_count() == count_frame.height:
    st.info("Not counted in the destination yet: the ledger's side only.")
elif differing.height:
    st.warning(
        "Not everything the ledger says arrived is in the destination: "
        + "; ".join(
            f"{entity_label(r['entity'])} {r['difference']:+,}" for r in differing.iter_rows(named=True)
        )
        + "."
    )
    if missing_frame is not None and missing_frame.height:
        st.caption(
            "The records the ledger says the batch brought that the destination no longer holds (removed by "
            "hand, say): a re-run of the same plan brings them again."
        )
        table(labelled(missing_frame).rename(lambda c: COLUMN_NAMES.get(c, c)))
        downloads(missing_frame, f"{batch_id}-missing")
else:
    removed = int(count_frame["removed_since"].fill_null(0).sum())
    present = int(count_frame["in_destination"].fill_null(0).sum())
    why = REMOVED_SINCE_WHY
    if removed and removed >= present:  # most of it is gone: not a green light
        st.warning(
            f"Of the {records_of('records', removed + present)} the batch brought{so_far}, {removed:,} "
            f"{'is' if removed == 1 else 'are'} no longer in the destination: removed since ({why}); see "
            "Removed since."
        )
    else:
        st.success(
            f"Every record the batch brought{so_far} is in the destination"
            + (
                f", but for {records_of('records', removed)} removed since ({why}): see Removed since."
                if removed
                else "."
            )
        )
source_gaps = count_frame.filter(pl.col("source_difference").fill_null(0) != 0)
if source_gaps.height:
    st.warning(
        "The source lists a different number now for "
        + ", ".join(entity_label(e).lower() for e in source_gaps["entity"])
        + ": a top-up run brings what changed since."
    )
shared = count_frame.filter(pl.col("in_destination_records") < pl.col("in_destination"))
hidden = [
    c for c in ("source_count", "source_difference") if count_frame[c].null_count() == count_frame.height
]
if shared.is_empty():  # one destination record each: the column would repeat In the destination
    hidden.append("in_destination_records")
shown = labelled(count_frame).drop(hidden).rename(lambda c: COLUMN_NAMES.get(c, c))
table(shown, height="content")
for row in shared.iter_rows(named=True):
    how = (
        "former practitioners given to one generic Former practitioner or to a colleague"
        if row["entity"] == "practitioners"
        else "several mapped to the same one"
    )
    st.caption(
        f"{entity_label(row['entity'])}: the batch's {row['in_destination']:,} in the destination are "
        f"{row['in_destination_records']:,} destination records, as the mapping sent several to one ({how}); "
        "that is how In the destination can exceed Destination total."
    )
downloads(count_frame, f"{batch_id}-counts")

# --- skipped -------------------------------------------------------------------------------
st.subheader("Skipped records, each with its reason")
if skipped_frame.is_empty():
    if so_far:
        st.success("Nothing was skipped so far.")
    else:
        st.success("Nothing was skipped: every record in scope came across.")
else:
    # No English name per code: the bars keep the codes (the table's Code column), the axes say what they are.
    summary = (
        skipped_frame.group_by("reason_code")
        .len(name="Records")
        .sort("Records", descending=True)
        .rename({"reason_code": "Reason"})
    )
    st.bar_chart(summary, x="Reason", y="Records", horizontal=True, height=60 + 30 * summary.height)
    left, right = st.columns(2)
    entities = sorted(skipped_frame["entity"].unique().to_list())
    reasons = sorted(skipped_frame["reason_code"].fill_null("").unique().to_list())
    with left:
        chosen_entities = st.multiselect(
            "Data types", entities, format_func=entity_label, key="review_skip_entities", placeholder="all"
        )
    with right:
        chosen_reasons = st.multiselect("Reasons", reasons, key="review_skip_reasons", placeholder="all")
    view = skipped_frame
    if chosen_entities:
        view = view.filter(pl.col("entity").is_in(chosen_entities))
    if chosen_reasons:
        view = view.filter(pl.col("reason_code").fill_null("").is_in(chosen_reasons))
    st.caption(f"{view.height:,} of {skipped_frame.height:,} skipped records shown.")
    table(labelled(view).rename(lambda c: COLUMN_NAMES.get(c, c)))
    downloads(view, f"{batch_id}-skipped")

# --- flagged -------------------------------------------------------------------------------
if not flagged_frame.is_empty():
    st.subheader("Records in the destination that want a look")
    st.caption(
        "Near-matches created rather than linked (the same name and date of birth more than once, a shared "
        "email), changes at the source the destination could not take, records deleted at the source but "
        "kept because the clinic has added to them, and records this batch skipped (a practitioner now "
        "excluded, say) whose copy an earlier batch brought is still there. They do not count against "
        "reconciliation."
    )
    table(labelled(flagged_frame).rename(lambda c: COLUMN_NAMES.get(c, c)))
    downloads(flagged_frame, f"{batch_id}-flagged")

# --- updated in place ----------------------------------------------------------------------
if not updated_frame.is_empty():
    st.subheader("Records updated in place")
    st.caption(
        "Records an earlier batch brought that this one rewrote (counted as already present): changed or "
        "cancelled in Cliniko since, or a copy that differed from Cliniko's unchanged record (edited here, or "
        "given another mapping since)."
    )
    table(labelled(updated_frame).rename(lambda c: COLUMN_NAMES.get(c, c)))
    downloads(updated_frame, f"{batch_id}-updated")

# --- balances ------------------------------------------------------------------------------
if to_cliniko:
    st.subheader("Opening balances: what each patient still owes")
    st.caption(
        "Cliniko cannot import financials, so invoices and payments stay in the source account: enter each "
        "patient's outstanding balance below as an opening balance in the new account."
    )
    if not same_source and hosted():
        ask_source_key(
            batch_id,
            "opening_balances",
            label="List the opening balances",
            button="review_opening_balances",
            why="Reads the source's invoices in scope: one request per 100 invoices.",
        )
    elif not same_source:
        st.info(f"Connect {batch.source_account}'s key (on the Connect page) to list the opening balances.")
    elif st.button(
        "List the opening balances",
        key="review_opening_balances",
        help="Reads the source's invoices in scope: one request per 100 invoices.",
    ):
        try:
            with (
                st.spinner("Reading the source's invoices…"),
                session_source(batch, "opening balances") as client,
            ):
                if unreachable:
                    with config.open_ledger() as ledger:
                        frame = opening_balances(ledger, batch_id, source=client)
                else:
                    with open_destination(batch.destination) as (ledger, store):
                        frame = opening_balances(ledger, batch_id, source=client, destination=store)
            cache[(batch_id, "opening_balances")] = frame
        except MigratorError as exc:
            st.error(str(exc))
    opening = cache.get((batch_id, "opening_balances"))
    if opening is not None:
        total = opening["outstanding"].sum() if opening.height else 0
        cols = st.columns(2)
        cols[0].metric("Patients with an opening balance", f"{opening.height:,}")
        cols[1].metric("Outstanding in all", f"{total:,.2f}")
        table(
            opening.rename(
                {
                    "source_patient_id": "Source id",
                    "destination_patient_id": "Destination id",
                    "patient": "Patient",
                    "open_invoices": "Open invoices",
                    "outstanding": "Outstanding",
                }
            ),
            column_config=money_columns("Outstanding"),
        )
        st.download_button(
            "Download the opening balances (CSV)",
            data=export(opening, "csv"),
            file_name=f"{batch_id}-opening-balances.csv",
            mime="text/csv",
            key=f"download_{batch_id}-opening-balances_csv",
            on_click="ignore",
            icon=":material/download:",
        )
    next_step("Next: the batches", "batches", key="next_batches")
    st.stop()

st.subheader("Patient balances: what each patient owes, at the source and here")
if "invoices" not in (batch.plan.get("include") or []):
    st.caption("This batch did not bring invoices, so there are no balances to compare.")
elif not same_source and not hosted():
    st.info(f"Connect {batch.source_account}'s key (on the Connect page) to compare balances with Cliniko.")
else:
    if not same_source:
        ask_source_key(
            batch_id,
            "balances",
            label="Compare balances with Cliniko",
            button="review_balances",
            why="Reads the source's invoices in scope: one request per 100 invoices.",
        )
    elif st.button(
        "Compare balances with Cliniko",
        key="review_balances",
        help="Reads the source's invoices in scope: one request per 100 invoices.",
    ):
        # A large clinic's invoices take minutes at Cliniko's pace: the bar says how far the read is.
        reading = st.progress(0.0, text="Reading the source's invoices…")

        def follow(read: int, listed: int) -> None:
            reading.progress(
                min(1.0, read / listed) if listed else 1.0,
                text=f"Reading the source's invoices: {read:,} of {listed:,}",
            )

        try:
            with (
                session_source(batch, "balances") as client,
                config.open_store(batch.destination) as (ledger, store),
            ):
                compare_balances(ledger, batch_id, client, store, progress=follow)
        except MigratorError as exc:
            st.error(str(exc))
        finally:
            reading.empty()
    balance_frame = cache.get((batch_id, "balances"))
    if balance_frame is not None:
        differ = balance_frame.filter(pl.col("difference") != 0)
        cols = st.columns(3)
        cols[0].metric("Patients compared", f"{balance_frame.height:,}")
        cols[1].metric("Balances that differ", f"{differ.height:,}")
        cols[2].metric("Total owed at the source", f"{balance_frame['source_outstanding'].sum():,.2f}")
        money = balance_frame.with_columns(pl.col(c).cast(pl.Float64) for c in balance_frame.columns[2:])
        if differ.height:
            st.warning(
                f"{differ.height} patients' balances differ from Cliniko's; they are listed first."
                if differ.height > 1
                else "1 patient's balance differs from Cliniko's; it is listed first."
            )
            st.bar_chart(
                money.filter(pl.col("difference") != 0).head(CHARTED),
                x="patient",
                y="difference",
                horizontal=True,
            )
            if differ.height > CHARTED:
                st.caption(
                    f"The chart shows the {CHARTED} largest differences of {differ.height:,}; the table below "
                    "lists them all."
                )
        else:
            st.success("Every patient's balance matches Cliniko's: each dot sits on the diagonal.")
        st.scatter_chart(
            money.filter(pl.col("source_outstanding") != 0).rename(
                {"source_outstanding": "Owed at the source", "destination_outstanding": "Owed here"}
            ),
            x="Owed at the source",
            y="Owed here",
            height=320,
        )
        table(
            balance_frame.rename(
                {
                    "patient_id": "Source id",
                    "patient": "Patient",
                    "source_outstanding": "Owed at the source",
                    "destination_outstanding": "Owed here",
                    "difference": "Difference",
                }
            ),
            column_config=money_columns("Owed at the source", "Owed here", "Difference"),
        )
        downloads(balance_frame, f"{batch_id}-balances")
        moved = cache.get((batch_id, "moved_invoices"))
        if moved is not None and moved.height:  # paid and closed ones too, which move no balance
            st.warning(
                (f"{moved.height:,} invoices are" if moved.height > 1 else "1 invoice is")
                + " with another patient here than in Cliniko. A paid or closed invoice owes nothing, so no "
                "balance above shows the move: this list does. Patients are named by their Cliniko id; an empty "
                "one here is a patient no batch brought."
            )
            table(
                moved.rename(
                    {
                        "source_id": "Invoice (source id)",
                        "dest_id": "Invoice here",
                        "number": "Number",
                        "status": "Status",
                        "patient_id": "Patient in Cliniko",
                        "destination_patient_id": "Patient here",
                    }
                ),
            )
            downloads(moved, f"{batch_id}-moved-invoices")

next_step("Next: the batches", "batches", key="next_batches")
