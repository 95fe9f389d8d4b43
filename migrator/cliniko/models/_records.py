"""One model per Cliniko resource of the registry, plus the ``/patients/deleted`` stub.

Field types follow ``shared/CLINIKO_API.md`` §3. Everything but ``id`` is optional:
``/deleted`` lists and create responses can be sparse. A field whose type the docs
leave open is ``Any``. Each model's ``<rel>_id`` fields must match the registry's
relations; :class:`~migrator.cliniko.models._base.ClinikoRecord` checks it at import.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from pydantic import model_validator

from migrator.cliniko.models._base import (
    ClinikoDate,
    ClinikoDateTime,
    ClinikoId,
    ClinikoRecord,
    PhoneNumber,
    id_from_url,
)

# --- people and places -------------------------------------------------------------


class User(ClinikoRecord):
    """A user of the account (``/users``, ``/user``); practitioners are linked to one."""

    resource_name: ClassVar[str] = "users"

    title: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    role: str | None = None  # only "administrator" is documented
    time_zone: str | None = None  # Rails name, e.g. "Melbourne"
    user_active: bool | None = None


class Business(ClinikoRecord):
    """A clinic location."""

    resource_name: ClassVar[str] = "businesses"

    business_name: str | None = None
    display_name: str | None = None
    address_1: str | None = None
    address_2: str | None = None
    city: str | None = None
    state: str | None = None
    post_code: str | None = None
    country: str | None = None
    country_code: str | None = None
    business_registration_name: str | None = None
    business_registration_value: str | None = None
    contact_information: str | None = None
    email_reply_to: str | None = None
    website_address: str | None = None
    show_in_online_bookings: bool | None = None


class Practitioner(ClinikoRecord):
    """A practitioner; ``user_id`` is its only link to a user."""

    resource_name: ClassVar[str] = "practitioners"

    first_name: str | None = None
    last_name: str | None = None
    title: str | None = None
    designation: str | None = None
    label: str | None = None
    description: str | None = None
    show_in_online_bookings: bool | None = None
    user_id: ClinikoId | None = None
    default_appointment_type_id: ClinikoId | None = None


class Contact(ClinikoRecord):
    """A third-party contact, such as a referring doctor."""

    resource_name: ClassVar[str] = "contacts"

    title: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    preferred_name: str | None = None
    company_name: str | None = None
    occupation: str | None = None
    email: str | None = None
    phone_numbers: list[PhoneNumber] | None = None
    address_1: str | None = None
    address_2: str | None = None
    address_3: str | None = None
    city: str | None = None
    state: str | None = None
    post_code: str | None = None
    country: str | None = None
    country_code: str | None = None
    notes: str | None = None
    provider_number: str | None = None
    doctor_type: str | None = None  # "general_practitioner", "specialist" or None
    type: str | None = None  # "Doctor" or "Standard"
    type_code: int | None = None  # 1 = Doctor, 0 = Standard
    deleted_at: ClinikoDateTime = None


class Patient(ClinikoRecord):
    """A patient. Unset ``date_of_birth``, ``archived_at``, ``deleted_at`` arrive as ``""``."""

    resource_name: ClassVar[str] = "patients"

    title: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    preferred_first_name: str | None = None
    email: str | None = None
    date_of_birth: ClinikoDate = None
    gender: str | None = None  # deprecated since 2018, read-only
    gender_identity: str | None = None
    sex: str | None = None
    pronouns: Any = None  # null in every example; type undocumented
    address_1: str | None = None
    address_2: str | None = None
    address_3: str | None = None
    city: str | None = None
    state: str | None = None
    post_code: str | None = None
    country: str | None = None
    patient_phone_numbers: list[PhoneNumber] | None = None
    emergency_contact: str | None = None
    occupation: str | None = None
    notes: str | None = None
    appointment_notes: str | None = None
    medicare: str | None = None
    medicare_reference_number: str | None = None
    dva_card_number: str | None = None
    invoice_default_to: str | None = None
    invoice_email: str | None = None
    invoice_extra_information: str | None = None
    old_reference_id: str | None = None
    referral_source: str | None = None  # legacy free text, not the referral_sources resource
    reminder_type: str | None = None  # "SMS & Email", "SMS", "None"
    receives_confirmation_emails: bool | None = None
    accepted_privacy_policy: bool | None = None  # None = no answer
    accepted_email_marketing: bool | None = None
    accepted_sms_marketing: bool | None = None
    time_zone: str | None = None  # IANA
    custom_fields: dict[str, Any] | None = None
    archived_at: ClinikoDateTime = None
    deleted_at: ClinikoDateTime = None
    merged_at: ClinikoDateTime = None
    concession_type_id: ClinikoId | None = None
    referring_doctor_id: ClinikoId | None = None
    merged_with_patient_id: ClinikoId | None = None


class DeletedPatient(ClinikoRecord):
    """A ``/patients/deleted`` stub: only ``deleted_at`` and a self link, the id read from it."""

    deleted_at: ClinikoDateTime = None

    @model_validator(mode="before")
    @classmethod
    def _id_from_self_link(cls, data: Any) -> Any:
        # A subclass's before-validator runs ahead of the base's, so this sees the raw
        # `links` object (or `links_self`, when reading back our own dump).
        if type(data) is dict and "id" not in data:
            links = data.get("links")
            url = links.get("self") if type(links) is dict else data.get("links_self")
            if type(url) is str:
                return {**data, "id": id_from_url(url)}
        return data


class MedicalAlert(ClinikoRecord):
    """A medical alert on a patient."""

    resource_name: ClassVar[str] = "medical_alerts"

    name: str | None = None
    deleted_at: ClinikoDateTime = None
    patient_id: ClinikoId | None = None


class PatientAttachment(ClinikoRecord):
    """A file attached to a patient; the file itself is behind ``content_url``."""

    resource_name: ClassVar[str] = "patient_attachments"
    # The `content` link is how the file is downloaded (§4.5), so it is kept, not dropped.
    url_fields: ClassVar[tuple[tuple[str, str], ...]] = (("content", "content_url"),)

    filename: str | None = None  # None until processing finishes
    content_type: str | None = None
    size: int | None = None
    description: str | None = None
    processing_completed: bool | None = None
    content_url: str | None = None
    patient_id: ClinikoId | None = None
    user_id: ClinikoId | None = None


# --- catalogue ----------------------------------------------------------------------


class Tax(ClinikoRecord):
    """A tax; ``amount`` is the deprecated mirror of ``rate``."""

    resource_name: ClassVar[str] = "taxes"

    name: str | None = None
    rate: Decimal | None = None
    amount: Decimal | None = None


class ConcessionType(ClinikoRecord):
    """A concession type (e.g. "Pensioner")."""

    resource_name: ClassVar[str] = "concession_types"

    name: str | None = None


class BillableItem(ClinikoRecord):
    """A billable service."""

    resource_name: ClassVar[str] = "billable_items"

    item_code: str | None = None
    item_type: str | None = None  # only "Service" is documented
    name: str | None = None
    price: Decimal | None = None
    tax_id: ClinikoId | None = None


class Product(ClinikoRecord):
    """A stocked product. Created with ``price``, returned as ``price_ex_tax``."""

    resource_name: ClassVar[str] = "products"

    item_code: str | None = None
    name: str | None = None
    product_supplier_name: str | None = None
    serial_number: str | None = None
    notes: str | None = None
    cost_price: Decimal | None = None
    price_ex_tax: Decimal | None = None
    stock_level: int | None = None
    tax_id: ClinikoId | None = None


class TreatmentNoteTemplate(ClinikoRecord):
    """A treatment-note template; ``content`` is its sections/questions tree."""

    resource_name: ClassVar[str] = "treatment_note_templates"

    name: str | None = None
    # An object in responses, a JSON-encoded string in some write examples (§1.10): kept as is.
    content: Any = None
    print_settings: dict[str, Any] | None = None
    deleted_at: ClinikoDateTime = None


class AppointmentType(ClinikoRecord):
    """An appointment type; ``max_attendees`` > 1 marks a group type."""

    resource_name: ClassVar[str] = "appointment_types"

    name: str | None = None
    category: str | None = None
    color: str | None = None
    description: str | None = None
    duration_in_minutes: int | None = None
    max_attendees: int | None = None
    show_in_online_bookings: bool | None = None
    archived_at: ClinikoDateTime = None  # /appointment_types/archived only
    billable_item_id: ClinikoId | None = None
    product_id: ClinikoId | None = None
    treatment_note_template_id: ClinikoId | None = None


# --- calendar -----------------------------------------------------------------------


class _Booking(ClinikoRecord):
    """Fields every booking (appointment or unavailable block) has."""

    starts_at: ClinikoDateTime = None
    ends_at: ClinikoDateTime = None
    notes: str | None = None
    repeat_rule: Any = None  # `{}` in every example; structure undocumented
    repeats: Any = None  # null in every example
    archived_at: ClinikoDateTime = None  # filterable, never shown in an example
    deleted_at: ClinikoDateTime = None
    business_id: ClinikoId | None = None
    practitioner_id: ClinikoId | None = None


class Appointment(_Booking):
    """Fields individual and group appointments share."""

    appointment_type_id: ClinikoId | None = None


class IndividualAppointment(Appointment):
    """A one-patient appointment, with its attendance and cancellation."""

    resource_name: ClassVar[str] = "individual_appointments"

    patient_name: str | None = None
    patient_arrived: bool | None = None
    did_not_arrive: bool | None = None
    cancelled_at: ClinikoDateTime = None
    cancellation_reason: int | None = None  # 10, 20, 30, 31, 40, 50, 60
    cancellation_reason_description: str | None = None
    cancellation_note: str | None = None
    booking_ip_address: str | None = None
    online_booking_policy_accepted: bool | None = None
    email_reminder_sent: bool | None = None
    sms_reminder_sent: bool | None = None
    invoice_status: Any = None  # null in every example; values undocumented
    treatment_note_status: Any = None
    telehealth_url: str | None = None
    patient_id: ClinikoId | None = None


class GroupAppointment(Appointment):
    """A group appointment; its patients are in ``patient_ids``, attendance on attendees."""

    resource_name: ClassVar[str] = "group_appointments"

    max_attendees: int | None = None
    patient_ids: list[ClinikoId] | None = None


class Attendee(ClinikoRecord):
    """A patient's place in a booking, with its attendance and cancellation."""

    resource_name: ClassVar[str] = "attendees"

    arrived: bool | None = None  # there is no did_not_arrive on attendees
    notes: str | None = None
    cancelled_at: ClinikoDateTime = None
    cancellation_reason: int | None = None
    cancellation_reason_description: str | None = None
    cancellation_note: str | None = None
    booking_ip_address: str | None = None
    online_booking_policy_accepted: bool | None = None
    email_reminder_sent: bool | None = None
    sms_reminder_sent: bool | None = None
    invoice_status: Any = None
    treatment_note_status: Any = None
    deleted_at: ClinikoDateTime = None
    telehealth_url: str | None = None
    booking_id: ClinikoId | None = None
    patient_id: ClinikoId | None = None


class UnavailableBlock(_Booking):
    """Time a practitioner is unavailable at a business."""

    resource_name: ClassVar[str] = "unavailable_blocks"


# --- clinical -------------------------------------------------------------------------


class TreatmentNote(ClinikoRecord):
    """A treatment note; its author is the practitioner, ``content`` the answered tree."""

    resource_name: ClassVar[str] = "treatment_notes"

    title: str | None = None
    draft: bool | None = None
    author_name: str | None = None
    content: Any = None  # an object in responses; kept as is
    deleted_at: ClinikoDateTime = None
    patient_id: ClinikoId | None = None
    practitioner_id: ClinikoId | None = None
    treatment_note_template_id: ClinikoId | None = None
    booking_id: ClinikoId | None = None


# --- billing ---------------------------------------------------------------------------


class Invoice(ClinikoRecord):
    """An invoice (read-only in the API). Status: 10 Open, 20 Paid, 30 Closed, 40 Open (credit)."""

    resource_name: ClassVar[str] = "invoices"

    number: int | None = None
    issue_date: ClinikoDate = None
    status: int | None = None
    status_description: str | None = None
    total_amount: Decimal | None = None
    tax_amount: Decimal | None = None
    net_amount: Decimal | None = None
    discounted_amount: Decimal | None = None
    notes: str | None = None
    invoice_to: str | None = None
    patient_extra_information: str | None = None
    closed_at: ClinikoDateTime = None
    deleted_at: ClinikoDateTime = None
    appointment_id: ClinikoId | None = None
    business_id: ClinikoId | None = None
    practitioner_id: ClinikoId | None = None
    patient_id: ClinikoId | None = None


class InvoiceItem(ClinikoRecord):
    """One line of an invoice; it points at a billable item or a product."""

    resource_name: ClassVar[str] = "invoice_items"

    name: str | None = None
    code: str | None = None
    quantity: int | None = None
    unit_price: Decimal | None = None
    net_price: Decimal | None = None
    discounted_amount: Decimal | None = None
    discount_percentage: Decimal | None = None
    tax_rate: Decimal | None = None
    tax_amount: Decimal | None = None  # deprecated; use tax_rate
    total_including_tax: Decimal | None = None
    is_monetary_discount: bool | None = None
    tax_name: str | None = None
    concession_type_name: str | None = None
    deleted_at: ClinikoDateTime = None
    invoice_id: ClinikoId | None = None
    billable_item_id: ClinikoId | None = None
    product_id: ClinikoId | None = None
