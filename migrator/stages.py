"""The migration's stages: what each entity needs from the ones before it.

Dependencies first: reference data, then the three mapped entities
(businesses, practitioners, appointment types), contacts, patients, what hangs
off patients, appointments, notes, files, and the books. Each stage names the
foreign keys its records carry (``<rel>_id`` fields of the source models) and
which of them must resolve for a record to come across; an optional key that
does not resolve is left empty instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MAPPED", "STAGES", "Stage", "stage"]

#: Entities a person maps by hand (mapping tables) rather than copying blindly.
MAPPED = ("businesses", "practitioners", "appointment_types")


@dataclass(frozen=True)
class Stage:
    """One entity's stage.

    Attributes:
        entity: the Cliniko resource, the store's table and the ledger's entity.
        fks: ``<rel>_id`` field -> the entity whose destination id it needs.
        required: the fks without which a record cannot come across.
        routes: list routes read besides the plain list (``archived``, ``inactive``).
    """

    entity: str
    fks: dict[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    routes: tuple[str | None, ...] = (None,)


STAGES: tuple[Stage, ...] = (
    Stage("taxes"),
    Stage("concession_types"),
    Stage("billable_items", {"tax_id": "taxes"}),
    Stage("products", {"tax_id": "taxes"}),
    Stage("treatment_note_templates"),
    Stage("businesses"),
    Stage("practitioners", routes=(None, "inactive")),
    Stage(
        "appointment_types",
        {
            "billable_item_id": "billable_items",
            "product_id": "products",
            "treatment_note_template_id": "treatment_note_templates",
        },
        routes=(None, "archived"),
    ),
    Stage("contacts"),
    Stage(
        "patients",
        {"concession_type_id": "concession_types", "referring_doctor_id": "contacts"},
        routes=(None, "archived"),
    ),
    Stage("medical_alerts", {"patient_id": "patients"}, ("patient_id",)),
    Stage(
        "individual_appointments",
        {
            "patient_id": "patients",
            "practitioner_id": "practitioners",
            "business_id": "businesses",
            "appointment_type_id": "appointment_types",
        },
        ("patient_id", "practitioner_id", "business_id", "appointment_type_id"),
    ),
    Stage(
        "group_appointments",
        {
            "practitioner_id": "practitioners",
            "business_id": "businesses",
            "appointment_type_id": "appointment_types",
        },
        ("practitioner_id", "business_id", "appointment_type_id"),
    ),
    Stage(
        "attendees",
        {"booking_id": "group_appointments", "patient_id": "patients"},
        ("booking_id", "patient_id"),
    ),
    Stage(
        "unavailable_blocks",
        {"practitioner_id": "practitioners", "business_id": "businesses"},
        ("practitioner_id", "business_id"),
    ),
    Stage(
        "treatment_notes",
        {
            "patient_id": "patients",
            "practitioner_id": "practitioners",
            "treatment_note_template_id": "treatment_note_templates",
            "booking_id": "individual_appointments",
        },
        ("patient_id", "practitioner_id"),
    ),
    Stage("patient_attachments", {"patient_id": "patients"}, ("patient_id",)),
    Stage(
        "invoices",
        {
            "patient_id": "patients",
            "business_id": "businesses",
            "practitioner_id": "practitioners",
            "appointment_id": "individual_appointments",
        },
        ("patient_id",),
    ),
    Stage(
        "invoice_items",
        {"invoice_id": "invoices", "billable_item_id": "billable_items", "product_id": "products"},
        ("invoice_id",),
    ),
)

_BY_ENTITY = {s.entity: s for s in STAGES}


def stage(entity: str) -> Stage:
    return _BY_ENTITY[entity]
