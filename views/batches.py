"""Batches: every run with its age, status and counts; delete one within 48 hours, after a typed confirmation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
import streamlit as st
from pydantic import SecretStr

from console_ui import (
    cliniko_target,
    forget_typed_keys,
    open_destination,
    principal,
    session_memo,
    settings,
    table,
    tenant_scope,
)
from migrator.batches import DeletionPlan, delete_batch, deletion_plan, shared_store, workspace_deletion_plan
from migrator.console import batch_destination_problem, batches_frame, cliniko_account, entity_label, on_disk
from migrator.errors import MigratorError
from migrator.hosted import delete_as
from migrator.ledger import Batch, Ledger
from migrator.plan import records_of
from migrator.workflow import claim_copied_batches

CONFIRM_WORD = "DELETE"

state = st.session_state
config = settings()
scope = tenant_scope()  # a clinic sees its own batches only; local mode and operators see all
who = principal()


class ChangedSinceShown(MigratorError):
    """What deleting a batch removes is no longer what the page showed when delete was pressed."""


@dataclass(frozen=True)
class Pending:
    """A deletion confirmed by the button, done by the run of the page the button starts."""

    batch_id: str
    destination: str
    shown: dict[str, Any]  # the plan's summary the page showed
    admin_key: SecretStr  # hosted: an administrator's key of the batch's account, for this deletion only


def confirm(batch_id: str, destination: str, shown: dict[str, Any]) -> None:
    """Take the confirmation (a button callback, so that its boxes can be emptied) and queue the deletion.

    The deletion itself runs in the page's body (:func:`delete`), where its bar can stand under
    the button: a callback's elements take the top of the page, out of sight of a reader
    scrolled down to the button. On a hosted instance the administrator's key is taken out of
    its box here, whatever happens next. A deletion queued but not done (another page ran
    first) is dropped by ``app.py``.
    """
    state.delete_confirm = ""
    typed = str(state.get("delete_admin_key") or "").strip()
    state.delete_admin_key = ""
    if who is not None:
        forget_typed_keys()
        if not typed:
            state.delete_error = "Enter an administrator's API key of the batch's account to delete it."
            return
    state.delete_pending = Pending(batch_id, destination, shown, SecretStr(typed))


def deleted_sentence(done: DeletionPlan, *, to_cliniko: bool) -> str:
    """What deleting a batch did, in one sentence: in a Cliniko account its patients are archived, not removed.

    ``done`` is the plan :func:`delete_batch` carried out; Cliniko's API archives patients
    (:meth:`ClinikoDestination.delete <migrator.destinations.cliniko.ClinikoDestination.delete>`),
    so they are counted apart from the records removed, as in "1,553 records were removed and
    its 84 patients archived".
    """
    archived = (
        len(done.created.get("patients", [])) + len(done.dependents.get("patients", [])) if to_cliniko else 0
    )
    removed = done.total - archived
    if not archived:
        return f"Batch {done.batch_id} is deleted: {records_of('records', removed)} {was(removed)} removed."
    patients = f"its {records_of('patients', archived)}" if archived > 1 else "its patient"
    why = "(Cliniko's API cannot delete patients)"
    if not removed:
        return f"Batch {done.batch_id} is deleted: {patients} {was(archived)} archived {why}."
    return (
        f"Batch {done.batch_id} is deleted: {records_of('records', removed)} {was(removed)} removed and {patients} "
        f"archived {why}."
    )


def was(count: int) -> str:
    return "was" if count == 1 else "were"


def delete(pending: Pending) -> None:
    """Delete the batch, with a bar following it, and leave the outcome's sentence for the next run.

    On a hosted instance the administrator's key is checked with Cliniko now, used for that
    check only.

    ``pending.shown`` is the plan's summary the page showed. A local store's plan is exact, so
    a deletion that would now remove anything else (a run from another process booked
    appointments for the batch's patients since the page was drawn, say) is refused before
    anything goes, and the page shows the new plan. A Cliniko account's plan is shown from
    the ledger and deleting reads the account, as the page says, so there it is not compared.
    """
    batch_id, destination, shown = pending.batch_id, pending.destination, pending.shown

    def as_shown(plan: DeletionPlan) -> None:
        if destination.startswith("cliniko:") or plan.as_dict() == shown:
            return
        raise ChangedSinceShown(
            f"What deleting batch {batch_id} removes changed after the page showed it (now "
            f"{records_of('records', plan.total)}, shown {records_of('records', shown['total'])}), so nothing "
            "was deleted. Check what it removes now, then delete again."
        )

    # A large clinic's batch takes tens of seconds, a Cliniko account's goes at the key's pace.
    bar = st.progress(0.0, text=f"Deleting batch {batch_id}…")

    def removed(entity: str, so_far: int, total: int) -> None:
        bar.progress(
            so_far / total if total else 1.0,
            text=f"Deleting batch {batch_id}: {so_far:,} of {total:,} records",
        )

    try:
        if who is not None:
            done = delete_as(config, who, batch_id, pending.admin_key, show=as_shown, progress=removed)
        else:
            with open_destination(destination) as (ledger, store):
                done = delete_batch(ledger, store, batch_id, actor="console", show=as_shown, progress=removed)
        state.delete_message = deleted_sentence(done, to_cliniko=destination.startswith("cliniko:"))
        if done.matched_note:
            state.delete_message += " " + done.matched_note
    except MigratorError as exc:
        state.delete_error = str(exc)


@dataclass(frozen=True)
class Shown:
    """What the page shows of a :class:`~migrator.batches.DeletionPlan`: its counts and sentences, not its ids.

    A large clinic's plan names about a million records; deleting plans again anyway.
    """

    summary: dict[str, Any]
    already_deleted_note: str | None
    matched_note: str | None
    found_by_later_note: str | None

    @property
    def blocker(self) -> str | None:
        return self.summary["blocked_by"]

    @classmethod
    def of(cls, plan: DeletionPlan) -> Shown:
        return cls(plan.as_dict(), plan.already_deleted_note, plan.matched_note, plan.found_by_later_note)


def planned(ledger: Ledger, batches: list[Batch]) -> dict[str, Shown | None]:
    """What deleting each of ``batches`` removes (``None``: its store is gone), kept for the session.

    A large clinic's batch takes seconds to plan, and every click on the page renders it
    again: the plans are planned again only once the ledger or a store changed on disk
    (:func:`~migrator.console.on_disk`), or the batches that can be deleted did.
    """
    key = (tuple((b.id, b.status) for b in batches), on_disk(ledger, [b.destination for b in batches]))
    return session_memo(
        "batch_plans",
        key,
        lambda: {
            b.id: None if (p := workspace_deletion_plan(ledger, b)) is None else Shown.of(p) for b in batches
        },
    )


st.title("Batches")
st.markdown(
    "Every run is a batch. A batch can be deleted while it is **younger than 48 hours**: that removes what it "
    "created, and only that; records it merely linked to, and what the clinic set up itself, stay."
)
# Popped at once: a deletion is done by this run only, under the button, or not at all (see confirm()).
pending: Pending | None = state.pop("delete_pending", None)
if message := state.pop("delete_message", None):
    st.success(message)
if error := state.pop("delete_error", None):
    st.error(error)

try:
    with config.open_ledger() as ledger:
        if not config.hosted:  # a fresh copy of a workspace lists its own store, not the original's
            claim_copied_batches(ledger, config.workspace)
        batches = ledger.batches(tenant=scope, current_counts=True)
        # What deleting each batch still in its 48 hours removes, planned again only once the files
        # change (a large clinic's batch takes seconds; see planned()): batches a later one relies on
        # say so here, rather than once chosen below, and the chosen one's plan is shown there. A
        # batch into a Cliniko account is planned from the ledger: reading the account on every
        # render would spend its rate limit. Deleting reads it once (records the clinic made there by
        # hand) and refuses with the sentence if need be. Hosted, the account's key only comes with
        # the deletion itself.
        # A copied workspace may not touch a store outside it that the original uses: said, not planned.
        shared = {b.id: why for b in batches if b.deletable()[0] and (why := shared_store(ledger, b))}
        with st.spinner("Working out what deleting each batch removes…"):  # seconds for a large clinic
            plans = planned(ledger, [b for b in batches if b.deletable()[0] and b.id not in shared])
        blocked = {i: p.blocker for i, p in plans.items() if p is not None and p.blocker} | shared
except MigratorError as exc:
    st.error(str(exc))
    st.stop()
if not batches:
    st.info("No batches yet: start one on the Run page.")
    st.stop()

frame = batches_frame(batches, blocked=blocked)
table(
    frame.select(
        pl.col("batch").alias("Batch"),
        pl.col("started").alias("Started"),
        pl.col("age").alias("Age"),
        pl.col("status").alias("Status"),
        pl.col("created").alias("Created"),
        pl.col("linked").alias("Linked"),
        pl.col("already_present").alias("Already present"),
        pl.col("skipped").alias("Skipped"),
        # The reason is a sentence, too long for a cell: it is said under the table.
        pl.when(pl.col("deletable")).then(pl.lit("yes")).otherwise(pl.lit("no")).alias("Can be deleted"),
    ),
)
for row in frame.filter(~pl.col("deletable") & (pl.col("status") != "deleted")).iter_rows(named=True):
    st.caption(f"Why not {row['batch']}: {row['why']}")

candidates = {b.id: b for b in batches if b.deletable()[0] and b.id not in blocked}
if pending is not None and pending.batch_id not in candidates:
    # Its 48 hours ran out, or a later batch came to rely on it, between the page and the click.
    why = next((r["why"] for r in frame.iter_rows(named=True) if r["batch"] == pending.batch_id), None)
    st.error(f"Batch {pending.batch_id} was not deleted" + (f": {why}" if why else "."))
    pending = None
st.subheader("Delete a batch")
if not candidates:
    st.caption("No batch can be deleted now.")
    st.stop()
ids = list(candidates)
preferred = state.get("run_batch")
chosen = st.selectbox(
    "Batch to delete",
    ids,
    index=ids.index(preferred) if preferred in ids else 0,
    key="delete_batch",
    format_func=lambda i: f"{i} · {candidates[i].status}",
)
batch = candidates[chosen]
st.caption(batch.deletable()[1])
to_cliniko = batch.destination.startswith("cliniko:")
problem = batch_destination_problem(batch.destination, cliniko_target()) if who is None else None
if problem:
    st.info(problem.replace("This batch", f"Batch {chosen}") + " Deleting it needs that account's key.")
    st.stop()
try:
    plan = plans[chosen]
    if plan is None:  # its store is no longer on disk: opening it says so
        with open_destination(batch.destination) as (ledger, store):
            plan = Shown.of(deletion_plan(ledger, store, chosen))
except MigratorError as exc:
    st.error(str(exc))
    st.stop()
summary = plan.summary

entities = list(dict.fromkeys([*summary["created"], *summary["created_since_for_its_patients"]]))
removes_nothing = not summary["total"] and not summary["unanswered_creates"]
if removes_nothing:
    st.info(
        f"Batch **{chosen}** created nothing that is still there: deleting it removes no record, and only marks "
        "it deleted in the ledger."
    )
else:
    st.markdown(f"Deleting batch **{chosen}** removes **{records_of('records', summary['total'])}**:")
    table(
        pl.DataFrame(
            {
                "Data type": [entity_label(e) for e in entities],
                "Created by the batch": [summary["created"].get(e, 0) for e in entities],
                "Created since for its patients": [
                    summary["created_since_for_its_patients"].get(e, 0) for e in entities
                ],
            },
            schema={
                "Data type": pl.String,
                "Created by the batch": pl.Int64,
                "Created since for its patients": pl.Int64,
            },
        ),
        height="content",
    )
if plan.already_deleted_note:
    st.caption(f"{plan.already_deleted_note} Deleting finishes it.")
if plan.matched_note:
    st.caption(plan.matched_note)
if plan.found_by_later_note:
    st.warning(plan.found_by_later_note, icon=":material/call_split:")
if summary["blocked_by"]:
    st.error(summary["blocked_by"], icon=":material/link:")
    st.stop()
if to_cliniko and not removes_nothing:
    st.warning(
        "Cliniko's API cannot delete patients: this batch's patients are **archived**, not deleted, and everything "
        "else it created in the Cliniko account is deleted. Records the clinic added since for those patients stay, "
        "attached to the archived patient. Deleting first reads the account for records made there since that use "
        "what the batch created (an appointment booked with one of its appointment types, say); while there are "
        "any, nothing is deleted and the message names them.",
        icon=":material/inventory_2:",
    )
if not removes_nothing:
    st.warning(
        "Deleting a batch cannot be undone. Deleting its patients also deletes everything created for those "
        "patients since the import, such as appointments, treatment notes and invoices, even if someone added "
        "them by hand. Keep your legal obligations for clinical records in mind before you delete.",
        icon=":material/warning:",
    )
if who is not None:
    st.text_input(
        f"An administrator's API key of {cliniko_account(batch)}, which the batch wrote into"
        if to_cliniko
        else "An administrator's API key of this clinic's account",
        type="password",
        key="delete_admin_key",
        help="Checked with Cliniko when you press delete, used for that check only and never kept.",
    )
typed = st.text_input(f"Type {CONFIRM_WORD} to confirm", key="delete_confirm")
if typed.strip() and typed.strip() != CONFIRM_WORD:
    st.caption(
        f"Type {CONFIRM_WORD} in capital letters, exactly, to enable the button"
        + (" (you typed it in lower case)." if typed.strip().upper() == CONFIRM_WORD else ".")
    )
st.button(
    f"Delete batch {chosen}",
    key="delete_go",
    type="primary",
    icon=":material/delete:",
    disabled=typed.strip() != CONFIRM_WORD,
    on_click=confirm,
    args=(chosen, batch.destination, summary),
)
if pending is not None:
    if pending.batch_id == chosen:
        delete(pending)  # its bar stands here, under the button
    else:
        state.delete_error = f"Batch {pending.batch_id} was not deleted: another batch was chosen meanwhile."
    st.rerun()  # the page again, with the outcome's sentence on top
