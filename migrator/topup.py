"""Top-up runs: after a completed batch, read only what changed at the source since it started.

The final sweep before go-live (seed 003, step 5) must not cost a second full read. A
top-up is a new batch of the same plan that reads

- every list the plan reads, filtered ``q[]=updated_at:>=SINCE`` (Cliniko bumps
  ``updated_at`` on every change, a cancellation and an archiving included);
- ``/individual_appointments/cancelled`` (filtered on ``cancelled_at``) and
  ``/attendees/cancelled``, so a cancellation is seen even where ``updated_at`` lags;
- the ``/deleted`` list of every included entity that has one (``updated_at`` filter);
- by id, records an earlier batch of the plan skipped only because something they
  need was missing then (``patient_out_of_scope``, ``*_skipped``, ``*_not_found``):
  a patient who entered the scope since, or a fixed parent, lets them through now.

``SINCE`` is the start of the plan's newest completed batch less :data:`TOP_UP_OVERLAP`,
so a clock difference between this machine and Cliniko's servers never loses a change;
a record read again without having changed is passed over (``already_present``,
nothing written).

What each record becomes, with the ledger's four actions kept:

- new at the source: ``created`` (or ``linked``), as in any run;
- changed since an earlier batch brought it: ``already_present`` with reason code
  ``updated`` (``cancelled`` for a cancellation), its destination record rewritten in
  place, keeping its id and the batch that created it;
- deleted at the source: ``skipped`` with reason code ``deleted_at_source``, and the
  destination record removed with what it owns from the same source (an invoice's
  items). A record the clinic has since added to in the destination (a note on a
  patient Cliniko deleted) is kept and flagged ``already_present`` /
  ``deleted_at_source_kept``; a record that was only linked to (the clinic's own) is
  never removed. In another Cliniko account nothing is removed: each such record is
  kept and flagged ``deleted_at_source_kept`` for a person to remove there.

Deleting a top-up batch removes what it created (and, as for any batch, what was
created since for the patients it created); it does not undo the updates it made nor
bring back what it removed because Cliniko deleted it: those follow the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from migrator.cliniko.filters import Filter
from migrator.ledger import Item, Ledger
from migrator.plan import records_of

__all__ = [
    "DELETED_AT_SOURCE",
    "TOP_UP_OVERLAP",
    "TopUp",
    "deleted_source_id",
    "remove_deleted",
    "retryable",
]

#: How far before the previous batch's start a top-up reads.
TOP_UP_OVERLAP = timedelta(minutes=5)
#: The reason code of records deleted at the source since an earlier batch.
DELETED_AT_SOURCE = "deleted_at_source"


@dataclass(frozen=True)
class TopUp:
    """Where a top-up starts from.

    Attributes:
        of: the completed batch it tops up (the plan's newest).
        since: records updated at or after this instant (UTC) are read.
        chain: the plan's completed batches, newest first: whose skips are tried again.
        baseline_requests: what the plan's last full run spent reading the source, if
            known: the summary says how much the top-up saved against it.
    """

    of: str
    since: datetime
    chain: tuple[str, ...] = ()
    baseline_requests: int | None = None

    def filters(self) -> tuple[Filter, ...]:
        """``updated_at:>=SINCE``, the filter every list of the top-up carries."""
        return (Filter("updated_at", ">=", self.since),)

    def as_detail(self) -> dict[str, Any]:
        """As the ledger's audit trail keeps it (so a resumed top-up is still one)."""
        return {
            "of": self.of,
            "since": self.since.isoformat(),
            "chain": list(self.chain),
            "baseline_requests": self.baseline_requests,
        }

    @classmethod
    def recorded(cls, ledger: Ledger, batch_id: str) -> TopUp | None:
        """What a batch was started as: a top-up (its audit trail says of what, from when), else ``None``."""
        for entry in ledger.audit_log(batch_id):
            if entry["action"] == "top_up":
                return cls.from_detail(entry["detail"])
        return None

    @classmethod
    def from_detail(cls, detail: dict[str, Any]) -> TopUp:
        return cls(
            of=str(detail["of"]),
            since=datetime.fromisoformat(detail["since"]),
            chain=tuple(detail.get("chain") or ()),
            baseline_requests=detail.get("baseline_requests"),
        )


def retryable(reason_code: str | None) -> bool:
    """Whether a record skipped for this reason may come across now without changing itself.

    Its patient may have entered the scope, or its parent been fixed. A record
    skipped as invalid, or for a mapping decision, only changes with a change of its
    own (which ``updated_at`` shows) or of the plan (which makes a new plan, not a top-up).
    """
    code = reason_code or ""
    return code == "patient_out_of_scope" or code.endswith(("_skipped", "_not_found"))


def deleted_source_id(raw: dict[str, Any]) -> str | None:
    """The id of a record from a ``/deleted`` list (deleted patients carry only their link)."""
    if raw.get("id") is not None:
        return str(raw["id"])
    url = ((raw.get("links") or {}).get("self")) or ""
    tail = str(url).split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    return tail if tail.isdigit() else None


def remove_deleted(
    ledger: Ledger,
    store: Any,
    entity: str,
    source_ids: list[str],
    *,
    destination: str,
    source_account: str,
) -> list[Item]:
    """Apply deletions at the source to the destination; return the items to record.

    Call it inside the transaction that records the items. Only records an earlier
    batch created or linked are concerned (a record deleted before it ever came
    across needs nothing). See the module docstring for what happens to each.
    """
    hits = ledger.dest_ids_for(destination, entity, source_ids, source_account=source_account)
    if not hits:
        return []
    thing = records_of(entity)
    if not hasattr(store, "provenance"):
        # Another Cliniko account: what depends on the record there (the clinic's own bookings, notes,
        # invoices) is not known from here, so nothing is removed; each is kept and flagged for a person.
        return [
            _kept(
                entity,
                source_id,
                dest_id,
                f"Deleted in Cliniko at the source after an earlier batch brought it; a transfer into another "
                f"Cliniko account does not remove records, so remove this {thing} there by hand if it should go.",
            )
            for source_id, (_, dest_id) in hits.items()
        ]
    origin = store.provenance(entity, [dest for _, dest in hits.values()])
    items: list[Item] = []
    for source_id, (_, dest_id) in hits.items():
        found = origin.get(dest_id)
        if found != (source_id, source_account):  # gone already, or a record this run only linked to
            why = (
                f"the {thing} is no longer in the destination either"
                if found is None
                else f"the destination {thing} it was linked to was there before the migration and is kept"
            )
            items.append(
                Item(entity, source_id, None, "skipped", DELETED_AT_SOURCE, f"Deleted in Cliniko; {why}.")
            )
            continue
        owned = store.dependents_of(entity, [dest_id])
        children = {child: store.provenance(child, ids) for child, ids in owned.items()}
        added = sum(
            1 for rows in children.values() for _, account in rows.values() if account != source_account
        )
        if added:
            items.append(
                _kept(
                    entity,
                    source_id,
                    dest_id,
                    f"Deleted in Cliniko, but {added} record{'s' if added > 1 else ''} added in the "
                    f"destination since depend{'' if added > 1 else 's'} on this {thing}; kept for review.",
                )
            )
            continue
        for child, rows in children.items():  # dependents_of lists them children first
            store.delete(child, list(rows))
            items.extend(
                Item(
                    child,
                    str(child_source),
                    None,
                    "skipped",
                    DELETED_AT_SOURCE,
                    f"Removed with its {thing} {source_id}, which was deleted in Cliniko.",
                )
                for child_source, _ in rows.values()
            )
        store.delete(entity, [dest_id])
        items.append(
            Item(
                entity,
                source_id,
                None,
                "skipped",
                DELETED_AT_SOURCE,
                "Deleted in Cliniko after an earlier batch brought it; removed from the destination.",
            )
        )
    return items


def _kept(entity: str, source_id: str, dest_id: str, why: str) -> Item:
    """A record deleted at the source that stays in the destination, flagged for a person."""
    return Item(entity, source_id, dest_id, "already_present", f"{DELETED_AT_SOURCE}_kept", why)
