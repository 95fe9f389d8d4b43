"""Creates, updates, deletes, cancels and archives: validation and defaults.

The docs say little about writes (``CLINIKO_API.md`` §1.10, §4.1, §6.14); the
choices made here, so the client and the sandbox agree:

- Bodies are JSON objects. Unknown and read-only fields (ids, timestamps,
  ``author_name``, reminder flags...) are **ignored**, as a Rails API ignores
  unpermitted parameters; only the fields in :data:`WRITABLE` are stored.
- Foreign keys are ``<rel>_id``, a string or a number; each must name an existing,
  not deleted record, else 422.
- A failed validation is 422 ``{"message": ..., "errors": {"field": ["..."]}}``.
- Date-times may carry any UTC offset and are stored in UTC with ``Z``.
- A new patient's ``reminder_type`` defaults to the account's
  ``settings.reminders.default_reminder_type`` (as in Cliniko, where new patients
  get the account default): a migration that wants silence must send ``"None"``.
- ``ends_at`` defaults to ``starts_at`` + the appointment type's duration
  (appointments) or + 60 minutes (unavailable blocks); ``ends_at: null`` on update
  recalculates it.
- Attendees: a group appointment takes up to ``max_attendees``; an individual
  appointment one. Only group attendees can be cancelled (§3.8).
- Treatment notes are authored by the active practitioner whose user owns the
  key; ``practitioner_id`` in the body is ignored; no such practitioner -> 422.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from migrator.cliniko.resources import CANCELLATION_REASONS, Resource
from migrator.sandbox.store import AccountStore

__all__ = ["BOOKING_TABLES", "WRITABLE", "WriteContext", "WriteError", "Writer"]

#: Tables whose ids are booking ids (one id space; ``/bookings/:id`` finds them).
BOOKING_TABLES = ("individual_appointments", "group_appointments", "unavailable_blocks")

REMINDER_TYPES = ("SMS & Email", "SMS", "Email", "None")
_DT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_ADDRESS = ("address_1", "address_2", "address_3", "city", "state", "post_code")
_CANCELLATION = {
    "cancelled_at": None,
    "cancellation_reason": None,
    "cancellation_reason_description": "",
    "cancellation_note": None,
    "booking_ip_address": None,
    "online_booking_policy_accepted": None,
    "email_reminder_sent": False,
    "sms_reminder_sent": False,
    "invoice_status": None,
    "treatment_note_status": None,
}

#: Writable fields per resource -> the default on create (``<rel>_id`` keys included).
WRITABLE: dict[str, dict[str, Any]] = {
    "patients": {
        "title": "",
        "first_name": None,
        "last_name": None,
        "preferred_first_name": None,
        "email": None,
        "date_of_birth": None,
        "gender_identity": None,
        "sex": None,
        "pronouns": None,
        **dict.fromkeys(_ADDRESS),
        "country": None,
        "patient_phone_numbers": [],
        **dict.fromkeys(("emergency_contact", "occupation", "notes", "appointment_notes")),
        **dict.fromkeys(("medicare", "medicare_reference_number", "dva_card_number")),
        **dict.fromkeys(("invoice_default_to", "invoice_email", "invoice_extra_information")),
        "old_reference_id": None,
        "referral_source": None,
        "reminder_type": None,  # filled from the account settings
        "receives_confirmation_emails": True,
        "accepted_privacy_policy": None,
        "accepted_email_marketing": False,
        "accepted_sms_marketing": False,
        "time_zone": None,
        "custom_fields": None,
        "concession_type_id": None,
        "referring_doctor_id": None,
    },
    "individual_appointments": {
        "starts_at": None,
        "ends_at": None,
        "notes": None,
        "patient_arrived": False,
        "did_not_arrive": False,
        "patient_id": None,
        "practitioner_id": None,
        "appointment_type_id": None,
        "business_id": None,
    },
    "group_appointments": {
        "starts_at": None,
        "ends_at": None,
        "max_attendees": None,
        "notes": None,
        "practitioner_id": None,
        "appointment_type_id": None,
        "business_id": None,
    },
    "attendees": {"arrived": None, "notes": None, "booking_id": None, "patient_id": None},
    "unavailable_blocks": {
        "starts_at": None,
        "ends_at": None,
        "notes": None,
        "practitioner_id": None,
        "business_id": None,
    },
    "treatment_notes": {
        "title": None,
        "draft": False,
        "content": None,
        "patient_id": None,
        "treatment_note_template_id": None,
        "booking_id": None,
        "attendee_id": None,
    },
    "treatment_note_templates": {"name": None, "content": None, "print_settings": {}},
    "medical_alerts": {"name": None, "patient_id": None},
    "contacts": {
        "title": None,
        "first_name": None,
        "last_name": None,
        "preferred_name": None,
        "company_name": None,
        "occupation": None,
        "email": None,
        "phone_numbers": [],
        **dict.fromkeys(_ADDRESS),
        "country_code": None,
        "notes": None,
        "provider_number": None,
        "doctor_type": None,
        "type_code": 0,
    },
    "appointment_types": {
        "name": None,
        "category": None,
        "color": "#000000",
        "description": None,
        "duration_in_minutes": 60,
        "max_attendees": 1,
        "show_in_online_bookings": False,
        "billable_item_id": None,
        "product_id": None,
        "treatment_note_template_id": None,
    },
    "billable_items": {
        "item_code": None,
        "item_type": "Service",
        "name": None,
        "price": "0.0",
        "tax_id": None,
    },
    "products": {
        "item_code": None,
        "name": None,
        "product_supplier_name": None,
        "serial_number": None,
        "notes": None,
        "cost_price": "0.0",
        "price_ex_tax": "0.0",
        "stock_level": 0,
        "tax_id": None,
    },
    "taxes": {"name": None, "rate": "0.0"},
    "patient_attachments": {"patient_id": None, "description": None},
}

_REQUIRED: dict[str, tuple[str, ...]] = {
    "patients": ("first_name", "last_name"),
    "individual_appointments": (
        "starts_at",
        "patient_id",
        "practitioner_id",
        "appointment_type_id",
        "business_id",
    ),
    "group_appointments": ("starts_at", "practitioner_id", "appointment_type_id", "business_id"),
    "attendees": ("booking_id", "patient_id"),
    "unavailable_blocks": ("starts_at", "practitioner_id", "business_id"),
    "treatment_notes": ("patient_id", "treatment_note_template_id"),
    "treatment_note_templates": ("name",),
    "medical_alerts": ("name", "patient_id"),
    "appointment_types": ("name", "duration_in_minutes"),
    "billable_items": ("name",),
    "products": ("name",),
    "taxes": ("name", "rate"),
    "patient_attachments": ("patient_id", "upload_url"),
}
_DATETIMES = ("starts_at", "ends_at")
_DECIMALS = {"price", "cost_price", "price_ex_tax", "rate"}
_COUNTRIES = {
    "AU": "Australia",
    "NZ": "New Zealand",
    "GB": "United Kingdom",
    "IE": "Ireland",
    "US": "United States",
    "CA": "Canada",
}


class WriteError(Exception):
    """A refused write: ``status`` (404/405/422) with a message and field errors."""

    def __init__(self, status: int, message: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or {}


@dataclass
class WriteContext:
    """Who writes: the account's store and settings, and the key's user."""

    store: AccountStore
    settings: dict[str, Any]
    user_id: int


def utc_now() -> str:
    return datetime.now(UTC).strftime(_DT_FORMAT)


def parse_dt(value: Any) -> str | None:
    """An ISO date-time (any offset, ``Z`` included) as a UTC ``...Z`` string, or ``None``."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # docs: every time is UTC
    return parsed.astimezone(UTC).strftime(_DT_FORMAT)


def _plus_minutes(start: str, minutes: int) -> str:
    return (datetime.strptime(start, _DT_FORMAT) + timedelta(minutes=minutes)).strftime(_DT_FORMAT)


def _decimal(value: Any) -> str | None:
    """A money or rate value as Cliniko's decimal string (``11`` -> ``"11.0"``)."""
    if isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    return f"{number:.1f}" if number == number.to_integral_value() else str(number.normalize())


def parse_id(value: Any) -> int | None:
    """An id sent as a JSON number or string (``1``, ``"1"``); ``None`` if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def custom_fields(value: Any, definition: dict[str, Any]) -> dict[str, Any] | None:
    """A patient's ``custom_fields`` checked against the account's definition, as stored.

    The rules of ``CLINIKO_API.md`` §3.1: every token must be one the account defines;
    ``value`` (not empty; ``YYYY-MM-DD`` for dates) only for text, paragraph and date
    fields; ``options`` and ``other`` only for checkboxes and radio buttons, a radio
    field with at most one option selected and none when ``other`` is; ``other`` only
    where the definition enables it, its ``value`` (at most 255 characters) only when
    selected. The stored form has each section's and field's ``name`` and ``type`` from
    the definition, as Cliniko answers. Raises ``ValueError`` with the first problem.
    """
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("sections"), list):
        raise ValueError("must be an object with a list of sections")
    known = {s.get("token"): s for s in definition.get("sections") or []}
    sections = []
    for section in value["sections"]:
        spec = known.get(section.get("token")) if isinstance(section, dict) else None
        if spec is None:
            raise ValueError(f"has a section token the account does not define: {section!r}")
        fields_spec = {f.get("token"): f for f in spec.get("fields") or []}
        fields = []
        for entry in section.get("fields") or []:
            field_spec = fields_spec.get(entry.get("token")) if isinstance(entry, dict) else None
            if field_spec is None:
                raise ValueError(f"has a field token section {spec.get('name')!r} does not define: {entry!r}")
            fields.append(_custom_field(entry, field_spec))
        sections.append({"token": spec["token"], "name": spec.get("name"), "fields": fields})
    return {"sections": sections}


def _custom_field(entry: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    kind, name = spec.get("type"), spec.get("name")
    out: dict[str, Any] = {"token": spec["token"], "name": name, "type": kind}
    if kind in ("text", "paragraph", "date"):
        if "options" in entry or "other" in entry:
            raise ValueError(f"field {name!r} is {kind}: it takes a value, not options")
        value = entry.get("value")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"field {name!r} has an empty value (leave the field out instead)")
        if kind == "date" and not _is_date(value):
            raise ValueError(f"field {name!r} is a date: YYYY-MM-DD, got {value!r}")
        out["value"] = value
        return out
    if "value" in entry:
        raise ValueError(f"field {name!r} is {kind}: it takes options, not a value")
    option_tokens = {o.get("token") for o in spec.get("options") or []}
    selected = []
    for option in entry.get("options") or []:
        if not isinstance(option, dict) or option.get("token") not in option_tokens:
            raise ValueError(f"field {name!r} has an option token it does not define: {option!r}")
        if option.get("selected"):
            selected.append({"token": option["token"], "selected": True})
    out["options"] = selected
    other = entry.get("other")
    if other is not None:
        if not isinstance(other, dict):
            raise ValueError(f"field {name!r}: other must be an object")
        if other.get("selected") and not (spec.get("other") or {}).get("enabled"):
            raise ValueError(f"field {name!r} does not enable other")
        if "value" in other and not other.get("selected"):
            raise ValueError(f"field {name!r}: other's value is only allowed when other is selected")
        if len(str(other.get("value") or "")) > 255:
            raise ValueError(f"field {name!r}: other's value is longer than 255 characters")
        out["other"] = {
            "selected": bool(other.get("selected")),
            **({"value": other["value"]} if "value" in other else {}),
        }
    if kind == "radiobuttons" and (len(selected) > 1 or (selected and (other or {}).get("selected"))):
        raise ValueError(f"field {name!r} is radio buttons: one choice at most")
    return out


class Writer:
    """Applies writes to one account's store; raises :class:`WriteError` on refusal."""

    def __init__(self, ctx: WriteContext) -> None:
        self.ctx = ctx
        self.store = ctx.store

    # -- lookups ------------------------------------------------------------

    def live(self, name: str, record_id: int | None) -> dict[str, Any] | None:
        if record_id is None:
            return None
        rec = self.store.get(name, record_id)
        return rec if rec is not None and rec.get("deleted_at") is None else None

    def booking(self, record_id: int | None) -> tuple[str, dict[str, Any]] | None:
        for name in ("individual_appointments", "group_appointments"):
            rec = self.live(name, record_id)
            if rec is not None:
                return name, rec
        return None

    def _practitioner_of_key(self) -> dict[str, Any] | None:
        for rec in self.store.find("practitioners", "user_id", self.ctx.user_id):
            if rec.get("active", True) and rec.get("deleted_at") is None:
                return rec
        return None

    # -- field handling -----------------------------------------------------

    def _accept(self, res: Resource, body: dict[str, Any], rec: dict[str, Any], creating: bool) -> dict:
        """Copy the writable fields of ``body`` into ``rec``; return field errors."""
        errors: dict[str, list[str]] = {}
        writable = WRITABLE.get(res.name, {})
        targets = {f"{rel}_id": target for rel, target in res.relations.items()}
        for key, value in body.items():
            if key == "price" and res.name == "products":
                key = "price_ex_tax"  # products take price, return price_ex_tax (§3.19)
            if key not in writable:
                continue
            if key == "stock_level" and not creating:
                continue  # PUT can't change stock levels; stock adjustments do (§3.19)
            if key.endswith("_id"):
                ref = parse_id(value) if value is not None else None
                if value is not None and ref is None:
                    errors.setdefault(key, []).append("is not a valid id")
                    continue
                target = targets.get(key)
                if ref is not None and target is not None:
                    found = self.booking(ref) if target == "bookings" else self.live(target, ref)
                    if found is None:
                        errors.setdefault(key, []).append(f"does not refer to an existing {target[:-1]}")
                        continue
                rec[key] = ref
            elif key in _DATETIMES:
                parsed = parse_dt(value)
                if value is not None and parsed is None:
                    errors.setdefault(key, []).append("is not a valid date-time")
                    continue
                rec[key] = parsed
            elif key in _DECIMALS:
                amount = _decimal(value)
                if amount is None:
                    errors.setdefault(key, []).append("is not a number")
                    continue
                rec[key] = amount
            elif key == "content":
                if isinstance(value, str):
                    try:
                        value = json.loads(value)
                    except ValueError:
                        errors.setdefault(key, []).append("is not valid JSON")
                        continue
                if value is not None and not isinstance(value, dict):
                    errors.setdefault(key, []).append("must be an object")
                    continue
                rec[key] = value
            elif key == "date_of_birth":
                if value in ("", None):
                    rec[key] = None
                elif not isinstance(value, str) or not _is_date(value):
                    errors.setdefault(key, []).append("is not a date (YYYY-MM-DD)")
                else:
                    rec[key] = value
            elif key == "custom_fields":
                definition = self.ctx.settings.get("patient_custom_fields_definition") or {}
                try:
                    rec[key] = custom_fields(value, definition)
                except ValueError as exc:
                    errors.setdefault(key, []).append(str(exc))
            elif key == "reminder_type" and value not in REMINDER_TYPES:
                errors.setdefault(key, []).append(f"must be one of {', '.join(REMINDER_TYPES)}")
            else:
                rec[key] = value
        return errors

    def _check_required(self, name: str, rec: dict[str, Any], body: dict[str, Any], errors: dict) -> None:
        for key in _REQUIRED.get(name, ()):
            value = rec.get(key) if key in rec else body.get(key)
            if key not in errors and (value is None or (isinstance(value, str) and not value.strip())):
                errors.setdefault(key, []).append("can't be blank")

    def _derive(self, name: str, rec: dict[str, Any], errors: dict[str, list[str]]) -> None:
        """Fields computed from others: ends_at, patient_name, country, ..."""
        if name in ("individual_appointments", "group_appointments", "unavailable_blocks"):
            if rec.get("starts_at") and rec.get("ends_at") is None:
                minutes = 60
                atype = self.live("appointment_types", rec.get("appointment_type_id"))
                if atype is not None:
                    minutes = int(atype.get("duration_in_minutes") or 60)
                rec["ends_at"] = _plus_minutes(rec["starts_at"], minutes)
            if rec.get("starts_at") and rec.get("ends_at") and rec["ends_at"] < rec["starts_at"]:
                errors.setdefault("ends_at", []).append("must not be before starts_at")
        if name == "individual_appointments":
            patient = self.live("patients", rec.get("patient_id"))
            if patient is not None:
                rec["patient_name"] = (
                    f"{patient.get('first_name') or ''} {patient.get('last_name') or ''}".strip()
                )
        if name == "group_appointments" and rec.get("max_attendees") is None:
            atype = self.live("appointment_types", rec.get("appointment_type_id"))
            rec["max_attendees"] = int((atype or {}).get("max_attendees") or 1)
        if name == "contacts":
            code = rec.get("country_code")
            rec["country"] = _COUNTRIES.get(str(code).upper(), code) if code else None
            rec["type"] = "Doctor" if rec.get("type_code") == 1 else "Standard"
        if name == "taxes":
            rec["amount"] = rec.get("rate")  # deprecated mirror (§3.19)

    # -- operations ---------------------------------------------------------

    def create(self, res: Resource, body: dict[str, Any], extra: dict[str, Any] | None = None) -> dict:
        """Validate and insert a new record; returns the stored internal record."""
        name = res.name
        now = utc_now()
        rec: dict[str, Any] = json.loads(json.dumps(WRITABLE.get(name, {})))  # deep copy of defaults
        errors = self._accept(res, body, rec, creating=True)
        self._check_required(name, rec, body, errors)
        if name == "patients" and "reminder_type" not in body:
            reminders = self.ctx.settings.get("reminders") or {}
            rec["reminder_type"] = reminders.get("default_reminder_type") or "SMS & Email"
        if name == "contacts" and not any(rec.get(k) for k in ("first_name", "last_name", "company_name")):
            errors.setdefault("last_name", []).append("can't be blank (or give first_name or company_name)")
        if name in ("individual_appointments", "attendees"):
            rec.update(_CANCELLATION)
        if name == "treatment_notes":
            self._author(rec, errors)
        if name == "attendees" and "booking_id" not in errors and rec.get("booking_id") is not None:
            self._check_capacity(rec["booking_id"], errors)
        self._derive(name, rec, errors)
        if errors:
            raise WriteError(422, _summary(errors), errors)
        rec.update(extra or {})
        shared = BOOKING_TABLES if name in BOOKING_TABLES else ()
        rec["id"] = self.store.next_id(name, tuple(t for t in shared if t != name))
        rec.update(created_at=now, updated_at=now, deleted_at=None)
        if name in ("patients", "appointment_types"):
            rec["archived_at"] = None
        if name in ("individual_appointments", "group_appointments", "unavailable_blocks"):
            rec.setdefault("repeat_rule", {})
            rec.setdefault("repeats", None)
        if name in ("individual_appointments", "attendees"):
            rec["telehealth_url"] = f"https://sandbox.cliniko.test/telehealth/{rec['id']}"
        if name == "group_appointments":
            rec["patient_ids"] = []
        self.store.insert(name, rec)
        if name == "attendees":
            self._sync_group(rec["booking_id"])
        return rec

    def _author(self, rec: dict[str, Any], errors: dict[str, list[str]]) -> None:
        practitioner = self._practitioner_of_key()
        if practitioner is None:
            errors.setdefault("practitioner", []).append(
                "the API key's user is not an active practitioner, so it cannot author treatment notes"
            )
            return
        rec["practitioner_id"] = practitioner["id"]
        rec["author_name"] = " ".join(
            p for p in (practitioner.get("first_name"), practitioner.get("last_name")) if p
        )
        template = self.live("treatment_note_templates", rec.get("treatment_note_template_id"))
        if not rec.get("title"):
            rec["title"] = (template or {}).get("name") or "Treatment note"
        booking_id = rec.get("booking_id")
        if booking_id is not None and self.booking(booking_id) is None:
            errors.setdefault("booking_id", []).append("does not refer to an existing appointment")

    def _check_capacity(self, booking_id: int, errors: dict[str, list[str]]) -> None:
        found = self.booking(booking_id)
        if found is None:
            return
        kind, booking = found
        taken = sum(
            1
            for a in self.store.find("attendees", "booking_id", booking_id)
            if a["deleted_at"] is None and a.get("cancelled_at") is None  # a cancellation frees the place
        )
        limit = int(booking.get("max_attendees") or 1) if kind == "group_appointments" else 1
        if taken >= limit:
            errors.setdefault("booking_id", []).append(f"is full ({limit} attendee(s) at most)")

    def _sync_group(self, booking_id: int | None) -> None:
        """Keep a group appointment's ``patient_ids`` equal to its live attendees' patients."""
        group = self.live("group_appointments", booking_id)
        if group is None:
            return
        patients = [
            a["patient_id"]
            for a in self.store.find("attendees", "booking_id", group["id"])
            if a["deleted_at"] is None
        ]
        if patients != group.get("patient_ids"):
            group["patient_ids"] = patients
            self.store.replace("group_appointments", group)

    def update(self, res: Resource, rec: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        """Apply a partial update to a live record; returns it."""
        name = res.name
        old_booking = rec.get("booking_id")
        recalc = "ends_at" in body and body["ends_at"] is None
        if name == "treatment_notes":
            body = {k: v for k, v in body.items() if k not in ("practitioner_id",)}
        errors = self._accept(res, body, rec, creating=False)
        for key in _REQUIRED.get(name, ()):
            if key in body and key not in errors and body[key] in (None, ""):
                errors.setdefault(key, []).append("can't be blank")
        if recalc:
            rec["ends_at"] = None
        self._derive(name, rec, errors)
        if errors:
            raise WriteError(422, _summary(errors), errors)
        rec["updated_at"] = utc_now()
        self.store.replace(name, rec)
        if name == "attendees":
            self._sync_group(old_booking)
            if rec.get("booking_id") != old_booking:
                self._sync_group(rec.get("booking_id"))
        return rec

    def delete(self, res: Resource, rec: dict[str, Any]) -> None:
        now = utc_now()
        rec.update(deleted_at=now, updated_at=now)
        self.store.replace(res.name, rec)
        if res.name == "attendees":
            self._sync_group(rec.get("booking_id"))

    def cancel(self, res: Resource, rec: dict[str, Any], body: dict[str, Any]) -> None:
        reason = parse_id(body.get("cancellation_reason"))
        if reason not in CANCELLATION_REASONS:
            codes = ", ".join(str(c) for c in CANCELLATION_REASONS)
            raise WriteError(
                422,
                "cancellation_reason is required",
                {"cancellation_reason": [f"must be one of {codes}"]},
            )
        if res.name == "attendees" and self.live("group_appointments", rec.get("booking_id")) is None:
            raise WriteError(
                422,
                "Only attendees of group appointments can be cancelled",
                {"booking": ["is not a group appointment; cancel the individual appointment instead"]},
            )
        now = utc_now()
        rec.update(
            cancelled_at=now,
            updated_at=now,
            cancellation_reason=reason,
            cancellation_reason_description=CANCELLATION_REASONS[reason],
            cancellation_note=body.get("cancellation_note"),
        )
        self.store.replace(res.name, rec)

    def archive(self, res: Resource, rec: dict[str, Any], archived: bool) -> None:
        now = utc_now()
        rec.update(archived_at=now if archived else None, updated_at=now)
        self.store.replace(res.name, rec)


def _is_date(value: str) -> bool:
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        return False
    return len(value) == 10


def _summary(errors: dict[str, list[str]]) -> str:
    first = next(iter(errors.items()))
    return f"Validation failed: {first[0]} {first[1][0]}" + (
        f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    )
