"""A plan's one filter, turned into API queries that fetch as little as possible.

Seed 001's rules:

- ``all``: every record.
- ``business``: the individual and group appointments at those businesses; the
  patients who attend them; then **all** treatment notes, attachments and medical
  alerts of those patients (notes and files are not tied to a business); the
  unavailable blocks and invoices at those businesses.
- ``practitioner``: the appointments with those practitioners; their patients;
  the treatment notes those practitioners wrote; the attachments and medical
  alerts of those patients; their unavailable blocks and invoices.

"Those patients" also takes in the patients of the scope's invoices (and, under a
practitioner filter, of the notes they wrote), so that every invoice and note the
filter selects comes across with its patient, never skipped for a patient no
appointment in scope names (a product sold at the desk, a note written without a
booking). The engine reads those lists before the patients
(:meth:`Engine._staged_resources <migrator.engine.Engine._staged_resources>`).

Filters go to the server (``q[]`` with id lists), so a small scope costs few
requests. When a list of ids would cost more requests than reading the whole
list (one request per 100 ids against one per 100 records), the whole list is
read instead and filtered here: :func:`cheapest`.

A top-up (:mod:`migrator.topup`) reads the same queries narrowed to what changed:
:func:`changed_since` adds ``updated_at:>=SINCE`` (or another date-time field) to a query.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import datetime

from migrator.cliniko.filters import Filter, chunk_ids, ids_in
from migrator.cliniko.pagination import PER_PAGE

__all__ = ["Query", "by_ids", "changed_since", "cheapest", "direct_queries"]


@dataclass(frozen=True)
class Query:
    """One list to read: a resource, an optional route, and filters.

    ``keep`` restricts the records kept to those whose ``keep_field`` id is in it
    (used when a whole list is read instead of many id queries).
    """

    resource: str
    route: str | None = None
    filters: tuple[Filter, ...] = ()
    keep_field: str | None = None
    keep: frozenset[str] | None = None


def by_ids(resource: str, field: str, ids: Collection[str], route: str | None = None) -> list[Query]:
    """One query per chunk of ids (``field:=id,id,...``); no query at all for no ids."""
    return [Query(resource, route, (flt,)) for flt in ids_in(field, sorted(ids))]


def cheapest(
    resource: str, field: str, ids: Collection[str], total: int, route: str | None = None
) -> list[Query]:
    """Id-list queries, or the whole list filtered here when that costs fewer requests.

    Args:
        total: how many records the whole list holds (one count request).
    """
    by_chunks = len(chunk_ids(ids))
    whole = max(1, math.ceil(total / PER_PAGE))
    if by_chunks <= whole:
        return by_ids(resource, field, ids, route)
    return [Query(resource, route, keep_field=field, keep=frozenset(ids))]


#: The field each directly filterable resource carries for a scope kind.
_DIRECT_FIELD = {"business": "business_id", "practitioner": "practitioner_id"}


def direct_queries(resource: str, kind: str, ids: Collection[str], route: str | None = None) -> list[Query]:
    """Queries for a resource the filter applies to directly (appointments, blocks, invoices, notes)."""
    if kind == "all":
        return [Query(resource, route)]
    return by_ids(resource, _DIRECT_FIELD[kind], ids, route)


def changed_since(query: Query, since: datetime, field: str = "updated_at") -> Query:
    """The same query narrowed to records whose ``field`` is at or after ``since`` (a top-up's read)."""
    return replace(query, filters=(*query.filters, Filter(field, ">=", since)))
