"""Internal records -> Cliniko JSON.

The generator and the store speak *internal records* (``accounts.py``): plain
ids, ``<rel>_id`` foreign keys, ``None`` for unset. Cliniko speaks links and mixed
id types. This module is the one place that translates, reproducing the
documented quirks (``CLINIKO_API.md`` §1.9, §5, §6.8):

- ids: JSON strings for the resources whose examples use strings and numbers for
  the others (``ids="mixed"``), or all strings / all numbers (``"str"`` / ``"int"``)
  so a client can be tested against each form. Arrays of ids (``patient_ids``)
  follow the form of the resource they point at.
- relations become ``{"links": {"self": "<base>/<target>/<id>"}}``; an unset one is
  ``null``, except the ones the docs leave out entirely (:data:`OMIT_WHEN_UNSET`).
- no ``*_id`` field is ever rendered (the API has none besides ``*_ids`` arrays).
- patients' unset ``date_of_birth``/``archived_at``/``deleted_at`` are ``""``; other
  resources use ``null``.
"""

from __future__ import annotations

from typing import Any, Literal

from migrator.cliniko.resources import RESOURCES, Resource

__all__ = ["OMIT_WHEN_UNSET", "IdMode", "render", "render_deleted_patient", "render_id"]

IdMode = Literal["mixed", "str", "int"]

#: (resource, relation) pairs whose examples drop the key when unset (§1.9).
OMIT_WHEN_UNSET = frozenset(
    {
        ("invoices", "appointment"),
        ("invoices", "practitioner"),
        ("appointment_types", "billable_item"),
        ("appointment_types", "product"),
        ("appointment_types", "treatment_note_template"),
        ("treatment_notes", "booking"),
        # an invoice item has a billable item *or* a product, never both (§3.17)
        ("invoice_items", "billable_item"),
        ("invoice_items", "product"),
    }
)

#: Links to nested collections, per resource: (field, path template).
COLLECTION_LINKS: dict[str, tuple[tuple[str, str], ...]] = {
    "patients": (
        ("medical_alerts", "/patients/{id}/medical_alerts?page=1"),
        ("invoices", "/patients/{id}/invoices?page=1"),
        ("appointments", "/patients/{id}/appointments?page=1"),
    ),
    "practitioners": (
        ("practitioner_reference_numbers", "/practitioners/{id}/practitioner_reference_numbers?page=1"),
        ("appointments", "/practitioners/{id}/appointments?page=1"),
        ("invoices", "/practitioners/{id}/invoices?page=1"),
    ),
    "businesses": (
        ("practitioners", "/businesses/{id}/practitioners"),
        ("appointments", "/businesses/{id}/appointments?page=1"),
    ),
    "appointment_types": (("practitioners", "/appointment_types/{id}/practitioners"),),
    "individual_appointments": (
        ("conflicts", "/individual_appointments/{id}/conflicts"),
        ("attendees", "/individual_appointments/{id}/attendees"),
    ),
    "group_appointments": (
        ("conflicts", "/group_appointments/{id}/conflicts"),
        ("attendees", "/group_appointments/{id}/attendees"),
    ),
    "unavailable_blocks": (("conflicts", "/unavailable_blocks/{id}/conflicts"),),
    "attendees": (("invoices", "/attendees/{id}/invoices"),),
    "patient_attachments": (("content", "/patient_attachments/{id}/content"),),
}

_PATIENT_BLANKS = ("date_of_birth", "archived_at", "deleted_at")


def render_id(form: str, value: Any, mode: IdMode) -> Any:
    """An id as JSON: a string or a number, per the resource's form and the mode."""
    if value is None:
        return None
    if mode == "str" or (mode == "mixed" and form == "str"):
        return str(value)
    return int(value)


def _array_form(field: str) -> str:
    """The id form of the resource an ``<x>_ids`` array points at (``patient_ids``)."""
    target = RESOURCES.get(field[: -len("_ids")] + "s")
    return target.id_form if target else "int"


# How each key of a resource's records is rendered, worked out once per key name.
_COPY, _ID, _REL, _DROP, _ARRAY = range(5)
_PLANS: dict[str, dict[str, tuple[Any, ...]]] = {}


def _plan(res: Resource, key: str) -> tuple[Any, ...]:
    if key == "id":
        return (_ID,)
    rel = key[: -len("_id")] if key.endswith("_id") else None
    if rel is not None and rel in res.relations:
        return (_REL, rel, res.relations[rel], (res.name, rel) in OMIT_WHEN_UNSET)
    if rel is not None:
        return (_DROP,)  # filter-only foreign keys (attendee_id...): the API shows no *_id
    if key.endswith("_ids"):
        return (_ARRAY, _array_form(key))
    return (_COPY,)


def render(res: Resource, rec: dict[str, Any], base: str, ids: IdMode, self_path: str | None = None) -> dict:
    """The Cliniko JSON object of one internal record.

    Args:
        res: the record's resource.
        rec: the internal record (as the store returns it).
        base: the API base URL of the request, ``http://host:port/<shard>/v1``.
        ids: the id mode.
        self_path: overrides ``/<resource>/<id>`` for ``links.self`` (bookings).
    """
    plans = _PLANS.setdefault(res.name, {})
    out: dict[str, Any] = {}
    seen_rels = 0
    for key, value in rec.items():
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = _plan(res, key)
        kind = plan[0]
        if kind == _COPY:
            out[key] = value
        elif kind == _REL:
            seen_rels += 1
            if value is not None:
                out[plan[1]] = {"links": {"self": f"{base}/{plan[2]}/{value}"}}
            elif not plan[3]:
                out[plan[1]] = None
        elif kind == _ID:
            out["id"] = render_id(res.id_form, value, ids)
        elif kind == _ARRAY and isinstance(value, list):
            out[key] = [render_id(plan[1], v, ids) for v in value]
        elif kind == _ARRAY:
            out[key] = value
    if seen_rels < len(res.relations):  # a record without some <rel>_id: unset
        for rel in res.relations:
            if f"{rel}_id" not in rec and rel not in out and (res.name, rel) not in OMIT_WHEN_UNSET:
                out[rel] = None
    # Lifecycle columns exist on every table; show archived_at only where the
    # resource has that notion (or the record is archived).
    if (
        out.get("archived_at", 0) is None
        and "archived" not in res.list_routes
        and "archived_at" not in res.filters
    ):
        del out["archived_at"]
    if res.name == "patients":
        for key in _PATIENT_BLANKS:
            if out.get(key) is None:
                out[key] = ""
    record_id = rec["id"]
    for field, template in COLLECTION_LINKS.get(res.name, ()):
        out[field] = {"links": {"self": base + template.format(id=record_id)}}
    out["links"] = {"self": base + (self_path or f"/{res.name}/{record_id}")}
    return out


def render_deleted_patient(rec: dict[str, Any], base: str) -> dict:
    """``/patients/deleted`` shows only when and which (§3.1)."""
    return {"deleted_at": rec.get("deleted_at") or "", "links": {"self": f"{base}/patients/{rec['id']}"}}
