"""The opening-balance report of a Cliniko-to-Cliniko transfer.

Cliniko cannot import financials (seed 001): invoices, payments and credits stay in the
source account. What a patient still owes can be entered in the destination as an
*opening balance*, which Cliniko does not count as revenue. This report lists, for
every patient the transfer brought whose balance is not zero, what they owe by the
source's invoices now:

>>> frame = opening_balances(ledger, batch_id, source=source_client)   # doctest: +SKIP
>>> frame.write_csv("opening-balances.csv")                             # doctest: +SKIP

The rule is the reconciliation's (:mod:`migrator.reconcile`): an invoice owes its total
when Open (10) or Open credit (40, negative: the clinic owes the patient), nothing when
Paid (20) or Closed (30); deleted invoices are not listed by Cliniko and count for
nothing. Invoices are read within the plan's scope (one request per 100 invoices).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import polars as pl

from migrator.cliniko.client import ClinikoClient
from migrator.errors import NotFoundError
from migrator.ledger import Ledger
from migrator.reconcile import _BRINGS, _link_id, _owed, _plan_of, _source_invoices, _upto

__all__ = ["SCHEMA", "opening_balances"]

SCHEMA: dict[str, Any] = {
    "source_patient_id": pl.String,
    "destination_patient_id": pl.String,
    "patient": pl.String,
    "open_invoices": pl.Int64,
    "outstanding": pl.Decimal(38, 2),
}


def opening_balances(
    ledger: Ledger, batch_id: str, *, source: ClinikoClient, destination: Any | None = None
) -> pl.DataFrame:
    """Per-patient outstanding balances at the source, for the patients the batch's plan brought.

    Args:
        ledger: the workspace's ledger.
        batch_id: the transfer's batch (its plan's earlier batches count too).
        source: a client of the source account (reads its invoices).
        destination: the Cliniko destination; when given, patients whose name the ledger
            does not hold (linked ones) are named from it (one request each).

    Returns:
        Columns :data:`SCHEMA`, only patients owing (or owed) something, largest first.
    """
    batch = ledger.batch(batch_id)
    plan = _plan_of(batch)
    latest = ledger.latest_items(_upto(ledger, batch), "patients")
    patients = {sid: item.dest_id for sid, item in latest.items() if item.action in _BRINGS and item.dest_id}
    owed: dict[str, Decimal] = {}
    open_count: dict[str, int] = {}
    for raw in _source_invoices(source, plan):
        patient = _link_id(raw, "patient")
        if patient not in patients or raw.get("deleted_at"):
            continue
        amount = _owed(raw.get("status"), raw.get("total_amount"))
        owed[patient] = owed.get(patient, Decimal(0)) + amount
        if amount:
            open_count[patient] = open_count.get(patient, 0) + 1
    names = _names(ledger, batch_id, [sid for sid, amount in owed.items() if amount])
    rows = []
    for sid, amount in owed.items():
        if not amount:
            continue
        dest = str(patients[sid])
        name = names.get(sid)
        if name is None and destination is not None:
            name = _name_from(destination, dest)
        rows.append(
            {
                "source_patient_id": sid,
                "destination_patient_id": dest,
                "patient": name,
                "open_invoices": open_count.get(sid, 0),
                "outstanding": amount,
            }
        )
    frame = pl.DataFrame(rows, schema=SCHEMA, orient="row")
    return frame.sort([pl.col("outstanding").abs(), pl.col("source_patient_id")], descending=[True, False])


def _names(ledger: Ledger, batch_id: str, source_ids: list[str]) -> dict[str, str]:
    """Names of patients the plan's batches created, from the ledger's record of their creates."""
    if not source_ids:
        return {}
    marks = ",".join("?" * len(source_ids))
    with ledger.lock:
        rows = ledger.conn.execute(
            f"SELECT source_id, probe FROM writes WHERE entity = 'patients' AND source_id IN ({marks}) "
            "AND batch_id IN (SELECT id FROM batches WHERE destination = (SELECT destination FROM batches WHERE id = ?))",
            (*source_ids, batch_id),
        ).fetchall()
    out: dict[str, str] = {}
    for sid, probe in rows:
        fields = json.loads(probe or "{}")
        name = " ".join(p for p in (fields.get("first_name"), fields.get("last_name")) if p)
        if name:
            out[str(sid)] = name
    return out


def _name_from(destination: Any, dest_id: str) -> str | None:
    try:
        record = destination.client.get(f"/patients/{dest_id}")
    except NotFoundError:
        return None
    return " ".join(p for p in (record.get("first_name"), record.get("last_name")) if p) or None
