"""Pydantic models of Cliniko's records: API JSON becomes typed objects at the boundary.

One model per resource of the registry (``migrator.cliniko.resources.RESOURCES``),
plus :class:`Settings` (the ``/settings`` object) and :class:`DeletedPatient` (the
``/patients/deleted`` stub). Every model keeps the fields Cliniko sends that are not
declared here (``extra="allow"``, visible in ``model_extra``): the API grows, and a
migration must never drop data because our declaration is behind.

What validation does to Cliniko's JSON (``shared/CLINIKO_API.md`` §1.9, §5, §7):

- **Ids are opaque decimal strings** (:data:`ClinikoId`). Cliniko sends them as
  JSON numbers for some resources and strings for others, some above 2**53; a JSON
  integer or a digit string is accepted, a float (which may already have lost
  digits), a bool or anything else is refused.
- **Relationship links become ids.** ``"patient": {"links": {"self": ".../patients/7"}}``
  becomes ``patient_id="7"`` for every relation the registry lists; an absent or
  null relation becomes ``None``, and ``patient_id`` may also be given directly.
  Other link-only objects (``"invoices": {"links": ...}``, navigation to nested
  collections) are dropped, and the record's own ``links.self`` becomes ``links_self``.
- **Money is** :class:`~decimal.Decimal`, parsed from Cliniko's strings without a
  float on the way, and dumped back as a string by ``model_dump(mode="json")``.
- **Empty dates are None**: patients send ``""`` for unset ``date_of_birth``,
  ``archived_at`` and ``deleted_at``; every date and datetime field maps ``""`` to ``None``.
  Datetimes are timezone-aware (a naive one is read as UTC, as Cliniko's are).

Example::

    record = parse_record("individual_appointments", page["individual_appointments"][0])
    record.patient_id            # "1001", whatever JSON type the link or id had
    record.model_dump(mode="json")

A migration needs only that dump, for hundreds of thousands of records:
:func:`fast_dumper` gives it for the usual record at about half the cost, and ``None``
(ask pydantic) for any record it cannot vouch for.
"""

from __future__ import annotations

from typing import Any

from migrator.cliniko.models._base import (
    ClinikoDate,
    ClinikoDateTime,
    ClinikoId,
    ClinikoRecord,
    PhoneNumber,
    id_from_url,
)
from migrator.cliniko.models._fast import fast_dumper
from migrator.cliniko.models._records import (
    Appointment,
    AppointmentType,
    Attendee,
    BillableItem,
    Business,
    ConcessionType,
    Contact,
    DeletedPatient,
    GroupAppointment,
    IndividualAppointment,
    Invoice,
    InvoiceItem,
    MedicalAlert,
    Patient,
    PatientAttachment,
    Practitioner,
    Product,
    Tax,
    TreatmentNote,
    TreatmentNoteTemplate,
    UnavailableBlock,
    User,
)
from migrator.cliniko.models._settings import Settings, SettingsAccount

__all__ = [
    "Appointment",
    "AppointmentType",
    "Attendee",
    "BillableItem",
    "Business",
    "ClinikoDate",
    "ClinikoDateTime",
    "ClinikoId",
    "ClinikoRecord",
    "ConcessionType",
    "Contact",
    "DeletedPatient",
    "GroupAppointment",
    "IndividualAppointment",
    "Invoice",
    "InvoiceItem",
    "MedicalAlert",
    "Patient",
    "PatientAttachment",
    "PhoneNumber",
    "Practitioner",
    "Product",
    "Settings",
    "SettingsAccount",
    "Tax",
    "TreatmentNote",
    "TreatmentNoteTemplate",
    "UnavailableBlock",
    "User",
    "fast_dumper",
    "id_from_url",
    "model_for",
    "parse_record",
    "relation_ids",
]


_MODELS: dict[str, type[ClinikoRecord]] = {
    m.resource_name: m
    for m in (
        User,
        Business,
        Practitioner,
        Contact,
        Patient,
        MedicalAlert,
        PatientAttachment,
        Tax,
        ConcessionType,
        BillableItem,
        Product,
        TreatmentNoteTemplate,
        AppointmentType,
        IndividualAppointment,
        GroupAppointment,
        Attendee,
        UnavailableBlock,
        TreatmentNote,
        Invoice,
        InvoiceItem,
    )
}


def model_for(resource_name: str) -> type[ClinikoRecord]:
    """The model of a registry resource (``"patients"`` -> :class:`Patient`).

    Raises ``KeyError`` naming the known resources. ``/patients/deleted`` stubs use
    :class:`DeletedPatient` and ``/settings`` uses :class:`Settings` directly.
    """
    try:
        return _MODELS[resource_name]
    except KeyError:
        raise KeyError(
            f"no model for Cliniko resource {resource_name!r}; known: {', '.join(sorted(_MODELS))}"
        ) from None


def parse_record(resource_name: str, data: dict[str, Any]) -> ClinikoRecord:
    """Validate one record of a list or GET response (the parsed JSON object).

    Raises ``pydantic.ValidationError`` (a ``ValueError``) when the record is malformed,
    ``KeyError`` for an unknown resource.

    >>> parse_record("medical_alerts", {"id": 1, "name": "Latex", "patient": None}).id
    '1'
    """
    return model_for(resource_name).model_validate(data)


def relation_ids(record: ClinikoRecord) -> dict[str, str | None]:
    """The record's relationship ids by link name: ``{"patient": "7", "business": None}``."""
    return {rel: getattr(record, id_field) for rel, id_field in type(record).relation_fields}
