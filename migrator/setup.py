"""Giving a local clinic store the practitioners, businesses and appointment types a clinic sets up itself.

A new clinic enters its team and locations before importing (seed 001's set-up
checklist); mapping then has something to match against. The demo does this
from the sandbox's destination account, so the demo's mapping is meaningful.
These records are the clinic's own: they carry no source id and no batch, and
deleting a batch never touches them.
"""

from __future__ import annotations

from typing import Any

from migrator.cliniko.client import ClinikoClient
from migrator.destinations import row_from_record

__all__ = ["SET_UP", "copy_clinic_setup"]

#: What a clinic sets up by hand, and the list routes it lives on.
SET_UP: tuple[tuple[str, str | None], ...] = (
    ("businesses", None),
    ("practitioners", None),
    ("practitioners", "inactive"),
    ("appointment_types", None),
)


def copy_clinic_setup(store: Any, client: ClinikoClient) -> dict[str, int]:
    """Copy an account's businesses, practitioners and appointment types into an empty store.

    Returns the number of records set up per entity; an entity the store already
    has records of is left alone (running it twice sets up nothing twice).
    """
    added: dict[str, int] = {}
    for entity, route in SET_UP:
        if store.count(entity) and entity not in added:
            continue
        rows = []
        for record in client.records(entity, route=route):
            # Links between set-up records (an appointment type's billable item) are left
            # empty: they point into the account, not into the store.
            row = row_from_record(entity, record.model_dump(mode="json"))
            row.pop("source_id")
            if entity == "practitioners":
                row["active"] = route != "inactive"
            rows.append(row)
        if rows:
            store.setup_reference(entity, rows)
        added[entity] = added.get(entity, 0) + len(rows)
    return added
