"""Cliniko's resources as data: routes, filters, relationships, id forms.

One declarative entry per resource a migration reads or writes, drawn from
``shared/CLINIKO_API.md`` §2-§3. The client uses it to validate filters and pick
routes, the models to turn relationship links into ids, and the sandbox to serve
the same API. Adding a resource means adding an entry here, not code elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["CANCELLATION_REASONS", "FILTER_OPERATORS", "RESOURCES", "FilterType", "Resource", "resource"]

#: Filter value types, as the docs name them: DateTime, Date, Integer, String.
FilterType = Literal["dt", "date", "int", "str"]

#: The operators each filter type accepts (``CLINIKO_API.md`` §1.4).
FILTER_OPERATORS: dict[str, tuple[str, ...]] = {
    "dt": (">=", ">", "<=", "<"),  # no '=' on DateTime
    "date": ("=", ">=", ">", "<=", "<"),
    "int": ("=", "!=", ">=", ">", "<=", "<"),
    "str": ("=", "!=", "~", "~~"),
}

#: Cancellation reason codes of appointments and attendees (``CLINIKO_API.md`` §3.6).
CANCELLATION_REASONS: dict[int, str] = {
    10: "Feeling better",
    20: "Condition worse",
    30: "Sick",
    31: "COVID-19 related",
    40: "Away",
    50: "Other",
    60: "Work",
}

_TIMESTAMPS: dict[str, FilterType] = {"created_at": "dt", "updated_at": "dt"}


@dataclass(frozen=True)
class Resource:
    """One Cliniko resource.

    Attributes:
        name: the collection name, which is also the list envelope's key.
        id_form: how the docs' examples send ids (``"str"`` or ``"int"``).
        filters: filterable field -> filter type (``created_at``/``updated_at`` included).
        relations: link field -> the resource its id points at; in our records the
            link becomes ``<field>_id``.
        list_routes: extra list routes under the resource path (``deleted``,
            ``archived``, ``cancelled``, ``inactive``).
        nested: parent resource -> path template of the nested list, ``{id}`` being
            the parent's id (``/patients/{id}/medical_alerts``).
        writes: the write operations Cliniko has (``create``, ``update``,
            ``delete``, ``cancel``, ``archive``, ``unarchive``).
        array_ids: fields holding an array of ids (``patient_ids``).
    """

    name: str
    id_form: Literal["str", "int"]
    filters: dict[str, FilterType]
    relations: dict[str, str] = field(default_factory=dict)
    list_routes: tuple[str, ...] = ()
    nested: dict[str, str] = field(default_factory=dict)
    writes: tuple[str, ...] = ()
    array_ids: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"/{self.name}"

    @property
    def read_only(self) -> bool:
        return not self.writes


def _r(name: str, id_form: Literal["str", "int"], filters: dict[str, FilterType], **kw: object) -> Resource:
    return Resource(name, id_form, {**_TIMESTAMPS, "id": "int", **filters}, **kw)  # type: ignore[arg-type]


_APPOINTMENT_FILTERS: dict[str, FilterType] = {
    "appointment_type_id": "int",
    "archived_at": "dt",
    "business_id": "int",
    "ends_at": "dt",
    "practitioner_id": "int",
    "repeated_from_id": "int",
    "starts_at": "dt",
}
_CRUD = ("create", "update", "delete")

RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        _r("users", "int", {}),
        _r("businesses", "str", {}),
        _r(
            "practitioners",
            "str",
            {"user_id": "int"},
            relations={"user": "users", "default_appointment_type": "appointment_types"},
            list_routes=("inactive",),
            nested={
                "businesses": "/businesses/{id}/practitioners",
                "appointment_types": "/appointment_types/{id}/practitioners",
            },
        ),
        _r("taxes", "str", {}, writes=_CRUD),
        _r("concession_types", "int", {}),
        _r("billable_items", "int", {"tax_id": "int"}, relations={"tax": "taxes"}, writes=_CRUD),
        _r("products", "int", {"name": "str", "tax_id": "int"}, relations={"tax": "taxes"}, writes=_CRUD),
        _r("treatment_note_templates", "int", {}, list_routes=("deleted",), writes=_CRUD),
        _r(
            "appointment_types",
            "str",
            {},
            relations={
                "billable_item": "billable_items",
                "product": "products",
                "treatment_note_template": "treatment_note_templates",
            },
            list_routes=("archived",),
            nested={"practitioners": "/practitioners/{id}/appointment_types"},
            writes=_CRUD,
        ),
        _r(
            "contacts",
            "int",
            {"email": "str", "first_name": "str", "last_name": "str", "type_code": "int"},
            writes=_CRUD,
        ),
        _r(
            "patients",
            "int",
            {
                "date_of_birth": "date",
                "email": "str",
                "first_name": "str",
                "last_name": "str",
                "old_reference_id": "str",
            },
            relations={
                "concession_type": "concession_types",
                "referring_doctor": "contacts",
                "merged_with_patient": "patients",
            },
            list_routes=("deleted", "archived"),
            writes=("create", "update", "archive", "unarchive"),
        ),
        _r(
            "medical_alerts",
            "int",
            {"patient_id": "int"},
            relations={"patient": "patients"},
            list_routes=("deleted",),
            nested={"patients": "/patients/{id}/medical_alerts"},
            writes=_CRUD,
        ),
        _r(
            "individual_appointments",
            "int",
            {**_APPOINTMENT_FILTERS, "patient_id": "int", "cancelled_at": "dt"},
            relations={
                "appointment_type": "appointment_types",
                "business": "businesses",
                "practitioner": "practitioners",
                "patient": "patients",
            },
            list_routes=("deleted", "cancelled"),
            writes=(*_CRUD, "cancel"),
        ),
        _r(
            "group_appointments",
            "int",
            dict(_APPOINTMENT_FILTERS),
            relations={
                "appointment_type": "appointment_types",
                "business": "businesses",
                "practitioner": "practitioners",
            },
            list_routes=("deleted",),
            writes=_CRUD,
            array_ids=("patient_ids",),
        ),
        _r(
            "attendees",
            "int",
            {"booking_id": "int", "patient_id": "int"},
            relations={"booking": "bookings", "patient": "patients"},
            list_routes=("deleted", "cancelled"),
            nested={
                "group_appointments": "/group_appointments/{id}/attendees",
                "individual_appointments": "/individual_appointments/{id}/attendees",
            },
            writes=(*_CRUD, "cancel"),
        ),
        _r(
            "unavailable_blocks",
            "int",
            {
                "archived_at": "dt",
                "business_id": "int",
                "ends_at": "dt",
                "practitioner_id": "int",
                "repeated_from_id": "int",
                "starts_at": "dt",
            },
            relations={"business": "businesses", "practitioner": "practitioners"},
            list_routes=("deleted",),
            writes=_CRUD,
        ),
        _r(
            "treatment_notes",
            "int",
            {
                "attendee_id": "int",
                "booking_id": "int",
                "patient_id": "int",
                "practitioner_id": "int",
                "treatment_note_template_id": "int",
            },
            relations={
                "patient": "patients",
                "practitioner": "practitioners",
                "treatment_note_template": "treatment_note_templates",
                "booking": "bookings",
            },
            list_routes=("deleted",),
            writes=_CRUD,
        ),
        _r(
            "patient_attachments",
            "int",
            {
                "content_type": "str",
                "description": "str",
                "filename": "str",
                "patient_id": "int",
                "size": "int",
                "user_id": "int",
            },
            relations={"patient": "patients", "user": "users"},
            nested={"patients": "/patients/{id}/patient_attachments"},
            writes=("create", "delete"),
        ),
        _r(
            "invoices",
            "int",
            {
                "appointment_id": "int",
                "business_id": "int",
                "issue_date": "date",
                "number": "int",
                "patient_id": "int",
                "practitioner_id": "int",
                "status": "int",
            },
            relations={
                "appointment": "appointments",
                "business": "businesses",
                "practitioner": "practitioners",
                "patient": "patients",
            },
            list_routes=("deleted",),
            nested={
                "patients": "/patients/{id}/invoices",
                "practitioners": "/practitioners/{id}/invoices",
                "appointments": "/appointments/{id}/invoices",
            },
        ),
        _r(
            "invoice_items",
            "int",
            {"invoice_id": "int"},
            relations={"invoice": "invoices", "billable_item": "billable_items", "product": "products"},
            list_routes=("deleted",),
            nested={"invoices": "/invoices/{id}/invoice_items"},
        ),
    )
}


def resource(name: str) -> Resource:
    """The registry entry for ``name``; raises ``KeyError`` naming the known resources."""
    try:
        return RESOURCES[name]
    except KeyError:
        raise KeyError(f"unknown Cliniko resource {name!r}; known: {', '.join(sorted(RESOURCES))}") from None
