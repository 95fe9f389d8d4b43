"""Reconciliation for analysts: did every record arrive, and is every balance right?

Polars frames, for the console's Review page, ``python -m migrator reconcile`` and notebooks:

>>> result = reconcile(ledger, "b20261121-135301-3f9a", source=client, store=store)   # doctest: +SKIP
>>> result.ok, result.problems                                                       # doctest: +SKIP
(False, ['invoices: 1 record the batch brought is missing from the destination.'])
>>> result.balance_diffs                                                             # doctest: +SKIP

**Counts** (:func:`counts`), one row per entity of the batch's plan:

- ``in_scope``, ``created``, ``linked``, ``already_present``, ``skipped``: the batch's own
  ledger (``in_scope`` is their sum: what the engine found in scope at the source);
- ``removed_since``: of the records the batch brought, those no longer expected: removed
  by a later top-up because Cliniko deleted them, or by deleting a batch (this one; or an
  earlier one whose records this batch found already present or added to, since deleting
  a batch takes what was made for its patients with them, seed 000);
- ``in_destination``: of the records the batch brought (created, linked or already
  present), how many are in the destination now, each looked up by its destination id;
- ``in_destination_records``: how many destination records those are. Fewer when the
  mapping sent several source records to one (former practitioners to one generic
  "Former practitioner", two businesses mapped to the same one), which is how
  ``in_destination`` can exceed ``in_destination_total``;
- ``difference`` = ``in_destination`` - (``created`` + ``linked`` + ``already_present`` -
  ``removed_since``): below zero, records the ledger says arrived are missing;
- ``in_destination_total``: every record of that entity in the destination, whoever made it;
- ``in_scope_total``: the plan's records as its batches up to this one see them (a later
  batch's word on a record replaces an earlier one; records deleted at the source leave);
- ``source_count``: a **fresh count at the source**, independent of the engine: the
  ``total_entries`` of each list the plan reads (one request per list). For the scope
  ``all``, every entity is counted. Under a business or practitioner filter, only what
  the filter selects by itself can be counted that way: the appointments, group
  appointments, unavailable blocks and invoices at those businesses or of those
  practitioners (and, for practitioners, the notes they wrote), plus the account-wide
  lists (practitioners, appointment types, contacts ...); patients and what follows
  them are chosen through those records, so their ``source_count`` is null;
- ``source_difference`` = ``in_scope_total`` - ``source_count``: not zero when the source
  has records no batch of the plan saw (run a top-up) or the other way round.

**Balances** (:func:`balances`), one row per patient the plan brought: what the patient
owes by the source's invoices and by the destination's, and the difference (destination
less source), as exact decimals. One rule, the local store's (see
:mod:`migrator.destinations.local`): an invoice's outstanding amount is its total when
Open (10) or Open credit (40, its total as Cliniko gives it), zero when Paid
(20) or Closed (30), and zero when its status is unknown; a patient's balance is the sum
over their invoices. The source side applies it here, in Python, to the invoices the
source API lists now within the plan's scope (deleted ones are not listed); the
destination side applies it in SQL to the store's own ``invoices`` table, every invoice
of the patient's destination record whoever created it (for a Cliniko destination, its
opening-balance report: a store offering ``outstanding_by_patient``). Because each side
reads its own data, an open invoice dropped, doubled, given to the wrong patient, or changed
in amount, or any invoice whose status changed between owing and not, shows up as that
patient's difference. A Paid or Closed one owes nothing on either side: the counts catch
one dropped, and :func:`invoice_check`, from the same read, catches one moved to another
patient (``moved_invoices`` of :class:`Reconciliation`).

**Skipped** (:func:`skipped`, :func:`skipped_summary`): every record the batch did not
bring, with its reason code and sentence, and a count by reason.

**Flagged** (:func:`flagged`): records that came across but want a person's look, each
with its reason: near-matches created rather than linked (``review_*``: the same name and
date of birth more than once, a shared email), a change at the source the destination
could not take (``update_refused``), a record deleted at the source but kept because the
clinic has added to it (``deleted_at_source_kept``), a patient created or rewritten in a
Cliniko account without the answers it has no custom field for (``custom_fields_left``),
and a record this batch skipped whose copy an earlier batch created is still expected in
the destination (``kept_from_earlier_batch``, action ``skipped``: a practitioner sent to
"Former practitioner" by one plan and excluded by the next, say; the flag goes once that
batch is deleted). They do not count against reconciliation.

**Updated** (:func:`updated`): records an earlier batch brought that this one rewrote in
place (counted ``already_present``): changed in Cliniko since (``updated``), cancelled there
since (``cancelled``), or a copy that differed from an unchanged Cliniko record, edited
there or given another mapping since (``review_rewritten``, flagged as well), each with a sentence naming what changed. A
top-up's work, mostly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import polars as pl

from migrator.cliniko.client import ClinikoClient
from migrator.errors import ConfigError, paths_said
from migrator.ledger import UPDATED_SCHEMA, Batch, Ledger
from migrator.plan import Plan
from migrator.scope import Query, direct_queries
from migrator.stages import MAPPED, STAGES, stage
from migrator.topup import DELETED_AT_SOURCE

__all__ = [
    "BALANCE_SCHEMA",
    "COUNT_SCHEMA",
    "MISSING_SCHEMA",
    "MOVED_SCHEMA",
    "REMOVED_SINCE_WHY",
    "UPDATED_SCHEMA",
    "InvoiceCheck",
    "Reconciliation",
    "balances",
    "counts",
    "invoice_check",
    "merged_counts",
    "missing",
    "reconcile",
    "skipped",
    "skipped_summary",
    "updated",
]

#: Columns of :attr:`InvoiceCheck.moved`: invoices held by another patient in the destination than at the source.
MOVED_SCHEMA: dict[str, Any] = {
    "source_id": pl.String,  # the invoice's
    "dest_id": pl.String,
    "number": pl.String,
    "status": pl.Int64,
    "patient_id": pl.String,  # the source's patient, by source id
    "destination_patient_id": pl.String,  # the destination's, by source id; null: no batch of the plan brought it
}

#: How records come to be counted ``removed_since``, as the Review page and ``reconcile`` say it.
REMOVED_SINCE_WHY = "deleted in Cliniko and taken out by a top-up, or deleted with a batch"

#: Columns of :func:`counts`; the destination and source columns are null when not asked for.
COUNT_SCHEMA: dict[str, Any] = {
    "entity": pl.String,
    "in_scope": pl.Int64,
    "created": pl.Int64,
    "linked": pl.Int64,
    "already_present": pl.Int64,
    "skipped": pl.Int64,
    "removed_since": pl.Int64,
    "in_destination": pl.Int64,
    "in_destination_records": pl.Int64,
    "difference": pl.Int64,
    "in_destination_total": pl.Int64,
    "in_scope_total": pl.Int64,
    "source_count": pl.Int64,
    "source_difference": pl.Int64,
}
#: Columns of :func:`missing`: each record the batch brought that the destination no longer holds.
MISSING_SCHEMA: dict[str, Any] = {"entity": pl.String, "source_id": pl.String, "dest_id": pl.String}
#: Columns of :func:`balances`; money columns are ``pl.Decimal`` (scale 2, or more if the data has it).
BALANCE_SCHEMA: tuple[str, ...] = (
    "patient_id",
    "patient",
    "source_outstanding",
    "destination_outstanding",
    "difference",
)
_MONEY = ("source_outstanding", "destination_outstanding", "difference")
_BRINGS = ("created", "linked", "already_present")
_LIVE = ("running", "stopped", "failed", "completed")
#: Entities a business or practitioner filter selects directly (by ``business_id`` / ``practitioner_id``).
_DIRECT = ("individual_appointments", "group_appointments", "unavailable_blocks", "invoices")
#: Entities a scope never narrows: read whole whatever the filter.
_FOLLOWING = (
    "patients",
    "medical_alerts",
    "attendees",
    "treatment_notes",
    "patient_attachments",
    "invoice_items",
)


# --- the plan's batches -------------------------------------------------------------------


def _plan_of(batch: Batch) -> Plan:
    return Plan.model_validate(batch.plan)


def _same(batch: Batch, other: Batch) -> bool:
    def strip(b: Batch) -> dict[str, Any]:
        return {k: v for k, v in b.plan.items() if k != "created_with"}

    return (
        other.destination == batch.destination
        and other.source_account == batch.source_account
        and strip(other) == strip(batch)
    )


def _siblings(ledger: Ledger, batch: Batch) -> list[Batch]:
    """Every batch (``batch`` too) that moved its source account into its destination, newest first."""
    return [
        b
        for b in ledger.batches()
        if b.destination == batch.destination and b.source_account == batch.source_account
    ]


def _after(other: Batch, batch: Batch) -> bool:
    return (other.created_at, other.id) > (batch.created_at, batch.id)


def _upto(ledger: Ledger, batch: Batch) -> list[str]:
    """The plan's batches (not deleted) up to and including ``batch``, newest first."""
    return [
        b.id
        for b in _siblings(ledger, batch)
        if b.status in _LIVE and _same(batch, b) and not _after(b, batch)
    ]


def _newest_after(ledger: Ledger, batch: Batch) -> str | None:
    """The newest batch of the plan (not deleted) started after ``batch``, if any."""
    return next(
        (
            b.id
            for b in _siblings(ledger, batch)
            if b.status in _LIVE and _same(batch, b) and _after(b, batch)
        ),
        None,
    )


def _later(ledger: Ledger, batch: Batch, *, deleted: bool = False) -> list[str]:
    """Live batches into the same destination from the same account, started after ``batch``.

    With ``deleted``, the deleted ones (and any being deleted) instead.
    """
    return [b.id for b in _siblings(ledger, batch) if (b.status not in _LIVE) == deleted and _after(b, batch)]


def _entities(batch: Batch, ledger_counts: Mapping[str, object]) -> list[str]:
    """The batch's entities in stage order: its plan's data types, the mapped ones, and any with items
    (``ledger_counts``: :meth:`Ledger.counts <migrator.ledger.Ledger.counts>` of the batch)."""
    included = set(batch.plan.get("include") or ()) | set(MAPPED) | set(ledger_counts)
    return [s.entity for s in STAGES if s.entity in included]


# --- counts -------------------------------------------------------------------------------


def counts(
    ledger: Ledger, batch_id: str, *, store: Any | None = None, source: ClinikoClient | None = None
) -> pl.DataFrame:
    """Entity counts of a batch: the ledger, the destination, and a fresh count at the source.

    Args:
        ledger: the workspace's ledger.
        batch_id: the batch to reconcile.
        store: the destination (fills ``in_destination``, ``difference`` and ``in_destination_total``).
        source: a client of the source account (fills ``source_count`` and ``source_difference``;
            one request per list, see the module docstring for what a scoped plan counts).

    Returns:
        One row per entity, columns :data:`COUNT_SCHEMA`, in stage order.

    Raises:
        BatchNotFound: no such batch. APIError: the source failed beyond retries.
    """
    return _counts(ledger, batch_id, store=store, source=source)[0]


def counts_and_missing(ledger: Ledger, batch_id: str, *, store: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`counts` (the ledger's and the destination's sides) and :func:`missing`, from one read.

    Both come from the same pass over the batch's records, which takes seconds for a large
    clinic: a page that shows the counts and, when some are short, which records, reads once.
    """
    return _counts(ledger, batch_id, store=store)


def missing(ledger: Ledger, batch_id: str, *, store: Any) -> pl.DataFrame:
    """The records behind :func:`counts`' negative ``difference``: ``entity``, ``source_id``, ``dest_id``.

    Each is a record the ledger says the batch brought (created, linked or already present),
    not removed since, whose destination id the destination no longer holds (deleted by
    hand, say); ``dest_id`` is null when no destination id was ever recorded for it.
    """
    return _counts(ledger, batch_id, store=store)[1]


def _counts(
    ledger: Ledger, batch_id: str, *, store: Any | None, source: ClinikoClient | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`counts` and :func:`missing` from one pass over the batch's records."""
    batch = ledger.batch(batch_id)
    plan = _plan_of(batch)
    ledger_counts = ledger.counts(batch_id)
    entities = _entities(batch, ledger_counts)
    later, withdrawn = _later(ledger, batch), _later(ledger, batch, deleted=True)
    plan_batches = _upto(ledger, batch)
    in_scope_total = ledger.latest_counts(plan_batches, leave_out_skipped=DELETED_AT_SOURCE)
    fresh = _source_counts(source, plan, entities) if source is not None else {}
    rows = []
    lost: list[tuple[str, str, str | None]] = []
    for entity in entities:
        row: dict[str, Any] = dict.fromkeys(COUNT_SCHEMA)
        row["entity"] = entity
        by_action = ledger_counts.get(entity, {})
        for action in ("created", "linked", "already_present", "skipped"):
            row[action] = by_action.get(action, 0)
        row["in_scope"] = sum(
            by_action.get(a, 0) for a in ("created", "linked", "already_present", "skipped")
        )
        present, records, removed, absent = _presence(ledger, batch, entity, later, withdrawn, store)
        lost += [(entity, source_id, dest_id) for source_id, dest_id in absent]
        row["removed_since"] = removed
        if store is not None:
            expected = sum(row[a] for a in _BRINGS) - removed
            row["in_destination"] = present
            row["in_destination_records"] = records
            row["difference"] = present - expected
            row["in_destination_total"] = store.count(entity)
        row["in_scope_total"] = in_scope_total.get(entity, 0)
        if fresh.get(entity) is not None:
            row["source_count"] = fresh[entity]
            row["source_difference"] = row["in_scope_total"] - fresh[entity]
        rows.append(row)
    return (
        pl.DataFrame(rows, schema=COUNT_SCHEMA, orient="row"),
        pl.DataFrame(lost, schema=MISSING_SCHEMA, orient="row"),
    )


def merged_counts(new: pl.DataFrame, old: pl.DataFrame | None) -> pl.DataFrame:
    """``new`` :func:`counts` of a batch, with what only ``old`` had counted kept.

    Counting at the source without a destination, or in the destination without the
    source, leaves the other's columns empty: where ``new`` has no value for an entity,
    ``old``'s stands, so one count does not wipe out the other.

    >>> old = pl.DataFrame({"entity": ["patients"], "in_destination": [5], "source_count": [None]})
    >>> new = pl.DataFrame({"entity": ["patients"], "in_destination": [None], "source_count": [6]})
    >>> merged_counts(new, old).row(0)
    ('patients', 5, 6)
    """
    if old is None:
        return new
    columns = [c for c in new.columns if c != "entity"]
    earlier = old.select("entity", *[pl.col(c).alias(f"{c}__earlier") for c in columns if c in old.columns])
    joined = new.join(earlier, on="entity", how="left", maintain_order="left")
    return joined.select(
        "entity",
        *[pl.coalesce(c, f"{c}__earlier").alias(c) if c in old.columns else pl.col(c) for c in columns],
    )


def _presence(
    ledger: Ledger, batch: Batch, entity: str, later: list[str], withdrawn: list[str], store: Any | None
) -> tuple[int, int, int, list[tuple[str, str | None]]]:
    """``(in the destination now, the destination records they are, removed since, missing)``.

    All among the records the batch brought.

    ``missing`` holds ``(source id, destination id)`` of those neither removed since nor in
    the destination (empty without a ``store``).

    A later batch's word on a record wins: removed because Cliniko deleted it, or found
    at another destination id (brought again after it went missing). A later batch
    deleted since (``withdrawn``) still has its word on what it removed because Cliniko
    deleted it: deleting a top-up does not bring those back. A record deleting a batch
    removed (:meth:`Ledger.removed_by_deletion`) is removed too.
    """
    brought = ledger.dest_ids_of(batch.id, entity, _BRINGS)
    if not brought:
        return 0, 0, 0, []
    newer = ledger.latest_items(later, entity, brought) if later else {}
    unsaid = [sid for sid in brought if sid not in newer]
    if withdrawn and unsaid:
        newer.update(
            (sid, item)
            for sid, item in ledger.latest_items(withdrawn, entity, unsaid).items()
            if item.action == "skipped" and item.reason_code == DELETED_AT_SOURCE
        )
    removed = {
        sid
        for sid, item in newer.items()
        if item.action == "skipped" and item.reason_code == DELETED_AT_SOURCE
    }
    where = {
        sid: (newer[sid].dest_id if sid in newer and newer[sid].action in _BRINGS else dest)
        for sid, dest in brought.items()
        if sid not in removed
    }
    deleted = ledger.removed_by_deletion(batch.destination, entity, [d for d in where.values() if d])
    where = {sid: dest for sid, dest in where.items() if dest not in deleted}
    gone = len(brought) - len(where)
    if store is None:
        return 0, 0, gone, []
    existing = store.existing_ids(entity, [d for d in where.values() if d is not None])
    absent = [(sid, dest) for sid, dest in where.items() if dest not in existing]
    records = len({dest for dest in where.values() if dest in existing})
    return len(where) - len(absent), records, gone, absent


def _count_lists(plan: Plan, entity: str) -> list[Query] | None:
    """The lists whose ``total_entries`` add up to what the plan has in scope, or ``None`` if none do."""
    routes: list[str | None] = [
        r for r in stage(entity).routes if not (entity == "patients" and r == "archived")
    ]
    if entity == "patients" and plan.include_archived_patients:
        routes.append("archived")
    scope = plan.scope
    if scope.kind == "all" or entity in MAPPED or entity not in (*_DIRECT, *_FOLLOWING):
        return [Query(entity, route) for route in routes]
    if entity in _DIRECT or (entity == "treatment_notes" and scope.kind == "practitioner"):
        return direct_queries(entity, scope.kind, scope.ids)
    return None


def _source_counts(source: ClinikoClient, plan: Plan, entities: list[str]) -> dict[str, int | None]:
    """A fresh count per entity at the source, the lists counted concurrently."""
    lists = {e: _count_lists(plan, e) for e in entities}
    jobs = [(e, q) for e, queries in lists.items() for q in queries or ()]
    totals = source.counts([(q.resource, q.filters, q.route) for _, q in jobs])
    out: dict[str, int | None] = {e: (None if q is None else 0) for e, q in lists.items()}
    for (entity, _), total in zip(jobs, totals, strict=True):
        out[entity] = (out[entity] or 0) + total
    return out


# --- balances -----------------------------------------------------------------------------


def _status_code(status: object) -> int | None:
    """An invoice's status as its code (10 Open, 20 Paid, 30 Closed, 40 Open credit); ``None`` if not one."""
    try:
        return int(str(status))
    except ValueError:
        return None


def _owed(status: object, total: object) -> Decimal:
    """The rule on the source's side: Open and Open credit owe their total, the rest nothing."""
    if _status_code(status) in (10, 40) and total not in (None, ""):
        try:
            return Decimal(str(total))
        except InvalidOperation:
            return Decimal(0)
    return Decimal(0)


def _link_id(raw: dict[str, Any], rel: str) -> str | None:
    link = raw.get(rel)
    if isinstance(link, dict):
        url = (link.get("links") or {}).get("self")
        if url:
            return str(url).split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    value = raw.get(f"{rel}_id")
    return None if value is None else str(value)


#: Called after each page of the source's invoices: ``(invoices read, invoices listed)``. Under
#: a business or practitioner filter the lists are read one after another, and each adds its
#: total when its first page comes.
InvoiceProgress = Callable[[int, int], None]


def _source_invoices(
    source: ClinikoClient, plan: Plan, progress: InvoiceProgress | None = None
) -> Iterator[dict[str, Any]]:
    scope = plan.scope
    queries = (
        [Query("invoices")] if scope.kind == "all" else direct_queries("invoices", scope.kind, scope.ids)
    )
    read = listed = 0
    for query in queries:
        for number, page in enumerate(source.pages("invoices", query.filters)):
            yield from page.records
            read += len(page.records)
            listed += (page.total_entries or 0) if number == 0 else 0
            if progress is not None:
                progress(read, max(read, listed))


def _money_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    amounts = [r[c] for r in rows for c in _MONEY]
    scale = max([2, *(-int(a.as_tuple().exponent) for a in amounts if a.is_finite())])
    money = pl.Decimal(38, scale)
    schema: dict[str, Any] = {"patient_id": pl.String, "patient": pl.String, **dict.fromkeys(_MONEY, money)}
    return pl.DataFrame(rows, schema=schema, orient="row")


@dataclass(frozen=True)
class InvoiceCheck:
    """What :func:`invoice_check` found: ``balances`` per patient, and invoices ``moved`` to another patient."""

    balances: pl.DataFrame
    moved: pl.DataFrame


def balances(ledger: Ledger, batch_id: str, *, source: ClinikoClient, store: Any) -> pl.DataFrame:
    """Per-patient balances at the source and in the destination, and their difference.

    Every patient the plan's batches (up to this one) brought is listed, with zeros when
    they have no invoices, but for those deleting a batch removed since (counted
    ``removed_since``: nothing of theirs is expected in the destination any more); see the
    module docstring for the rule and its two code paths.
    Reading the source's invoices costs one request per 100 invoices in the plan's scope.
    The destination side leaves out invoices another plan of this source brought and this
    plan did not (a full batch's invoices at other businesses, beside a business batch):
    the source side, reading this plan's scope, does not list them either.

    Returns:
        Columns ``patient_id`` (the source id), ``patient`` (the destination's name for
        them), ``source_outstanding``, ``destination_outstanding`` and ``difference``
        (destination less source), money as ``pl.Decimal``; patients whose balances
        differ first. No rows when the plan does not include invoices.
    """
    return invoice_check(ledger, batch_id, source=source, store=store).balances


def invoice_check(
    ledger: Ledger,
    batch_id: str,
    *,
    source: ClinikoClient,
    store: Any,
    progress: InvoiceProgress | None = None,
) -> InvoiceCheck:
    """:func:`balances`, and the invoices the destination holds under another patient, from one read.

    A balance catches an open invoice given to the wrong patient (one owes more, the other
    less), but not a paid or closed one, which owes nothing either way. So each invoice the
    plan's batches brought is also followed to its patient in the destination and compared
    with its patient at the source: ``moved`` (:data:`MOVED_SCHEMA`) lists those that differ.
    Invoices deleted at the source, missing from the destination (see :func:`missing`), or of
    a patient no batch of the plan brought are not compared. ``progress`` follows the read
    (:data:`InvoiceProgress`): a large clinic's invoices take minutes at Cliniko's pace.
    """
    batch = ledger.batch(batch_id)
    plan = _plan_of(batch)
    if "invoices" not in plan.include:
        return InvoiceCheck(_money_frame([]), pl.DataFrame(schema=MOVED_SCHEMA))
    batches = _upto(ledger, batch)
    latest = ledger.latest_items(batches, "patients")
    patients = {sid: item.dest_id for sid, item in latest.items() if item.action in _BRINGS and item.dest_id}
    # A patient deleting a batch removed since is counted removed_since, and owes nothing here any more.
    removed = ledger.removed_by_deletion(batch.destination, "patients", patients.values())
    patients = {sid: dest for sid, dest in patients.items() if dest not in removed}
    at_source: dict[str, Decimal] = dict.fromkeys(patients, Decimal(0))
    owners: dict[str, dict[str, Any]] = {}  # source invoice id -> its patient, number and status
    for raw in _source_invoices(source, plan, progress):
        if raw.get("deleted_at"):
            continue
        patient = _link_id(raw, "patient")
        if patient in at_source:
            at_source[patient] += _owed(raw.get("status"), raw.get("total_amount"))
            owners[str(raw.get("id"))] = {
                "patient_id": patient,
                "number": None if raw.get("number") is None else str(raw["number"]),
                "status": _status_code(raw.get("status")),
            }
    if not hasattr(store, "outstanding_by_patient"):
        raise TypeError(f"{type(store).__name__} cannot report what patients owe (no outstanding_by_patient)")
    by_dest = store.outstanding_by_patient(
        set(patients.values()), leave_out=_other_plans_invoices(ledger, batch)
    )
    rows = []
    for sid, dest in patients.items():
        name, owed = by_dest.get(str(dest), (None, Decimal(0)))
        rows.append(
            {
                "patient_id": sid,
                "patient": name or None,
                "source_outstanding": at_source[sid],
                "destination_outstanding": owed,
                "difference": owed - at_source[sid],
            }
        )
    frame = _money_frame(rows).sort(
        [(pl.col("difference") != 0), pl.col("difference").abs(), pl.col("patient_id")],
        descending=[True, True, False],
    )
    return InvoiceCheck(frame, _moved(ledger, batches, owners, patients, store))


def _moved(
    ledger: Ledger,
    batches: list[str],
    owners: dict[str, dict[str, Any]],
    patients: dict[str, str],
    store: Any,
) -> pl.DataFrame:
    """The invoices in ``owners`` the destination holds under another patient than ``owners`` says."""
    brought = {
        sid: item.dest_id
        for sid, item in ledger.latest_items(batches, "invoices", list(owners)).items()
        if item.action in _BRINGS and item.dest_id
    }
    held = store.invoice_patients(brought.values())
    source_of = {dest: sid for sid, dest in patients.items()}
    rows = []
    for sid, dest in brought.items():
        if dest not in held:  # missing: counts name it
            continue
        owner, patient = owners[sid], held[dest]
        if patient != patients[owner["patient_id"]]:
            rows.append(
                {
                    "source_id": sid,
                    "dest_id": dest,
                    **owner,
                    "destination_patient_id": source_of.get(patient) if patient else None,
                }
            )
    return pl.DataFrame(rows, schema=MOVED_SCHEMA, orient="row").sort("source_id")


def _other_plans_invoices(ledger: Ledger, batch: Batch) -> set[str]:
    """Destination ids of invoices live batches of other plans (same source and destination) brought, and this plan's not."""
    mine: list[str] = []
    others: list[str] = []
    for b in _siblings(ledger, batch):
        if b.status in _LIVE:
            (mine if _same(batch, b) else others).append(b.id)
    if not others:
        return set()

    def brought(batch_ids: list[str]) -> set[str]:
        items = ledger.latest_items(batch_ids, "invoices").values() if batch_ids else ()
        return {i.dest_id for i in items if i.action in _BRINGS and i.dest_id}

    return brought(others) - brought(mine)


# --- skipped ------------------------------------------------------------------------------


def skipped(ledger: Ledger, batch_id: str) -> pl.DataFrame:
    """Every record the batch skipped: ``entity``, ``source_id``, ``reason_code``, ``reason`` (a sentence)."""
    ledger.batch(batch_id)
    return ledger.skipped_frame(batch_id)


def skipped_summary(ledger: Ledger, batch_id: str) -> pl.DataFrame:
    """Skipped records counted by entity and reason: ``entity``, ``reason_code``, ``count`` (most first)."""
    return by_reason(skipped(ledger, batch_id))


def by_reason(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows of ``frame`` (skipped or flagged) counted by entity and reason: ``entity``, ``reason_code``, ``count``."""
    return (
        frame.group_by("entity", "reason_code")
        .len(name="count")
        .with_columns(pl.col("count").cast(pl.Int64))
        .sort(["count", "entity", "reason_code"], descending=[True, False, False], nulls_last=True)
    )


def flagged(ledger: Ledger, batch_id: str) -> pl.DataFrame:
    """Records in the destination that want a look: ``entity``, ``source_id``, ``dest_id``, ``action``,
    ``reason_code``, ``reason`` (see the module's docstring: mostly what the batch brought, and
    what it skipped whose earlier copy is still there)."""
    ledger.batch(batch_id)
    return ledger.flagged_frame(batch_id)


def updated(ledger: Ledger, batch_id: str) -> pl.DataFrame:
    """Records an earlier batch brought that this one rewrote in place: ``entity``, ``source_id``,
    ``dest_id``, ``reason_code`` (``updated``, ``cancelled``, ``review_rewritten``), ``reason``."""
    ledger.batch(batch_id)
    return ledger.updated_frame(batch_id)


# --- all three ----------------------------------------------------------------------------


def _moved_sentence(moved: pl.DataFrame, most: int = 3) -> str:
    """One sentence naming the first ``most`` invoices of :attr:`InvoiceCheck.moved` (there must be one)."""
    named = ", ".join(
        f"number {r['number'] or '?'} (source id {r['source_id']}) is patient {r['patient_id']}'s in Cliniko "
        + (
            f"but patient {r['destination_patient_id']}'s here"
            if r["destination_patient_id"]
            else "but here belongs to a patient no batch brought"
        )
        for r in moved.head(most).iter_rows(named=True)
    )
    more = f" and {moved.height - most} more (see moved_invoices)" if moved.height > most else ""
    many = f"{moved.height} invoices are" if moved.height > 1 else "1 invoice is"
    return f"invoices: {many} with another patient in the destination than in Cliniko: {named}{more}."


#: How :attr:`Reconciliation.problems` says a batch did not finish, by its status.
_UNFINISHED = {
    "stopped": "was stopped before it finished",
    "failed": "failed before it finished",
    "running": "has not finished (it is running, or its process was killed)",
}


@dataclass(frozen=True, repr=False)
class Reconciliation:
    """The three checks of one batch, as frames, and what differs in sentences.

    Its repr is a one-line summary (a notebook cell shows it), not every frame in full:

    >>> check                                                                    # doctest: +SKIP
    Reconciliation('b20261121-135301-3f9a', ok=False, problems=1, entities=18, balances=398 (1 differ),
    moved_invoices=0, missing=0, skipped=12, flagged=0, updated=0)
    """

    batch_id: str
    counts: pl.DataFrame
    balances: pl.DataFrame
    skipped: pl.DataFrame
    skipped_summary: pl.DataFrame
    flagged: pl.DataFrame
    #: The newest later batch of the same plan (a top-up, a re-run), if any: it accounts for
    #: what changed at the source since, so the source's counts are that batch's to match.
    newer: str | None = None
    #: The batch's status when it was checked: one that did not finish (``stopped``, ``failed``,
    #: a ``running`` one killed) has not read everything its plan covers yet.
    status: str = "completed"
    #: The records behind a negative ``difference`` in ``counts`` (:func:`missing`).
    missing: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=MISSING_SCHEMA))
    #: Invoices the destination holds under another patient than the source (:func:`invoice_check`).
    moved_invoices: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=MOVED_SCHEMA))
    #: Records an earlier batch brought that this one rewrote in place (:func:`updated`).
    updated: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=UPDATED_SCHEMA))

    def __repr__(self) -> str:
        return (
            f"Reconciliation({self.batch_id!r}, ok={self.ok}, problems={len(self.problems)}, "
            f"entities={self.counts.height}, balances={self.balances.height} ({self.balance_diffs.height} differ), "
            f"moved_invoices={self.moved_invoices.height}, missing={self.missing.height}, "
            f"skipped={self.skipped.height}, flagged={self.flagged.height}, updated={self.updated.height})"
        )

    @property
    def balance_diffs(self) -> pl.DataFrame:
        """Only the patients whose balances differ."""
        return self.balances.filter(pl.col("difference") != 0)

    @property
    def problems(self) -> list[str]:
        """One sentence per thing that does not reconcile; empty when everything does."""
        out = []
        for row in self.counts.iter_rows(named=True):
            entity, diff = row["entity"], row["difference"]
            if diff:
                n = abs(diff)
                what = f"{n} record{'s' if n > 1 else ''} the batch brought {'are' if n > 1 else 'is'}"
                out.append(
                    f"{entity}: {what} missing from the destination{self._named_missing(entity)}."
                    if diff < 0
                    else f"{entity}: the destination holds {n} more than the batch brought."
                )
            if row["source_difference"]:
                since = (
                    f"batch {self.newer}, newer, accounts for what changed since: reconcile that one"
                    if self.newer
                    else f"the batch {_UNFINISHED.get(self.status, 'has not finished')}: running its plan again "
                    "resumes it"
                    if self.status != "completed"
                    else "a top-up brings what changed since"
                )
                out.append(
                    f"{entity}: the source lists {row['source_count']:,} now; the plan's batches up to this one "
                    f"account for {row['in_scope_total']:,} ({since})."
                )
        diffs = self.balance_diffs
        if diffs.height:
            shown = ", ".join(
                f"{r['patient'] or 'patient'} ({r['patient_id']}) by {r['difference']:+}"
                for r in diffs.head(3).iter_rows(named=True)
            )
            more = f" and {diffs.height - 3} more" if diffs.height > 3 else ""
            whose = (
                f"{diffs.height} patients' balances differ"
                if diffs.height > 1
                else "1 patient's balance differs"
            )
            out.append(f"{whose} from Cliniko's: {shown}{more}.")
        if self.moved_invoices.height:
            out.append(_moved_sentence(self.moved_invoices))
        return out

    def _named_missing(self, entity: str, most: int = 3) -> str:
        """``: source id 12 (destination id 7)``: which records of ``entity`` are missing, ``most`` named."""
        rows = self.missing.filter(pl.col("entity") == entity).rows(named=True)
        if not rows:
            return ""
        named = ", ".join(
            f"source id {r['source_id']} "
            + (f"(destination id {r['dest_id']})" if r["dest_id"] else "(no destination id recorded)")
            for r in rows[:most]
        )
        more = f" and {len(rows) - most} more (see missing)" if len(rows) > most else ""
        return f": {named}{more}"

    @property
    def ok(self) -> bool:
        """Whether everything reconciles (skipped records, each with its reason, do not count against it)."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: counts, how many patients' balances were checked and those that differ (money as
        strings), the number skipped, the problems."""
        return {
            "batch_id": self.batch_id,
            "reconciled": self.ok,
            "counts": self.counts.to_dicts(),
            "balances_checked": self.balances.height,
            "balance_diffs": [
                {k: (str(v) if isinstance(v, Decimal) else v) for k, v in row.items()}
                for row in self.balance_diffs.to_dicts()
            ],
            "missing": self.missing.to_dicts(),
            "moved_invoices": self.moved_invoices.to_dicts(),
            "skipped": self.skipped.height,
            "flagged": self.flagged.height,
            "updated": self.updated.height,
            "problems": self.problems,
        }

    @paths_said
    def write(self, folder: str | Path) -> list[Path]:
        """Write each frame as CSV and Parquet into ``folder`` (created if missing); return the files.

        Files of an earlier check in that folder are replaced.

        Raises:
            ConfigError: ``folder`` is a file, or the file system refuses it (one sentence naming it).
        """
        out = Path(folder)
        if out.exists() and not out.is_dir():
            raise ConfigError(
                f"Cannot use {out}: a file is already there where a folder for the check's CSV and Parquet "
                "files is needed."
            )
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in (
            "counts",
            "missing",
            "balances",
            "moved_invoices",
            "skipped",
            "skipped_summary",
            "flagged",
            "updated",
        ):
            frame: pl.DataFrame = getattr(self, name)
            csv, parquet = out / f"{name}.csv", out / f"{name}.parquet"
            with open(csv, "wb") as text, open(parquet, "wb") as columns:  # a refusal names the file
                frame.write_csv(text)
                frame.write_parquet(columns)
            written += [csv, parquet]
        return written


def reconcile(
    ledger: Ledger,
    batch_id: str,
    *,
    source: ClinikoClient,
    store: Any,
    progress: InvoiceProgress | None = None,
) -> Reconciliation:
    """Counts, balances and skipped records of a batch in one go (see the module docstring).

    ``progress`` follows the read of the source's invoices (:data:`InvoiceProgress`), most of
    the check's requests.

    Raises:
        BatchNotFound: no such batch. ConfigError: the batch was deleted, or its deletion was
        interrupted (nothing of it is left to check). APIError: the source failed beyond retries.
    """
    batch = ledger.batch(batch_id)
    if batch.status == "deleting":
        raise ConfigError(
            f"Batch {batch_id} is part-way through its deletion: finish deleting it (delete it again); nothing of "
            "it will be left to reconcile."
        )
    if batch.status == "deleted":
        raise ConfigError(f"Batch {batch_id} has been deleted; there is nothing of it left to reconcile.")
    count_frame, missing_frame = _counts(ledger, batch_id, store=store, source=source)
    invoices = invoice_check(ledger, batch_id, source=source, store=store, progress=progress)
    skipped_frame = skipped(ledger, batch_id)
    return Reconciliation(
        batch_id=batch_id,
        counts=count_frame,
        missing=missing_frame,
        moved_invoices=invoices.moved,
        balances=invoices.balances,
        skipped=skipped_frame,
        skipped_summary=by_reason(skipped_frame),
        flagged=flagged(ledger, batch_id),
        updated=updated(ledger, batch_id),
        newer=_newest_after(ledger, ledger.batch(batch_id)),
        status=batch.status,
    )
