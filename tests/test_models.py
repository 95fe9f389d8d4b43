"""Tests for migrator.cliniko.models: Cliniko JSON in, typed records out.

The payloads are raw JSON text modelled on the examples of ``shared/CLINIKO_API.md`` §3
(ids as numbers for some resources and strings for others, links from several hosts,
patients' ``""`` dates), parsed with ``json.loads`` as the client will.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from migrator.cliniko.models import (
    BillableItem,
    ClinikoRecord,
    DeletedPatient,
    GroupAppointment,
    IndividualAppointment,
    Invoice,
    Patient,
    PatientAttachment,
    PhoneNumber,
    Practitioner,
    Settings,
    Tax,
    id_from_url,
    model_for,
    parse_record,
    relation_ids,
)
from migrator.cliniko.resources import RESOURCES

BIG_ID = "514810972972521916"  # > 2**53: a float would turn it into 514810972972521920
assert int(BIG_ID) > 2**53

# --- payloads, one per registry resource -------------------------------------------------

PAYLOADS: dict[str, str] = {
    "users": """{
        "id": 1, "title": "Dr", "first_name": "Maria", "last_name": "Smith",
        "email": "maria@example.com", "role": "administrator", "time_zone": "Melbourne",
        "user_active": true, "created_at": "2015-01-02T03:04:05Z", "updated_at": "2016-07-21T03:45:00Z",
        "links": {"self": "https://api.au1.cliniko.com/v1/users/1"}
    }""",
    "businesses": """{
        "id": "1", "business_name": "Cliniko Physio", "display_name": null,
        "address_1": "1 Smith St", "address_2": null, "city": "Melbourne", "state": "VIC",
        "post_code": "3000", "country": "Australia", "country_code": "AU",
        "business_registration_name": "ABN", "business_registration_value": "12 345 678 901",
        "contact_information": "Call us", "email_reply_to": "desk@example.com",
        "website_address": "https://example.com", "show_in_online_bookings": true,
        "created_at": "2015-01-02T03:04:05Z", "updated_at": "2016-07-21T03:45:00Z",
        "practitioners": {"links": {"self": "https://api.au1.cliniko.com/v1/businesses/1/practitioners"}},
        "appointments": {"links": {"self": "https://api.au1.cliniko.com/v1/businesses/1/appointments?page=1"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/businesses/1"}
    }""",
    "practitioners": """{
        "id": "514810972972521916", "first_name": "James", "last_name": "Lee", "title": "Dr",
        "designation": "Physiotherapist", "label": "Dr James Lee", "description": null,
        "show_in_online_bookings": true,
        "created_at": "2015-01-02T03:04:05Z", "updated_at": "2016-07-21T03:45:00Z",
        "default_appointment_type": {"links": {"self": "https://api.au1.cliniko.com/v1/appointment_types/372481449527346255"}},
        "user": {"links": {"self": "https://api.au1.cliniko.com/v1/users/1"}},
        "practitioner_reference_numbers": {"links": {"self": "https://api.au1.cliniko.com/v1/practitioners/514810972972521916/practitioner_reference_numbers?page=1"}},
        "appointments": {"links": {"self": "https://api.au1.cliniko.com/v1/practitioners/514810972972521916/appointments?page=1"}},
        "invoices": {"links": {"self": "https://api.au1.cliniko.com/v1/practitioners/514810972972521916/invoices?page=1"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/practitioners/514810972972521916"}
    }""",
    "taxes": """{
        "id": "1", "name": "GST", "rate": "10.0", "amount": "10.0",
        "created_at": "2015-01-02T03:04:05Z", "updated_at": "2016-07-21T03:45:00Z",
        "links": {"self": "https://api.au1.cliniko.com/v1/taxes/1"}
    }""",
    "concession_types": """{
        "id": 1, "name": "Pensioner",
        "created_at": "2015-01-02T03:04:05Z", "updated_at": "2016-07-21T03:45:00Z",
        "links": {"self": "https://api.au1.cliniko.com/v1/concession_types/1"}
    }""",
    "billable_items": """{
        "id": 1, "item_code": "0001", "item_type": "Service", "name": "Initial Consultation",
        "price": "85.5", "created_at": "2015-01-02T03:04:05Z", "updated_at": "2016-07-21T03:45:00Z",
        "tax": {"links": {"self": "https://api.au1.cliniko.com/v1/taxes/1"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/billable_items/1"}
    }""",
    "products": """{
        "id": 1, "item_code": "P01", "name": "Foam roller", "product_supplier_name": "Rollers Inc",
        "serial_number": "SN-1", "notes": null, "cost_price": "10.25", "price_ex_tax": "18.1818",
        "stock_level": 12, "created_at": "2015-01-02T03:04:05Z", "updated_at": "2016-07-21T03:45:00Z",
        "tax": {"links": {"self": "https://api.au1.cliniko.com/v1/taxes/1"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/products/1"}
    }""",
    "treatment_note_templates": """{
        "id": 1, "name": "Standard Consultation",
        "content": {"sections": [{"name": "Subjective", "questions": [{"name": "Complaint", "type": "paragraph"}]}]},
        "print_settings": {"include_patient_address": true, "include_patient_dob": null, "title": null},
        "deleted_at": null, "created_at": "2015-01-02T03:04:05Z", "updated_at": "2016-07-21T03:45:00Z",
        "links": {"self": "https://api.au1.cliniko.com/v1/treatment_note_templates/1"}
    }""",
    "appointment_types": """{
        "id": "372481449527346255", "name": "Initial Consultation", "category": null,
        "color": "#00FF00", "description": null, "duration_in_minutes": 45, "max_attendees": 1,
        "show_in_online_bookings": null,
        "created_at": "2015-01-02T03:04:05Z", "updated_at": "2016-07-21T03:45:00Z",
        "billable_item": {"links": {"self": "https://api.au1.cliniko.com/v1/billable_items/1"}},
        "practitioners": {"links": {"self": "https://api.au1.cliniko.com/v1/appointment_types/372481449527346255/practitioners"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/appointment_types/372481449527346255"}
    }""",
    "contacts": """{
        "id": 1, "title": "Dr", "first_name": "Ann", "last_name": "Gp", "preferred_name": null,
        "company_name": "City Clinic", "occupation": "GP", "email": "ann@example.com",
        "phone_numbers": [{"number": "0398765432", "phone_type": "Work"}],
        "address_1": "2 High St", "address_2": "", "address_3": "", "city": "Melbourne",
        "state": "VIC", "post_code": "3000", "country": "Australia", "country_code": "AU",
        "notes": "", "provider_number": "123456AB", "doctor_type": "general_practitioner",
        "type": "Doctor", "type_code": 1, "deleted_at": null,
        "created_at": "2015-01-02T03:04:05Z", "updated_at": "2016-07-21T03:45:00Z",
        "links": {"self": "https://api.au1.cliniko.com/v1/contacts/1"}
    }""",
    "patients": """{
        "id": 1001, "title": "", "first_name": "Jane", "last_name": "Doe",
        "preferred_first_name": null, "email": "jane@example.com", "date_of_birth": "1984-05-11",
        "gender": "Female", "gender_identity": "Woman", "sex": "Female", "pronouns": null,
        "address_1": "3 Low St", "address_2": "", "address_3": "", "city": "Melbourne",
        "state": "VIC", "post_code": "3000", "country": "Australia",
        "patient_phone_numbers": [{"phone_type": "Mobile", "number": "0412345678"}],
        "emergency_contact": "John Doe", "occupation": "Engineer", "notes": "",
        "appointment_notes": "Prefers mornings", "medicare": "1234567890",
        "medicare_reference_number": "1", "dva_card_number": "",
        "invoice_default_to": "", "invoice_email": "", "invoice_extra_information": "Line 1\\r\\nLine 2",
        "old_reference_id": "legacy-17", "referral_source": "Google",
        "reminder_type": "SMS & Email", "receives_confirmation_emails": true,
        "accepted_privacy_policy": null, "accepted_email_marketing": false,
        "accepted_sms_marketing": false, "time_zone": "Australia/Melbourne",
        "custom_fields": {"sections": [{"token": "0f5a", "fields": [{"token": "9c1e", "value": "x"}]}]},
        "archived_at": "", "deleted_at": "",
        "created_at": "2015-01-02T03:04:05Z", "updated_at": "2016-07-21T03:45:00Z",
        "concession_type": {"links": {"self": "https://api.au1.cliniko.com/v1/concession_types/1"}},
        "referring_doctor": {"links": {"self": "https://api.au1.cliniko.com/v1/contacts/1"}},
        "medical_alerts": {"links": {"self": "https://api.au1.cliniko.com/v1/patients/1001/medical_alerts?page=1"}},
        "invoices": {"links": {"self": "https://api.au1.cliniko.com/v1/patients/1001/invoices?page=1"}},
        "appointments": {"links": {"self": "https://api.au1.cliniko.com/v1/patients/1001/appointments?page=1"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/patients/1001"}
    }""",
    "medical_alerts": """{
        "id": 1, "name": "Allergic to latex", "deleted_at": null,
        "created_at": "2015-01-02T03:04:05Z", "updated_at": "2016-07-21T03:45:00Z",
        "patient": {"links": {"self": "https://api.au1.cliniko.com/v1/patients/1001"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/medical_alerts/1"}
    }""",
    "individual_appointments": """{
        "id": 1, "starts_at": "2016-08-01T09:00:00Z", "ends_at": "2016-08-01T09:45:00Z",
        "patient_name": "Jane Doe", "notes": null, "patient_arrived": true, "did_not_arrive": false,
        "cancelled_at": null, "cancellation_reason": null, "cancellation_reason_description": "",
        "cancellation_note": null, "booking_ip_address": null, "online_booking_policy_accepted": null,
        "email_reminder_sent": true, "sms_reminder_sent": false, "invoice_status": null,
        "treatment_note_status": null, "repeat_rule": {}, "repeats": null, "deleted_at": null,
        "telehealth_url": "https://example.cliniko.com/telehealth/abc",
        "created_at": "2016-07-21T03:45:00Z", "updated_at": "2016-07-21T03:45:00Z",
        "conflicts": {"links": {"self": "https://api.au1.cliniko.com/v1/individual_appointments/1/conflicts"}},
        "appointment_type": {"links": {"self": "https://api.au1.cliniko.com/v1/appointment_types/372481449527346255"}},
        "business": {"links": {"self": "https://api.au1.cliniko.com/v1/businesses/1"}},
        "practitioner": {"links": {"self": "https://api.au1.cliniko.com/v1/practitioners/514810972972521916"}},
        "patient": {"links": {"self": "https://api.au1.cliniko.com/v1/patients/1001"}},
        "attendees": {"links": {"self": "https://api.au1.cliniko.com/v1/individual_appointments/1/attendees"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/individual_appointments/1"}
    }""",
    "group_appointments": """{
        "id": 2, "starts_at": "2016-08-02T18:00:00Z", "ends_at": "2016-08-02T19:00:00Z",
        "max_attendees": 8, "notes": "Pilates", "patient_ids": [1001, "1002", 514810972972521917],
        "repeat_rule": {}, "repeats": null, "deleted_at": null,
        "created_at": "2016-07-21T03:45:00Z", "updated_at": "2016-07-21T03:45:00Z",
        "conflicts": {"links": {"self": "https://api.au1.cliniko.com/v1/group_appointments/2/conflicts"}},
        "appointment_type": {"links": {"self": "https://api.au1.cliniko.com/v1/appointment_types/3"}},
        "business": {"links": {"self": "https://api.au1.cliniko.com/v1/businesses/1"}},
        "practitioner": {"links": {"self": "https://api.au1.cliniko.com/v1/practitioners/514810972972521916"}},
        "attendees": {"links": {"self": "https://api.au1.cliniko.com/v1/group_appointments/2/attendees"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/group_appointments/2"}
    }""",
    "attendees": """{
        "id": 5, "arrived": null, "notes": null, "cancelled_at": "2016-08-01T01:00:00Z",
        "cancellation_reason": 50, "cancellation_reason_description": "Other",
        "cancellation_note": "Called in", "booking_ip_address": null,
        "online_booking_policy_accepted": null, "email_reminder_sent": false,
        "sms_reminder_sent": false, "invoice_status": null, "treatment_note_status": null,
        "deleted_at": null, "created_at": "2016-07-21T03:45:00Z", "updated_at": "2016-07-21T03:45:00Z",
        "booking": {"links": {"self": "https://api.au1.cliniko.com/v1/bookings/2"}},
        "patient": {"links": {"self": "https://api.au1.cliniko.com/v1/patients/82"}},
        "invoices": {"links": {"self": "https://api.au1.cliniko.com/v1/attendees/5/invoices"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/attendees/5"}
    }""",
    "unavailable_blocks": """{
        "id": 7, "starts_at": "2016-08-03T06:30:00Z", "ends_at": "2016-08-03T07:30:00Z",
        "notes": "Lunch", "repeat_rule": {}, "repeats": null, "deleted_at": null,
        "created_at": "2016-07-21T03:45:00Z", "updated_at": "2016-07-21T03:45:00Z",
        "conflicts": {"links": {"self": "https://api.au1.cliniko.com/v1/unavailable_blocks/7/conflicts"}},
        "business": {"links": {"self": "https://api.au1.cliniko.com/v1/businesses/1"}},
        "practitioner": {"links": {"self": "https://api.au1.cliniko.com/v1/practitioners/514810972972521916"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/unavailable_blocks/7"}
    }""",
    "treatment_notes": """{
        "id": 9, "title": "Standard Consultation", "draft": false, "author_name": "Dr James Lee",
        "content": {"sections": [{"name": "Subjective", "questions": [{"name": "Complaint", "type": "text", "answer": "not 42"}]}]},
        "deleted_at": null, "created_at": "2016-07-21T03:45:00Z", "updated_at": "2016-07-21T03:45:00Z",
        "patient": {"links": {"self": "https://api.au1.cliniko.com/v1/patients/1001"}},
        "practitioner": {"links": {"self": "https://api.au1.cliniko.com/v1/practitioners/514810972972521916"}},
        "treatment_note_template": {"links": {"self": "https://api.au1.cliniko.com/v1/treatment_note_templates/1"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/treatment_notes/9"}
    }""",
    "patient_attachments": """{
        "id": 11, "filename": "scan.pdf", "content_type": "application/pdf", "size": 20480,
        "description": "MRI scan", "processing_completed": true,
        "created_at": "2016-07-21T03:45:00Z", "updated_at": "2016-07-21T03:45:00Z",
        "content": {"links": {"self": "https://api.au1.cliniko.com/v1/patient_attachments/11/content"}},
        "patient": {"links": {"self": "https://api.au1.cliniko.com/v1/patients/1001"}},
        "user": {"links": {"self": "https://api.au1.cliniko.com/v1/users/1"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/patient_attachments/11"}
    }""",
    "invoices": """{
        "id": 21, "number": 1001, "issue_date": "2016-08-01", "status": 20,
        "status_description": "Paid", "total_amount": "100.0", "tax_amount": "9.09",
        "net_amount": "90.91", "discounted_amount": "0.0", "notes": null,
        "invoice_to": "Jane Doe\\n3 Low St", "patient_extra_information": null,
        "closed_at": "2016-08-01T10:00:00Z", "deleted_at": null,
        "created_at": "2016-08-01T09:50:00Z", "updated_at": "2016-08-01T10:00:00Z",
        "business": {"links": {"self": "https://api.au1.cliniko.com/v1/businesses/1"}},
        "patient": {"links": {"self": "https://api.au1.cliniko.com/v1/patients/1001"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/invoices/21"}
    }""",
    "invoice_items": """{
        "id": 31, "name": "Foam roller", "code": "P01", "quantity": 1,
        "unit_price": "20.0", "net_price": "18.1818", "discounted_amount": "0.0",
        "discount_percentage": "0.0", "tax_rate": "10.0", "tax_amount": "1.8182",
        "total_including_tax": "20.0", "is_monetary_discount": false, "tax_name": "GST",
        "concession_type_name": "", "deleted_at": null,
        "created_at": "2016-08-01T09:50:00Z", "updated_at": "2016-08-01T10:00:00Z",
        "invoice": {"links": {"self": "https://api.au1.cliniko.com/v1/invoices/21"}},
        "product": {"links": {"self": "https://api.au1.cliniko.com/v1/products/1"}},
        "links": {"self": "https://api.au1.cliniko.com/v1/invoice_items/31"}
    }""",
}

#: What each payload's record must look like after parsing: id plus a few telling fields.
EXPECTED: dict[str, dict[str, object]] = {
    "users": {"id": "1", "role": "administrator", "user_active": True},
    "businesses": {"id": "1", "country_code": "AU", "address_2": None},
    "practitioners": {"id": BIG_ID, "user_id": "1", "default_appointment_type_id": "372481449527346255"},
    "taxes": {"id": "1", "rate": Decimal("10.0"), "amount": Decimal("10.0")},
    "concession_types": {"id": "1", "name": "Pensioner"},
    "billable_items": {"id": "1", "price": Decimal("85.5"), "tax_id": "1", "item_code": "0001"},
    "products": {
        "id": "1",
        "price_ex_tax": Decimal("18.1818"),
        "cost_price": Decimal("10.25"),
        "tax_id": "1",
    },
    "treatment_note_templates": {"id": "1", "name": "Standard Consultation", "deleted_at": None},
    "appointment_types": {
        "id": "372481449527346255",
        "billable_item_id": "1",
        "product_id": None,  # left out of the record, as in the create example
        "treatment_note_template_id": None,
        "duration_in_minutes": 45,
    },
    "contacts": {"id": "1", "type_code": 1, "doctor_type": "general_practitioner"},
    "patients": {
        "id": "1001",
        "date_of_birth": date(1984, 5, 11),
        "archived_at": None,
        "deleted_at": None,
        "concession_type_id": "1",
        "referring_doctor_id": "1",
        "merged_with_patient_id": None,
        "accepted_privacy_policy": None,
        "invoice_extra_information": "Line 1\r\nLine 2",
    },
    "medical_alerts": {"id": "1", "patient_id": "1001"},
    "individual_appointments": {
        "id": "1",
        "patient_id": "1001",
        "practitioner_id": BIG_ID,
        "business_id": "1",
        "appointment_type_id": "372481449527346255",
        "starts_at": datetime(2016, 8, 1, 9, 0, tzinfo=UTC),
        "repeat_rule": {},
    },
    "group_appointments": {
        "id": "2",
        "patient_ids": ["1001", "1002", "514810972972521917"],
        "max_attendees": 8,
        "appointment_type_id": "3",
    },
    "attendees": {
        "id": "5",
        "booking_id": "2",
        "patient_id": "82",
        "cancellation_reason": 50,
        "arrived": None,
    },
    "unavailable_blocks": {"id": "7", "business_id": "1", "practitioner_id": BIG_ID},
    "treatment_notes": {
        "id": "9",
        "patient_id": "1001",
        "practitioner_id": BIG_ID,
        "treatment_note_template_id": "1",
        "booking_id": None,  # treatment-note lists leave `booking` out
        "draft": False,
    },
    "patient_attachments": {
        "id": "11",
        "patient_id": "1001",
        "user_id": "1",
        "size": 20480,
        "content_url": "https://api.au1.cliniko.com/v1/patient_attachments/11/content",
    },
    "invoices": {
        "id": "21",
        "issue_date": date(2016, 8, 1),
        "total_amount": Decimal("100.0"),
        "net_amount": Decimal("90.91"),
        "appointment_id": None,  # left out, as in the docs' GET example
        "practitioner_id": None,
        "patient_id": "1001",
        "business_id": "1",
    },
    "invoice_items": {
        "id": "31",
        "net_price": Decimal("18.1818"),
        "tax_amount": Decimal("1.8182"),
        "invoice_id": "21",
        "product_id": "1",
        "billable_item_id": None,
        "quantity": 1,
    },
}


def _parse(name: str) -> ClinikoRecord:
    return parse_record(name, json.loads(PAYLOADS[name]))


# --- every resource ----------------------------------------------------------------------


def test_every_registry_resource_has_a_payload_here() -> None:
    assert set(PAYLOADS) == set(RESOURCES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_each_resource_parses_its_documented_payload(name: str) -> None:
    record = _parse(name)

    assert type(record) is model_for(name)
    for field, expected in EXPECTED[name].items():
        assert getattr(record, field) == expected, field
    assert record.links_self is not None and record.links_self.endswith(f"/{name}/{record.id}")
    assert record.created_at is not None and record.created_at.tzinfo is not None
    # Every documented field is declared, so nothing of these payloads lands as an extra,
    # and no link object survives as one either.
    assert record.model_extra == {}


@pytest.mark.parametrize("name", sorted(RESOURCES))
def test_model_for_agrees_with_the_registry(name: str) -> None:
    model = model_for(name)
    entry = RESOURCES[name]

    assert model.resource_name == name
    for rel in entry.relations:
        assert f"{rel}_id" in model.model_fields, rel
    for field in entry.array_ids:
        assert field in model.model_fields, field
    assert model.relation_fields == tuple((rel, f"{rel}_id") for rel in entry.relations)
    assert model.model_fields["id"].is_required()


def test_model_for_an_unknown_resource_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="patients"):
        model_for("payments")


def test_a_model_that_disagrees_with_the_registry_fails_when_defined() -> None:
    with pytest.raises(TypeError, match="patient_id"):

        class BrokenAlert(ClinikoRecord):
            resource_name = "medical_alerts"  # relation `patient`, but no patient_id field


# --- ids ----------------------------------------------------------------------------------


def test_ids_as_json_numbers_and_strings_give_the_same_string() -> None:
    as_number = Patient.model_validate(json.loads('{"id": 1001}'))
    as_string = Patient.model_validate(json.loads('{"id": "1001"}'))

    assert as_number.id == as_string.id == "1001"


def test_an_id_above_2_53_survives_exactly_from_either_json_form() -> None:
    from_number = Practitioner.model_validate(json.loads('{"id": 514810972972521916}'))
    from_string = Practitioner.model_validate(json.loads('{"id": "514810972972521916"}'))

    assert from_number.id == from_string.id == "514810972972521916"
    assert json.loads(from_number.model_dump_json())["id"] == "514810972972521916"


def test_a_float_id_is_refused_with_a_clear_message() -> None:
    # What a JSON parser that reads numbers as floats would hand over: digits already lost.
    with pytest.raises(ValidationError) as caught:
        Patient.model_validate({"id": float(BIG_ID)})

    message = str(caught.value)
    assert "float" in message and "2**53" in message
    assert caught.value.errors()[0]["loc"] == ("id",)


@pytest.mark.parametrize("bad", [1001.0, True, False, "", "12a", " 12", "-3", -3, "1e3", "١٢", None, [1]])
def test_anything_but_an_integer_or_digit_string_is_refused_as_an_id(bad: object) -> None:
    with pytest.raises(ValidationError, match="id"):
        Patient.model_validate({"id": bad})


def test_an_id_is_required_on_records() -> None:
    with pytest.raises(ValidationError, match="id"):
        Patient.model_validate({"first_name": "Jane"})


def test_leading_zeros_are_dropped_so_ids_compare_as_strings() -> None:
    assert Patient.model_validate({"id": "007"}).id == "7"
    assert Patient.model_validate({"id": "0"}).id == "0"


def test_arrays_of_ids_accept_both_forms_and_refuse_floats() -> None:
    group = GroupAppointment.model_validate({"id": 2, "patient_ids": [1, "2", int(BIG_ID)]})
    assert group.patient_ids == ["1", "2", BIG_ID]

    with pytest.raises(ValidationError, match="float"):
        GroupAppointment.model_validate({"id": 2, "patient_ids": [1, 2.0]})


# --- relationship links -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://api.au1.cliniko.com/v1/patients/1001",
        "https://api.cliniko.com/v1/patients/1001",
        "https://api.us1.cliniko.com/v1/patients/1001?page=1",
        "http://api.cliniko.dev:3000/v1/patients/1001",
        "http://api.au1.cliniko.test:3000/v1/patients/1001/",
        "https://api.au1.cliniko.com/v1/patients/1001/?page=1&per_page=100",
        "https://api.au1.cliniko.com/v1/patients/1001#top",
        "https://api.au1.cliniko.com/v1/patients/1001?from=/v1/patients/2",  # a slash in the query
        "/v1/patients/1001",
        "http://127.0.0.1:8765/v1/patients/1001",
    ],
)
def test_a_link_gives_the_last_path_segment_as_the_id(url: str) -> None:
    alert = parse_record("medical_alerts", {"id": 1, "patient": {"links": {"self": url}}})

    assert alert.patient_id == "1001"
    assert id_from_url(url) == "1001"


def test_a_big_id_in_a_link_is_kept_exactly() -> None:
    note = parse_record(
        "treatment_notes",
        {
            "id": 9,
            "practitioner": {"links": {"self": f"https://api.au1.cliniko.com/v1/practitioners/{BIG_ID}"}},
        },
    )

    assert note.practitioner_id == BIG_ID


def test_missing_and_null_relations_are_none() -> None:
    appointment = parse_record(
        "individual_appointments",
        {"id": 1, "patient": None, "practitioner": {"links": {"self": None}}},  # business etc. absent
    )

    assert relation_ids(appointment) == {
        "appointment_type": None,
        "business": None,
        "practitioner": None,
        "patient": None,
    }
    assert appointment.model_extra == {}  # the null relations did not land as extras


def test_ids_may_be_given_directly_and_win_over_a_link() -> None:
    built = IndividualAppointment.model_validate({"id": 1, "patient_id": 1001, "business_id": "2"})
    assert (built.patient_id, built.business_id) == ("1001", "2")

    both = IndividualAppointment.model_validate(
        {"id": 1, "patient_id": "5", "patient": {"links": {"self": "https://x/v1/patients/6"}}}
    )
    assert both.patient_id == "5"
    assert "patient" not in (both.model_extra or {})


def test_a_malformed_relation_is_refused_naming_the_link() -> None:
    with pytest.raises(ValidationError, match="patient: cannot read an id from the link"):
        parse_record("medical_alerts", {"id": 1, "patient": {"links": {"self": "https://x/v1/patients/abc"}}})
    with pytest.raises(ValidationError, match="patient: expected a link object"):
        parse_record("medical_alerts", {"id": 1, "patient": "1001"})
    with pytest.raises(ValidationError, match="patient: expected a link object"):
        parse_record("medical_alerts", {"id": 1, "patient": {"link": {"self": "https://x/v1/patients/1"}}})


def test_navigation_links_are_dropped_and_self_becomes_links_self() -> None:
    patient = _parse("patients")

    extras = patient.model_extra or {}
    for nav in ("medical_alerts", "invoices", "appointments", "links"):
        assert nav not in extras
        assert nav not in patient.model_dump()
    assert patient.links_self == "https://api.au1.cliniko.com/v1/patients/1001"


def test_parsing_does_not_change_the_callers_dict() -> None:
    data = json.loads(PAYLOADS["individual_appointments"])
    before = json.dumps(data, sort_keys=True)

    parse_record("individual_appointments", data)

    assert json.dumps(data, sort_keys=True) == before


def test_relation_ids_lists_every_registry_relation() -> None:
    item = _parse("invoice_items")

    assert relation_ids(item) == {"invoice": "21", "billable_item": None, "product": "1"}


# --- dates, datetimes, decimals -------------------------------------------------------------


def test_empty_string_dates_are_none_and_real_ones_parse() -> None:
    empty = Patient.model_validate(
        json.loads('{"id": 1, "date_of_birth": "", "archived_at": "", "deleted_at": "", "merged_at": ""}')
    )
    assert (empty.date_of_birth, empty.archived_at, empty.deleted_at, empty.merged_at) == (None,) * 4

    archived = Patient.model_validate(
        json.loads('{"id": 1, "date_of_birth": "1984-05-11", "archived_at": "2020-01-02T03:04:05Z"}')
    )
    assert archived.date_of_birth == date(1984, 5, 11)
    assert archived.archived_at == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_empty_strings_are_none_for_other_resources_dates_too() -> None:
    invoice = Invoice.model_validate({"id": 1, "issue_date": "", "closed_at": "", "created_at": ""})

    assert (invoice.issue_date, invoice.closed_at, invoice.created_at) == (None, None, None)


def test_datetimes_are_timezone_aware_utc() -> None:
    appointment = _parse("individual_appointments")
    assert appointment.starts_at is not None
    assert appointment.starts_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]

    # Records our own code builds with naive UTC values get UTC too, never a naive datetime.
    built = IndividualAppointment.model_validate(
        {"id": 1, "starts_at": datetime(2016, 8, 1, 9, 0), "ends_at": "2016-08-01T09:45:00"}
    )
    assert built.starts_at == datetime(2016, 8, 1, 9, 0, tzinfo=UTC)
    assert built.ends_at == datetime(2016, 8, 1, 9, 45, tzinfo=UTC)


def test_a_bare_date_is_refused_for_a_datetime_field() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        IndividualAppointment.model_validate({"id": 1, "starts_at": "2016-08-01"})


def test_decimals_are_exact() -> None:
    item = _parse("invoice_items")

    assert item.net_price == Decimal("18.1818")
    assert str(item.net_price) == "18.1818"
    assert item.tax_amount + item.net_price == Decimal("20.0000")  # type: ignore[operator]
    assert str(_parse("taxes").rate) == "10.0"  # type: ignore[attr-defined]


def test_decimals_accept_numbers_from_write_style_payloads() -> None:
    # Write examples send plain numbers ("price": 11); a fractional JSON number arrives as a
    # float and is read through its shortest repr, so 0.1 is Decimal("0.1"), not 0.1000000000000000055...
    assert BillableItem.model_validate({"id": 1, "price": 11}).price == Decimal("11")
    assert BillableItem.model_validate({"id": 1, "price": 0.1}).price == Decimal("0.1")
    with pytest.raises(ValidationError):
        BillableItem.model_validate({"id": 1, "price": "eleven"})


# --- extras ---------------------------------------------------------------------------------


def test_unknown_fields_are_kept_and_visible_in_model_extra() -> None:
    data = json.loads(PAYLOADS["patients"])
    data["favourite_colour"] = "teal"
    data["loyalty"] = {"tier": "gold", "points": 120}

    patient = parse_record("patients", data)

    assert patient.model_extra == {"favourite_colour": "teal", "loyalty": {"tier": "gold", "points": 120}}
    assert patient.model_dump(mode="json")["loyalty"] == {"tier": "gold", "points": 120}


def test_a_link_for_an_undeclared_relation_is_dropped_not_kept() -> None:
    # `referrers` on referral types, or a relation Cliniko adds later: navigation, not data.
    tax = Tax.model_validate({"id": 1, "owner": {"links": {"self": "https://x/v1/users/1"}}})

    assert tax.model_extra == {}


def test_phone_numbers_parse_and_keep_unknown_keys() -> None:
    patient = _parse("patients")
    assert patient.patient_phone_numbers == [PhoneNumber(phone_type="Mobile", number="0412345678")]  # type: ignore[attr-defined]

    with_extra = Patient.model_validate({"id": 1, "patient_phone_numbers": [{"number": "1", "ext": "2"}]})
    assert with_extra.patient_phone_numbers[0].model_extra == {"ext": "2"}  # type: ignore[index]


# --- stubs and settings -----------------------------------------------------------------------


def test_deleted_patient_stub_takes_its_id_from_the_self_link() -> None:
    page = json.loads(
        """{"patients": [
            {"deleted_at": "2019-03-04T05:06:07Z",
             "links": {"self": "https://api.au1.cliniko.com/v1/patients/514810972972521916"}},
            {"deleted_at": "", "links": {"self": "http://api.cliniko.dev:3000/v1/patients/12/"}}
        ], "total_entries": 2, "links": {"self": "https://api.au1.cliniko.com/v1/patients/deleted?page=1"}}"""
    )

    first, second = (DeletedPatient.model_validate(item) for item in page["patients"])

    assert first.id == BIG_ID
    assert first.deleted_at == datetime(2019, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert first.links_self == "https://api.au1.cliniko.com/v1/patients/514810972972521916"
    assert (second.id, second.deleted_at) == ("12", None)
    # Its own dump reads back: the id is present, the self link kept.
    assert DeletedPatient.model_validate(first.model_dump(mode="json")) == first


def test_deleted_patient_without_any_id_is_refused() -> None:
    with pytest.raises(ValidationError, match="id"):
        DeletedPatient.model_validate({"deleted_at": "2019-03-04T05:06:07Z"})


SETTINGS = """{
    "terminology": {"patient": "client"},
    "account": {"id": 42, "name": "Cliniko Physio", "country": "Australia",
                "time_zone": "Eastern Time (US & Canada)", "currency_symbol": "$",
                "subdomain": "physio", "email_from": "desk@example.com",
                "admin": {"email": "maria@example.com", "first_name": "Maria", "last_name": "Smith"}},
    "calendar": {"start_hour": 7, "end_hour": 20, "timeslot_height_in_pixels": 20,
                 "timeslot_size_in_minutes": 15, "show_current_time_indicator": true,
                 "multiple_appointments_gap": false},
    "online_bookings": {"enabled": true, "calendar_info": null, "policy": null, "logo_url": null,
                        "max_appointments_per_day_segment": 2, "practitioner_order": [514810972972521916, 3],
                        "google_analytics": {"tracking_id": "UA-1"}},
    "patient_custom_fields_definition": {"sections": [{"name": "Health", "token": "0f5a",
        "fields": [{"name": "Allergies", "type": "text", "token": "9c1e"}]}]},
    "reminders": {"default_reminder_type": "SMS & Email"},
    "features": {"telehealth": true},
    "links": {"self": "https://api.au1.cliniko.com/v1/settings/public"}
}"""


def test_settings_parse_loosely_and_keep_everything() -> None:
    settings = Settings.model_validate(json.loads(SETTINGS))

    assert settings.account is not None
    assert settings.account.id == "42"
    assert settings.account.admin == {
        "email": "maria@example.com",
        "first_name": "Maria",
        "last_name": "Smith",
    }
    assert settings.terminology == {"patient": "client"}
    assert settings.reminders == {"default_reminder_type": "SMS & Email"}
    assert settings.online_bookings["practitioner_order"] == [514810972972521916, 3]  # type: ignore[index]
    assert settings.model_extra == {"features": {"telehealth": True}}
    assert settings.links_self == "https://api.au1.cliniko.com/v1/settings/public"


def test_public_settings_without_the_full_sections_parse() -> None:
    settings = Settings.model_validate({"terminology": {"patient": "patient"}, "account": {"id": "7"}})

    assert settings.account is not None and settings.account.id == "7"
    assert settings.reminders is None


# --- serialisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_json_dump_round_trips(name: str) -> None:
    record = _parse(name)

    dumped = record.model_dump(mode="json")
    again = parse_record(name, json.loads(json.dumps(dumped)))

    assert again == record
    assert isinstance(dumped["id"], str)
    for rel in RESOURCES[name].relations:
        assert dumped[f"{rel}_id"] is None or isinstance(dumped[f"{rel}_id"], str)


def test_json_dump_gives_ids_and_decimals_as_strings() -> None:
    dumped = json.loads(_parse("invoice_items").model_dump_json())

    assert dumped["id"] == "31"
    assert dumped["invoice_id"] == "21"
    assert dumped["net_price"] == "18.1818"
    assert dumped["tax_rate"] == "10.0"
    assert dumped["created_at"] == "2016-08-01T09:50:00Z"
    assert dumped["links_self"] == "https://api.au1.cliniko.com/v1/invoice_items/31"

    group = _parse("group_appointments").model_dump(mode="json")
    assert group["patient_ids"] == ["1001", "1002", "514810972972521917"]

    dated = _parse("invoices").model_dump(mode="json")
    assert dated["issue_date"] == "2016-08-01"


def test_attachment_content_link_is_kept_as_a_url_and_round_trips() -> None:
    attachment = _parse("patient_attachments")
    assert isinstance(attachment, PatientAttachment)

    again = PatientAttachment.model_validate(attachment.model_dump(mode="json"))

    assert again.content_url == attachment.content_url
    assert PatientAttachment.model_validate({"id": 1, "content": None}).model_extra == {}


def test_repr_is_pydantics_own() -> None:
    record = Tax.model_validate({"id": 1, "name": "GST", "rate": "10.0"})

    assert repr(record).startswith("Tax(id='1', created_at=None")
    assert "rate=Decimal('10.0')" in repr(record)


def test_records_are_mutable_and_typed_fields_stay_as_parsed() -> None:
    invoice = Invoice.model_validate(json.loads(PAYLOADS["invoices"]))
    invoice.notes = "migrated"

    assert invoice.notes == "migrated"
    assert isinstance(invoice, Invoice) and isinstance(invoice, ClinikoRecord)


def test_deleted_patient_with_a_malformed_self_link_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        DeletedPatient.model_validate({"deleted_at": "", "links": {"self": "https://x/v1/patients/deleted"}})
    with pytest.raises(ValidationError):
        DeletedPatient.model_validate({"deleted_at": "", "links": "https://x/v1/patients/1"})
