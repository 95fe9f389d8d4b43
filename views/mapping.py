"""Mapping: what each source practitioner, business and appointment type becomes in the destination."""

from __future__ import annotations

import polars as pl
import streamlit as st

from console_ui import (
    cliniko_target,
    destination_references,
    ensure_mapping,
    next_step,
    require_source,
    rows_to_decide,
)
from migrator.console import escape_markdown
from migrator.errors import MigratorError
from migrator.mapping import validate
from migrator.mapping_editor import (
    ACTION_LABELS,
    EDITOR_COLUMNS,
    apply_edits,
    apply_rows,
    console_words,
    decide_unresolved,
    editor_table,
    mapping_from_json,
    mapping_json,
    read_table,
    targetless_actions,
    unresolved_sentence,
)
from migrator.plan import ENTITIES, allowed_actions

TITLES = {
    "businesses": "Businesses",
    "practitioners": "Practitioners",
    "appointment_types": "Appointment types",
}
HINTS = {
    "practitioners": "For someone no longer at the clinic, choose: a generic Former practitioner{former}, another "
    "practitioner (then pick them as the destination record), or exclude (their appointments are skipped, "
    "each with that reason).",
    "businesses": "A business can map to one set up in the destination, be created, or be excluded "
    "(its appointments are skipped, each with that reason).",
    "appointment_types": "An appointment type can map to an existing one or be created.",
}

state = st.session_state
st.title("Mapping: what each record becomes in the destination")
require_source("the mapping lists the source account's practitioners, businesses and appointment types.")
st.markdown(
    "Every appointment points at a practitioner, a business and an appointment type, so each of those "
    "needs a decision before a run. They were matched by name (case, accents and punctuation aside); "
    "rows marked **⚠️** still need you. Change a row's *Action* or *Destination record* in the table."
)

if st.button("Match again from the source", key="mapping_rebuild", icon=":material/refresh:"):
    # Afresh: not from the last batch's decisions either (see ensure_mapping).
    state.mapping_fresh = (state.source_identity.account or state.source_identity.user, cliniko_target())
    for entity in ENTITIES:
        state.pop(f"mapping_{entity}", None)
    state.pop("mapping", None)
    state.pop("dest_references", None)

can_create = cliniko_target() is None
if not can_create:
    st.info(
        "The destination is a Cliniko account: its API cannot create practitioners or businesses, so each is "
        "mapped to one the clinic set up there (or, for practitioners, reassigned, a former practitioner or "
        "excluded)."
    )

try:
    tables = ensure_mapping()
    references = destination_references()
except MigratorError as exc:
    st.error(str(exc))
    st.stop()

all_rows = []
unfit_rows = 0  # decided, but not in a way the destination can honour
for entity in ENTITIES:
    key = f"mapping_{entity}"
    st.subheader(TITLES[entity])
    reference = references[entity]
    labels = {
        str(i): f"{name}" + ("" if active else " (inactive)")
        for i, name, active in zip(
            reference["id"].to_list(), reference["name"].to_list(), reference["active"].to_list(), strict=True
        )
    }
    # Fold the grid's pending edits in first, so the status column shows them at once.
    tables[entity] = apply_edits(tables[entity], state.get(key))
    st.data_editor(
        editor_table(
            tables[entity],
            made=reference["source_id"].drop_nulls().to_list() if "source_id" in reference.columns else (),
        ),
        key=key,
        column_order=EDITOR_COLUMNS,
        disabled=["status", "source_name", "source_active", "note"],
        hide_index=True,
        num_rows="fixed",
        width="stretch",
        column_config={
            "status": st.column_config.TextColumn("Status", width="medium"),
            "source_name": st.column_config.TextColumn("In the source"),
            "source_active": st.column_config.CheckboxColumn("Active", width="small"),
            "action": st.column_config.SelectboxColumn(
                "Action",
                width="medium",
                options=list(allowed_actions(entity, can_create=can_create)),
                format_func=lambda a: ACTION_LABELS.get(str(a), str(a)),
                required=True,
            ),
            "target_id": st.column_config.SelectboxColumn(
                "Destination record",
                width="medium",
                options=list(labels),
                format_func=lambda i, names=labels: names.get(str(i), str(i)),
            ),
            "note": st.column_config.TextColumn("Why", width="large"),
        },
    )
    # The grid cuts a long "Why" short: the undecided rows' notes, which say what to choose, in full.
    waiting = tables[entity].filter(pl.col("action") == "unresolved").select("source_name", "note").rows()
    if waiting:
        st.markdown(
            "\n".join(
                f"- **{escape_markdown(name)}**: {escape_markdown(console_words(note))}"
                for name, note in waiting[:10]
            )
            + (f"\n- … and {len(waiting) - 10} more undecided rows." if len(waiting) > 10 else "")
        )
    rows, problems = read_table(tables[entity], reference)
    all_rows += rows
    pending = unresolved_sentence(rows)
    if pending:
        # Cliniko's API cannot make the generic one: the clinic sets it up in that account.
        former = (
            ""
            if can_create
            else " (one the clinic has set up in that account, picked as the destination record)"
        )
        hint = HINTS[entity].format(former=former)
        st.warning(f"{pending} {hint}", icon=":material/priority_high:")
        choices = targetless_actions(entity, can_create=can_create)
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        with left:
            action = st.selectbox(
                "Decide every undecided row of this table at once",
                choices,
                format_func=lambda a: ACTION_LABELS[a],
                key=f"decide_{entity}",
            )
        with right:
            if st.button("Apply", key=f"decide_{entity}_apply"):
                try:
                    tables[entity] = decide_unresolved(tables[entity], action)
                    state.pop(key, None)  # its edits are folded into the table already
                    st.rerun()
                except MigratorError as exc:
                    st.error(str(exc))
    for problem in problems:
        st.warning(console_words(problem), icon=":material/priority_high:")
    unfit = validate(rows, references.__getitem__, can_create=can_create)
    unfit_rows += len(unfit)
    for problem in unfit:
        st.warning(console_words(problem), icon=":material/priority_high:")

st.subheader("Save or load")
left, right = st.columns(2)
with left:
    st.download_button(
        "Save the mapping as JSON",
        data=mapping_json(all_rows),
        file_name="mapping.json",
        mime="application/json",
        key="mapping_save",
        on_click="ignore",
        icon=":material/download:",
        help="The same file `python -m migrator run --mapping FILE` reads. It holds no key.",
    )
with right:
    upload = st.file_uploader("Load a mapping file", type=["json"], key="mapping_upload")
    if upload is not None and state.get("mapping_loaded") != upload.file_id:
        try:
            loaded = mapping_from_json(upload.getvalue(), upload.name)
            state.mapping, applied, unmatched = apply_rows(tables, loaded)
            for entity in ENTITIES:
                state.pop(f"mapping_{entity}", None)
            state.mapping_loaded = upload.file_id
            state.mapping_message = f"Loaded {applied} decisions from {upload.name}" + (
                f"; {unmatched} of its rows match no record of this source and were left out."
                if unmatched
                else "."
            )
            st.rerun()
        except MigratorError as exc:
            st.error(str(exc))
    if state.get("mapping_message"):
        st.success(state.mapping_message)

undecided = sum(1 for r in all_rows if r.action == "unresolved")
invalid = sum(t.height for t in tables.values()) - len(all_rows)
if undecided or invalid or unfit_rows:
    st.info(
        f"{rows_to_decide(undecided + invalid + unfit_rows)} a decision; the run waits for every row to be decided."
    )
else:
    st.success("Every row is decided.")
next_step("Next: choose the scope", "scope", key="next_scope")
