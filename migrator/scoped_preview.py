"""What a migration with a given scope and data types would read, and what that costs.

:func:`~migrator.preview.preview` counts every list of the account; this module counts
what one plan reads, stage by stage, with the plan's filter (seed 001):

- account-wide types (the mapped practitioners, businesses and appointment types, and
  the optional reference data) come across whole: their lists are counted;
- under a business or practitioner filter, the lists the filter applies to directly
  (appointments, group appointments, unavailable blocks, invoices, and a practitioner's
  treatment notes) are counted with the filter sent to Cliniko, one request per 100 ids;
- patients and what follows them (medical alerts, notes, files, attendees, invoice
  items) are only known once the run has read the appointments, invoices and (for a
  practitioner) notes in scope, so they are **estimated** from the share of appointments
  (or invoices) in scope, and marked so. That share is low when patients are seen at
  several of the scope's businesses (or by several practitioners): each comes across
  whole for one appointment in scope. So the patients' rows also say how many there would
  be at most if each appointment fell in scope independently of the patient's others
  (``how``: "up to N"); the few patients billed or written about without an appointment
  in scope come on top. On the demo clinic (all data types), a business filter brings
  about twice the share (278 patients against 136, up to 397), and a practitioner filter
  a little more than the share (90 against 80, up to 381).

>>> result = scoped_preview(client, Scope.parse("business:7"))       # doctest: +SKIP
>>> result.frame.select("entity", "records", "exact").head(2)         # doctest: +SKIP

Each count is one cheap request (``per_page=1``); the counts go concurrently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from migrator.cliniko.client import ClinikoClient
from migrator.plan import Scope, close_include, default_include
from migrator.preview import list_key, minutes_at, preview, read_requests
from migrator.scope import direct_queries
from migrator.stages import MAPPED, STAGES

__all__ = ["PREVIEW_SCHEMA", "ScopedPreview", "plan_entities", "scoped_preview"]

#: Lists the scope filter applies to directly, by filter kind.
_DIRECT: dict[str, tuple[str, ...]] = {
    "business": ("individual_appointments", "group_appointments", "unavailable_blocks", "invoices"),
    "practitioner": (
        "individual_appointments",
        "group_appointments",
        "unavailable_blocks",
        "invoices",
        "treatment_notes",
    ),
}
#: Entities whose records can come across cancelled, each then a request more into a Cliniko account.
_CANCELLABLE = ("individual_appointments", "attendees")
#: What the records of these entities follow under a filter.
_PARENT = {"attendees": "group_appointments", "invoice_items": "invoices"}
#: Entities that follow the patients in scope.
_BY_PATIENT = ("patients", "medical_alerts", "patient_attachments", "treatment_notes")

PREVIEW_SCHEMA: dict[str, pl.DataType] = {
    "entity": pl.String(),
    "records": pl.Int64(),
    "requests": pl.Int64(),
    "exact": pl.Boolean(),
    "how": pl.String(),
}


@dataclass(frozen=True)
class ScopedPreview:
    """Records and requests per entity for one scope, and the minutes that takes at the key's pace.

    Attributes:
        frame: one row per entity in stage order: ``entity, records, requests, exact, how``.
        requests: the requests the run's reads cost (estimated where records are).
        estimated_minutes: ``requests`` at ``requests_per_minute``, rounded up to a tenth
            (``0.0`` when unpaced).
        follow_ups: when counted (``count_follow_ups``), the records per entity that come
            across cancelled (appointments, attendees) or archived (patients): a Cliniko
            account takes each with a request beyond its create. Estimated where the
            entity's records are.
    """

    scope: Scope
    include: list[str]
    frame: pl.DataFrame
    requests: int
    estimated_minutes: float
    requests_per_minute: float
    follow_ups: dict[str, int] | None = None

    @property
    def records(self) -> int:
        return int(self.frame["records"].sum())

    @property
    def follow_up_total(self) -> int:
        """All the cancellations and archives counted (``0`` when not counted)."""
        return sum((self.follow_ups or {}).values())

    @property
    def exact(self) -> bool:
        """Whether every figure is a count rather than an estimate."""
        return bool(self.frame["exact"].all())

    def expected(self) -> dict[str, int]:
        """Records per entity: the length of each stage's progress bar."""
        return dict(zip(self.frame["entity"].to_list(), self.frame["records"].to_list(), strict=True))


def plan_entities(include: Sequence[str] | None) -> list[str]:
    """The stages a plan runs, in order: its data types with their dependencies, plus the mapped three."""
    wanted = set(close_include(include if include is not None else default_include(local=True))) | set(MAPPED)
    return [s.entity for s in STAGES if s.entity in wanted]


def _lists(entity: str, include_archived_patients: bool) -> list[tuple[str, str | None]]:
    stage = next(s for s in STAGES if s.entity == entity)
    routes = [r for r in stage.routes if not (entity == "patients" and r == "archived")]
    if entity == "patients" and include_archived_patients:
        routes.append("archived")
    return [(entity, route) for route in routes]


def scoped_preview(
    client: ClinikoClient,
    scope: Scope | None = None,
    include: Sequence[str] | None = None,
    *,
    include_archived_patients: bool = True,
    count_follow_ups: bool = False,
) -> ScopedPreview:
    """Count (or estimate) what a plan of this scope and these data types reads.

    Args:
        client: a client of the source account.
        scope: the plan's filter (all data by default).
        include: the plan's data types (everything by default); dependencies are added.
        include_archived_patients: as the plan's option of the same name.
        count_follow_ups: also count the cancelled appointments and attendees among them
            (one request per list, ``/cancelled``, with the filter where it applies), and
            take the archived patients from the counts, for a transfer into a Cliniko
            account (:attr:`ScopedPreview.follow_ups`).

    Raises:
        APIError: a count failed.
        ConfigError: ``include`` names an unknown data type.
    """
    scope = scope or Scope()
    entities = plan_entities(include)
    lists = [pair for entity in entities for pair in _lists(entity, include_archived_patients)]
    # The patients in scope follow the individual appointments, which a scoped run always reads.
    if scope.kind != "all" and ("individual_appointments", None) not in lists:
        lists.append(("individual_appointments", None))
    cancellable = [e for e in _CANCELLABLE if count_follow_ups and e in entities]
    # Under a filter, the cancelled individual appointments are counted with it, like the appointments.
    lists += [(e, "cancelled") for e in cancellable if scope.kind == "all" or e not in _DIRECT[scope.kind]]
    whole = preview(client, tuple(lists)).counts

    filtered: dict[str, list[int]] = {}
    if scope.kind != "all":
        direct = [e for e in _DIRECT[scope.kind] if e in entities or e == "individual_appointments"]
        jobs = [(entity, q) for entity in direct for q in direct_queries(entity, scope.kind, scope.ids)]
        jobs += [
            (list_key(e, "cancelled"), q)
            for e in cancellable
            if e in _DIRECT[scope.kind]
            for q in direct_queries(e, scope.kind, scope.ids, "cancelled")
        ]
        totals = client.counts([(q.resource, q.filters, q.route) for _, q in jobs])
        for (entity, _), n in zip(jobs, totals, strict=True):
            filtered.setdefault(entity, []).append(n)

    def share(entity: str) -> float:
        total = whole.get(list_key(entity, None), 0)
        return sum(filtered.get(entity, [])) / total if total else 0.0

    # Group appointments bring patients only when the plan includes them.
    kinds = ["individual_appointments", *(["group_appointments"] if "group_appointments" in entities else [])]
    appointments_total = sum(whole.get(kind, 0) for kind in kinds)
    appointments_in_scope = sum(sum(filtered.get(kind, [])) for kind in kinds)
    patient_share = appointments_in_scope / appointments_total if appointments_total else 0.0
    # That share is right when each patient keeps to one business (or practitioner); a patient seen at
    # several comes across whole for any one appointment in scope. At the other end, each appointment in
    # scope independently of the patient's others: a patient with k appointments is in with 1 - (1 - s)**k.
    patients_total = sum(
        whole.get(list_key(r, route), 0) for r, route in _lists("patients", include_archived_patients)
    )
    per_patient = appointments_total / patients_total if patients_total else 0.0
    spread_share = max(patient_share, 1 - (1 - patient_share) ** per_patient)
    spread_over = "businesses" if scope.kind == "business" else "practitioners"

    rows = []
    for entity in entities:
        counts = [
            whole[list_key(resource, route)] for resource, route in _lists(entity, include_archived_patients)
        ]
        if scope.kind == "all" or entity in MAPPED:
            how = "counted" if scope.kind == "all" else "counted: copied whole whatever the filter"
            rows.append((entity, sum(counts), sum(read_requests(n) for n in counts), True, how))
        elif entity in _DIRECT[scope.kind]:
            parts = filtered[entity]
            rows.append(
                (entity, sum(parts), sum(read_requests(n) for n in parts), True, "counted with the filter")
            )
        elif entity in _BY_PATIENT:
            estimate = math.ceil(sum(counts) * patient_share)
            high = math.ceil(sum(counts) * spread_share)
            up_to = (
                f"; up to {high:,} if patients are seen at several {spread_over}" if high > estimate else ""
            )
            rows.append(
                (
                    entity,
                    estimate,
                    read_requests(estimate),
                    False,
                    f"estimated from the share of appointments in scope{up_to}",
                )
            )
        elif entity in ("attendees", "invoice_items"):
            parent = _PARENT[entity]
            estimate = math.ceil(sum(counts) * share(parent))
            rows.append(
                (
                    entity,
                    estimate,
                    read_requests(estimate),
                    False,
                    f"estimated from the {parent.replace('_', ' ')} in scope",
                )
            )
        else:
            rows.append(
                (
                    entity,
                    sum(counts),
                    sum(read_requests(n) for n in counts),
                    True,
                    "counted: copied whole whatever the filter",
                )
            )
    frame = pl.DataFrame(rows, schema=PREVIEW_SCHEMA, orient="row")
    follow_ups: dict[str, int] | None = None
    if count_follow_ups:
        follow_ups = {}
        if "patients" in entities and include_archived_patients:
            archived = whole[list_key("patients", "archived")]
            follow_ups["patients"] = archived if scope.kind == "all" else math.ceil(archived * patient_share)
        for entity in cancellable:
            key = list_key(entity, "cancelled")
            if key in filtered:  # counted with the filter
                follow_ups[entity] = sum(filtered[key])
            else:  # attendees follow the group appointments in scope
                follow_ups[entity] = (
                    whole[key] if scope.kind == "all" else math.ceil(whole[key] * share(_PARENT[entity]))
                )
    requests = int(frame["requests"].sum())
    pace = client.config.requests_per_minute
    return ScopedPreview(
        scope=scope,
        include=close_include(include if include is not None else default_include(local=True)),
        frame=frame,
        requests=requests,
        estimated_minutes=minutes_at(requests, pace),
        requests_per_minute=pace,
        follow_ups=follow_ups,
    )
