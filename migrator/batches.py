"""Deleting a batch within 48 hours of its import (seed 000).

Only what the batch **created** is deleted; records it merely linked to were in
the destination before it and are never touched. As in Cliniko, deleting a
batch's patients also deletes what was since created for them (appointments,
notes, invoices... added later by hand or by another batch): the preview lists
those separately so the person confirming sees them.

A batch whose records others rely on is not deleted: when a later batch's appointments
use a practitioner or an appointment type this batch created, deleting it would leave
them pointing at nothing, so :func:`delete_batch` refuses, naming those batches (delete
them first). Records created since for the batch's patients are not such a case: they
go with their patients. In a Cliniko account, deleting (and :func:`deletion_plan`) reads
the account with its key, so it also sees records the clinic made there by hand; listings
(:func:`blocker`, :func:`ledger_deletion_plan`) hold no key and read what later batches'
creates sent (the ledger's ``writes``). Patients, archived rather than deleted, keep what
uses them.

Deletion runs in reverse dependency order, one entity at a time, chunk by chunk; the
ledger notes each chunk removed (``deletions``: in the same transaction as a local
store's delete, after the requests for a Cliniko account, which holds no ledger
transaction open across them). The batch is ``deleting`` while it runs, so an
interrupted deletion is finished by running it again, and its plan (a dry-run) lists
only what is left, with what is already gone counted apart; ``deleted`` when done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from migrator.destinations.local import KeptLink, LocalStore
from migrator.errors import MigratorError
from migrator.ledger import Batch, Ledger, may_write
from migrator.plan import records_of

__all__ = [
    "BatchNotDeletable",
    "DeletionPlan",
    "blocker",
    "deletable",
    "delete_batch",
    "deletion_plan",
    "shared_store",
]

_CHUNK = 500
#: Records deleted in a Cliniko account between two notes in the ledger: at most this many
#: are deleted again (an id already gone counts as done) after an interruption.
_REQUESTS_PER_CHUNK = 20


class BatchNotDeletable(MigratorError):
    """The batch is too old, already deleted, or still running."""


@dataclass(frozen=True)
class DeletionPlan:
    """What deleting a batch removes, per entity.

    Attributes:
        created: records the batch created, by entity.
        dependents: records created since for the batch's patients (not by this
            batch), by entity: seed 000's warning.
        kept_links: records that would stay while linking to one that goes: other batches'
            and the clinic's own (in a Cliniko account, as the account has them when read
            with its key, else as the ledger has other batches' creates); while there are
            any, the batch is not deleted (:attr:`blocker`).
        already_deleted: how many records of each entity an interrupted deletion of the
            batch has removed already (not in ``created`` or ``dependents``).
        matched: the ids in ``created`` that a Cliniko account's key found by their details
            rather than from the ledger: the batch's creates whose answers were lost when a
            run was interrupted (:meth:`ClinikoDestination.created_and_matched
            <migrator.destinations.cliniko.ClinikoDestination.created_and_matched>`).
        unanswered: without the key, how many such creates there are, by entity: deleting
            looks for their records then (:func:`ledger_deletion_plan`).
        found_by_later: of ``created``, how many each later batch found already present rather
            than bring again, by batch then entity (:meth:`Ledger.found_present_by_later
            <migrator.ledger.Ledger.found_present_by_later>`): they go too, and leave that batch
            short of them (:attr:`found_by_later_note`).
    """

    batch_id: str
    created: dict[str, list[str]]
    dependents: dict[str, list[str]]
    kept_links: tuple[KeptLink, ...] = ()
    already_deleted: dict[str, int] = field(default_factory=dict)
    matched: dict[str, list[str]] = field(default_factory=dict)
    unanswered: dict[str, int] = field(default_factory=dict)
    found_by_later: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.created.values()) + sum(len(v) for v in self.dependents.values())

    @property
    def blocker(self) -> str | None:
        """Why the batch cannot be deleted while others rely on it, in one sentence; ``None`` if nothing does."""
        if not self.kept_links:
            return None
        relying = _relying(self.kept_links)
        batches = sorted({link.batch_id for link in self.kept_links if link.batch_id})
        steps = [f"delete {'batch' if len(batches) == 1 else 'batches'} {_and(batches)}"] if batches else []
        if any(link.batch_id is None for link in self.kept_links):
            steps.append("change or delete the clinic's own records")
        advice = ", and ".join(steps)
        return (
            f"Batch {self.batch_id} cannot be deleted while other records rely on what it created ({relying}): "
            f"{advice} first, or keep this one."
        )

    @property
    def already_deleted_note(self) -> str | None:
        """What an interrupted deletion of the batch already removed, in one sentence; ``None`` if nothing."""
        done = _counted(self.already_deleted)
        return f"Already deleted before the last deletion stopped part-way: {done}." if done else None

    @property
    def matched_note(self) -> str | None:
        """Which records deleting takes on their details alone (creates whose answers were lost); ``None`` if none."""
        if found := _listed(self.matched):
            return (
                f"Found in the account by their details, as the answers to the batch's creates of them were lost "
                f"when a run was interrupted: {found}. Make sure none of them is a record the clinic made itself."
            )
        if lost := _counted(self.unanswered):
            return (
                f"The answers to the batch's creates of {lost} were lost when a run was interrupted: deleting "
                "looks for those records in the account by their details, and removes what it finds with the rest."
            )
        return None

    @property
    def found_by_later_note(self) -> str | None:
        """Which later batches lose records they found already present, in one sentence; ``None`` if none.

        Their reconciliation then counts those records as removed since, not missing: the
        sentence is said before the deletion, while it can still be weighed.
        """
        if not self.found_by_later:
            return None
        found = {
            batch: _and(records_of(e, n) for e, n in counts.items())
            for batch, counts in self.found_by_later.items()
        }
        if len(found) == 1:
            [(batch, what)] = found.items()
            return (
                f"Batch {batch} found {what} of these already present, so it did not bring them itself: they go "
                f"too, and running that batch's plan again afterwards brings them back anew."
            )
        listed = "; ".join(f"batch {batch}, {what}" for batch, what in found.items())
        return (
            f"Later batches found some of these already present, so they did not bring them themselves ({listed}): "
            "they go too, and running those batches' plans again afterwards brings them back anew."
        )

    def __repr__(self) -> str:
        """Counts, not ids (:meth:`as_dict`'s figures): a large batch's ids would flood a notebook's cell."""
        shown = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items() if v not in ({}, None))
        return f"DeletionPlan({shown})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "created": {k: len(v) for k, v in self.created.items() if v},
            "created_since_for_its_patients": {k: len(v) for k, v in self.dependents.items() if v},
            "found_present_by_later_batches": self.found_by_later,
            "total": self.total,
            "already_deleted": {k: n for k, n in self.already_deleted.items() if n},
            "found_by_matching": {k: len(v) for k, v in self.matched.items() if v},
            "unanswered_creates": {k: n for k, n in self.unanswered.items() if n},
            "blocked_by": self.blocker,
        }


def deletion_plan(ledger: Ledger, store: Any, batch_id: str) -> DeletionPlan:
    """List what :func:`delete_batch` would remove, without removing anything."""
    batch = ledger.batch(batch_id)  # raises BatchNotFound with a sentence
    parts = {entity: store.created_and_matched(batch_id, entity) for entity in store.DELETE_ORDER}
    created, gone = _left_to_delete(
        ledger, batch_id, {e: recorded + found for e, (recorded, found) in parts.items()}
    )
    matched = {
        e: left for e, (_, found) in parts.items() if (left := [i for i in found if i not in gone.get(e, ())])
    }
    patients = created.get("patients", [])
    dependents: dict[str, list[str]] = {}
    if patients:
        for entity, ids in store.dependents_of_patients(patients).items():
            mine = set(created.get(entity, [])) | gone.get(entity, set())
            others = [i for i in ids if i not in mine]
            if others:
                dependents[entity] = others
    links: tuple[KeptLink, ...] = ()
    if isinstance(store, LocalStore):
        removing = {e: created.get(e, []) + dependents.get(e, []) for e in store.DELETE_ORDER}
        links = tuple(store.links_into(removing))
    elif batch.destination.startswith("cliniko:"):
        # The account itself, read with its key: records the clinic made there by hand too.
        links = tuple(store.account_links_into(batch_id, created))
    return DeletionPlan(
        batch_id,
        created,
        dependents,
        links,
        {e: len(ids) for e, ids in gone.items()},
        matched=matched,
        found_by_later=ledger.found_present_by_later(batch_id, created),
    )


def _counted(counts: Mapping[str, int]) -> str:
    """``3 medical alerts, 1 patient``: each entity's count, leaving out the zeros."""
    return ", ".join(records_of(entity, n) for entity, n in counts.items() if n)


def _relying(kept_links: Sequence[KeptLink]) -> str:
    """What would lose a link, per owner and link: ``in batch B, 3 appointments and 1 invoice would
    lose their patient; 2 invoices their business; among the clinic's own records, ...``."""
    owners: dict[str | None, dict[str, list[KeptLink]]] = {}
    for link in kept_links:
        owners.setdefault(link.batch_id, {}).setdefault(link.column, []).append(link)
    parts = []
    for owner, columns in owners.items():
        clauses: list[str] = []
        for column, links in columns.items():
            whose = "its" if sum(link.records for link in links) == 1 else "their"
            verb = "" if clauses else " would lose"  # said once per owner
            records = _and(records_of(link.entity, link.records) for link in links)
            clauses.append(f"{records}{verb} {whose} {column.removesuffix('_id').replace('_', ' ')}")
        where = f"in batch {owner}" if owner else "among the clinic's own records"
        parts.append(f"{where}, {'; '.join(clauses)}")
    return "; ".join(parts)


def _and(parts: Iterable[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    *head, last = parts
    return f"{', '.join(head)} and {last}" if head else last


def _listed(ids_by_entity: dict[str, list[str]], most: int = 5) -> str:
    """``1 patient (id 7), 2 appointments (ids 8, 9)``: at most ``most`` ids each, then how many more."""
    parts = []
    for entity, ids in ids_by_entity.items():
        if not ids:
            continue
        shown = ", ".join(ids[:most]) + (f" and {len(ids) - most:,} more" if len(ids) > most else "")
        parts.append(f"{records_of(entity, len(ids))} ({'id' if len(ids) == 1 else 'ids'} {shown})")
    return ", ".join(parts)


def _left_to_delete(
    ledger: Ledger, batch_id: str, created: Mapping[str, list[str]]
) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """What the batch ``created`` (by entity) that no earlier attempt at deleting it removed; and what such
    attempts did remove."""
    removed = ledger.deleted_by(batch_id)
    # In ``created``'s order (the order of deletion), as the plan's sentences list them.
    gone = {e: removed[e] for e in [*created, *removed] if e in removed}
    left = {entity: [i for i in ids if i not in gone.get(entity, ())] for entity, ids in created.items()}
    return left, gone


def ledger_deletion_plan(ledger: Ledger, batch_id: str) -> DeletionPlan:
    """What deleting a batch that wrote into a Cliniko account removes, from the ledger alone (no key needed).

    What :func:`deletion_plan` gives with that account's destination: Cliniko's patients
    are archived rather than deleted, so what was added since for them stays, and the
    batch's own records are all the ledger needs to name. All but one kind: a create whose
    answer was lost (a run killed mid-request) has no id in the ledger, and only the
    account's key finds its record (:meth:`ClinikoDestination.created_by
    <migrator.destinations.cliniko.ClinikoDestination.created_by>`); the plan counts such
    creates (:attr:`DeletionPlan.unanswered`).
    """
    from migrator.destinations.cliniko import DELETE_ORDER, batch_creates, unanswered_creates
    from migrator.destinations.cliniko import links_into as cliniko_links_into

    if not ledger.batch(batch_id).destination.startswith("cliniko:"):
        raise ValueError(f"batch {batch_id} went into a local store: use deletion_plan with the store")
    created, gone = _left_to_delete(
        ledger, batch_id, {e: batch_creates(ledger, batch_id, e) for e in DELETE_ORDER}
    )
    links = tuple(cliniko_links_into(ledger, batch_id, created))
    gone_count = {e: len(ids) for e, ids in gone.items()}
    return DeletionPlan(
        batch_id,
        created,
        {},
        links,
        gone_count,
        unanswered=unanswered_creates(ledger, batch_id),
        found_by_later=ledger.found_present_by_later(batch_id, created),
    )


def workspace_deletion_plan(ledger: Ledger, batch: Batch) -> DeletionPlan | None:
    """:func:`deletion_plan` from the workspace alone, as the batch listings and the Batches page show it.

    A batch into a Cliniko account is planned from the ledger, with no key
    (:func:`ledger_deletion_plan`); one into a local store through a connection of its own to
    the workspace and that store (so ``ledger`` may have another store attached). ``None``
    when that store is no longer on disk: nothing of the batch is left there.
    """
    if batch.destination.startswith("cliniko:"):
        return ledger_deletion_plan(ledger, batch.id)
    path = LocalStore.parse_target(batch.destination)
    if not path.exists():
        return None
    with Ledger(ledger.workspace) as own:
        return deletion_plan(own, LocalStore(path, own), batch.id)


def shared_store(ledger: Ledger, batch: Batch) -> str | None:
    """Why this workspace, a copy of another, may not delete ``batch``: the original uses its store too.

    See :meth:`LocalStore.shared_with_original`; ``None`` for any other batch.
    """
    if not batch.destination.startswith("sqlite:"):
        return None
    return LocalStore.shared_with_original(LocalStore.parse_target(batch.destination), ledger)


def blocker(ledger: Ledger, batch: Batch) -> str | None:
    """Why other records keep ``batch`` from being deleted (:attr:`DeletionPlan.blocker`), from the workspace alone.

    See :func:`workspace_deletion_plan`; a store no longer on disk has nothing left relying on it.
    """
    plan = workspace_deletion_plan(ledger, batch)
    return None if plan is None else plan.blocker


def deletable(ledger: Ledger, batch: Batch, now: datetime | None = None) -> tuple[bool, str]:
    """Whether :func:`delete_batch` would delete ``batch`` now, and the sentence saying why (or why not).

    :meth:`Batch.deletable <migrator.ledger.Batch.deletable>` (the 48 hours, the status), then
    whether the ledger and the batch's local store may be written (:func:`~migrator.ledger.may_write`), then
    :func:`shared_store` (a copied workspace and a store its original uses), then
    :func:`blocker`: what lists batches (the console, ``batches``) says no for a batch a later
    one relies on, rather than let it be chosen and refused.
    """
    allowed, why = batch.deletable(now)
    if not allowed:
        return False, why
    store = LocalStore.parse_target(batch.destination) if batch.destination.startswith("sqlite:") else None
    for what, path in (("ledger", ledger.path), ("clinic store", store)):
        if path is not None and not may_write(path):  # a workspace kept read-only to be looked at
            return False, (
                f"The {what} {path} (or the folder it is in) may be read but not written here, so nothing can be "
                "deleted through it; let this user write both to delete a batch."
            )
    if shared := shared_store(ledger, batch):
        return False, shared
    relied_on = blocker(ledger, batch)
    return (False, relied_on) if relied_on else (True, why)


def delete_batch(
    ledger: Ledger,
    store: Any,
    batch_id: str,
    *,
    actor: str = "cli",
    now: datetime | None = None,
    commit_interval: float = 0.5,
    show: Callable[[DeletionPlan], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> DeletionPlan:
    """Delete what a batch created (and what was since created for its patients).

    ``show`` is called with the plan before anything is removed, and before a blocked plan
    is refused, so a caller can say what goes without planning it a second time (for a
    Cliniko destination, a second read of the account). ``progress(entity, removed, total)``
    is called after each chunk is removed and noted: the data type the chunk was of, and the
    records removed so far out of the plan's :attr:`~DeletionPlan.total` (a large clinic's
    batch takes tens of seconds in a local store, and a Cliniko account's goes at the key's
    pace).

    In a local store, records go 500 at a time, each chunk together with the ledger's note
    of it, and the chunks are committed together every ``commit_interval`` seconds (a
    :class:`~migrator.ledger.CommitGroup`): a commit costs several fsyncs, and one per chunk
    made a large clinic's deletion take 2.4 times as long. A deletion killed at any instant
    leaves whole chunks; deleting again removes what is left.

    Raises:
        BatchNotFound: no such batch.
        BatchNotDeletable: older than 48 hours, already deleted, still running, or other
            records rely on what it created (:attr:`DeletionPlan.blocker`).
    """
    allowed, why = ledger.batch(batch_id).deletable(now)
    if not allowed:
        raise BatchNotDeletable(why)
    plan = deletion_plan(ledger, store, batch_id)
    if show is not None:
        show(plan)
    if plan.blocker:
        raise BatchNotDeletable(plan.blocker)
    ledger.require_writable()  # before it is set deleting: a read-only store leaves it as it was
    ledger.set_status(batch_id, "deleting", actor=actor, detail=plan.as_dict())
    removed = 0
    if getattr(store, "transactional", True):
        # A local store: each chunk's delete and its note are one savepoint, the group commits them.
        with ledger.commit_group(commit_interval) as group:
            for entity, part in _chunks(plan, store.DELETE_ORDER, _CHUNK):
                group.open()
                with ledger.transaction():
                    store.delete(entity, part)
                    ledger.record_deletions(batch_id, entity, part)
                group.commit_if_due()
                removed += len(part)
                if progress is not None:
                    progress(entity, removed, plan.total)
    else:
        # A Cliniko account: no ledger transaction held open over requests; a chunk is noted once answered.
        for entity, part in _chunks(plan, store.DELETE_ORDER, _REQUESTS_PER_CHUNK):
            store.delete(entity, part)
            ledger.record_deletions(batch_id, entity, part)
            removed += len(part)
            if progress is not None:
                progress(entity, removed, plan.total)
    ledger.set_status(batch_id, "deleted", actor=actor, detail=plan.as_dict())
    return plan


def _chunks(plan: DeletionPlan, order: Sequence[str], size: int) -> Iterator[tuple[str, list[str]]]:
    """``(entity, ids)`` to delete, at most ``size`` at a time, entities in ``order``: dependents before the batch's own."""
    for entity in order:
        ids = plan.dependents.get(entity, []) + plan.created.get(entity, [])
        for start in range(0, len(ids), size):
            yield entity, ids[start : start + size]
