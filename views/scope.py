"""Scope: the one filter (all data, businesses or practitioners) and the data types to bring."""

from __future__ import annotations

import streamlit as st

from console_ui import cliniko_target, ensure_mapping, next_step, remembered, require_source
from migrator.console import entity_label
from migrator.errors import MigratorError
from migrator.plan import CORE_TYPES, OPTIONAL_TYPES, TYPE_DESCRIPTIONS, Scope, close_include

FILTERS = {
    "all": "All data",
    "business": "Only some businesses",
    "practitioner": "Only some practitioners",
}
MEANINGS = {
    "all": "Everything in the account comes across.",
    "business": "The appointments, unavailable blocks and invoices at the chosen businesses, and the patients "
    "seen or billed there. Notes, files and medical alerts belong to a patient rather than to a business, so "
    "those patients bring all of theirs, wherever they were written.",
    "practitioner": "The appointments, unavailable blocks and invoices of the chosen practitioners, every "
    "treatment note they wrote, and the patients they saw, wrote about or billed, with those patients' files "
    "and medical alerts.",
}
GROUPS = (
    ("Core data", "Narrowed by the filter above.", CORE_TYPES),
    ("Optional data", "Account-wide: copied whole whatever the filter.", OPTIONAL_TYPES),
    ("Money", "Only the local clinic store can take these.", ("invoices",)),
)

state = st.session_state
st.title("Scope: which data comes across")
require_source("the filter lists the source account's businesses and practitioners.")
try:
    tables = ensure_mapping()
except MigratorError as exc:
    st.error(str(exc))
    st.stop()

st.markdown(
    "Choose **one** filter, as in a Cliniko-to-Cliniko transfer: all data, or only what belongs to some "
    "businesses, or only what belongs to some practitioners. The filter narrows the core data; the "
    "optional data is account-wide and comes across whole."
)
kind = remembered(
    st.radio,
    key="scope_kind",
    default="all",
    label="Filter",
    options=list(FILTERS),
    format_func=FILTERS.__getitem__,
    captions=[MEANINGS[k] for k in FILTERS],
)

scope: Scope | None = Scope()
if kind != "all":
    entity = "businesses" if kind == "business" else "practitioners"
    frame = tables[entity]
    names = {
        str(i): str(name) + ("" if active else " (former)")
        for i, name, active in zip(
            frame["source_id"].to_list(),
            frame["source_name"].to_list(),
            frame["source_active"].to_list(),
            strict=True,
        )
    }
    chosen = remembered(
        st.multiselect,
        key=f"scope_{entity}",
        default=[],
        label=f"Which {entity}?",
        options=list(names),
        format_func=lambda i: names.get(i, i),
    )
    if chosen:
        scope = Scope(kind=kind, ids=chosen)
    else:
        scope = None
        st.warning(f"Choose at least one of the {entity}, or the filter 'All data'.")

st.subheader("Data types")
to_cliniko = cliniko_target() is not None
groups = GROUPS[:2] if to_cliniko else GROUPS
if to_cliniko:
    st.caption(
        "The destination is a Cliniko account, which cannot import invoices or payments: the Review page "
        "lists each patient's opening balance instead."
    )
ticked: list[str] = []
for column, (title, note, types) in zip(st.columns(3), groups, strict=False):
    with column:
        st.markdown(f"**{title}**")
        st.caption(note)
        for data_type in types:
            if remembered(
                st.checkbox, key=f"include_{data_type}", default=True, label=entity_label(data_type)
            ):
                ticked.append(data_type)
            st.caption(TYPE_DESCRIPTIONS[data_type])
archived = remembered(
    st.checkbox,
    key="include_archived",
    default=True,
    label="Bring archived patients too",
    help="Archived patients live on their own list in Cliniko; leave this ticked to bring them.",
)

if not ticked:
    st.warning("Tick at least one data type.")
else:
    include = close_include(ticked)
    added = [t for t in include if t not in ticked]
    if added:
        st.caption(
            "Also brought, because what you ticked depends on them: "
            + ", ".join(entity_label(t).lower() for t in added)
            + "."
        )
    state.plan_include = include
state.plan_archived = archived
# What holds the run back (the Run and Preview pages say it), or None once the choice is whole.
state.plan_incomplete = (
    "Finish the filter on the Scope page: choose at least one business or practitioner."
    if scope is None
    else None
    if ticked
    else "Tick at least one data type on the Scope page."
)
if scope is not None:
    state.plan_scope = scope
if state.plan_incomplete is None:
    next_step("Next: run it", "run", key="next_run")
