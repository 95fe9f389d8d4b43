"""Deterministic synthetic Cliniko clinics: the sandbox's data.

``build_accounts(size, seed)`` returns two accounts:

- **source** (shard ``au2``): "Harbourside Physio", a populated clinic. 2-4 businesses,
  practitioners (one an administrator, the last few *inactive*: former practitioners
  whose appointments all lie before they left), a receptionist, taxes, concession types,
  billable items, products, note templates (one deleted), appointment types (one
  archived but used by old appointments, two group types), contacts (doctors and
  standard), then per patient: medical alerts, individual appointments spread over the
  past three years and two months ahead, treatment notes, attachments, invoices and
  their items; plus group classes with attendees and practitioners' unavailable blocks.
- **destination** (shard ``uk1``): the clinic's new account. Its users, businesses,
  practitioners and a few appointment types are set up with names that differ from the
  source's in case, spacing or accents; one active source practitioner and the former
  practitioners are missing; it has no patients and no appointments.

The data is deliberately messy (DESIGN.md §5): the first patients (``_names.SCRIPTED_PATIENTS``)
and a hand-built *showcase* history for patient 0 put every awkward case in even the
tiny clinic; the rest of the population adds more at realistic rates.

How it streams: ``_plan.Plan`` decides what happens (who comes when, what is cancelled,
invoiced or deleted) as a pure function of (seed, purpose, index); this module renders
those decisions as Cliniko records. Each resource is one pass over the patients in
order, so ids are sequential counters that later passes recompute to link back (a
treatment note's ``booking_id`` is the id the appointment pass gave). Only the roster,
one small tuple per patient, stays in memory; ``totals`` is counted from the plan
without rendering a record.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from migrator.cliniko.resources import CANCELLATION_REASONS
from migrator.sandbox import _names as N
from migrator.sandbox._plan import (
    ARCHIVED,
    ARCHIVED_TYPE_DAY,
    ARRIVED,
    CANCELLED,
    DAY,
    DELETED,
    DNA,
    GONE,
    NOW,
    NOW_DAY,
    RNG_CONTACT,
    RNG_PATIENT,
    Attendee,
    Group,
    Invoice,
    Plan,
    Prac,
    Totals,
    Visit,
    between,
    slug,
)
from migrator.sandbox.accounts import AccountSeed, KeySeed, make_key

__all__ = ["NOW", "SIZES", "build_accounts"]

Record = dict[str, Any]
Stream = Iterator[tuple[str, Record]]

#: Named sizes -> number of patients; an int size is the number of patients itself.
SIZES = {"tiny": len(N.SCRIPTED_PATIENTS), "demo": 400, "large": 20_000}
_REASONS = tuple(CANCELLATION_REASONS)

_SOURCE_IDS = {
    "users": 1_001,
    "businesses": 514_810_972_972_521_916,
    "taxes": 514_810_972_972_700_001,
    "concession_types": 301,
    "billable_items": 401,
    "products": 501,
    "treatment_note_templates": 601,
    "appointment_types": 514_810_972_972_800_001,
    "practitioners": 514_810_972_972_600_001,
    "contacts": 20_001,
    "patients": 372_481_449_527_346_255,
    "medical_alerts": 40_000_001,
    "individual_appointments": 100_000_001,
    "group_appointments": 900_000_001,
    "attendees": 950_000_001,
    "unavailable_blocks": 980_000_001,
    "treatment_notes": 723_094_118_300_000_001,
    "patient_attachments": 60_000_001,
    "invoices": 815_223_561_004_000_001,
    "invoice_items": 70_000_001,
}
_DESTINATION_IDS = {
    "users": 8_001,
    "businesses": 611_202_004_518_000_001,
    "taxes": 611_202_004_518_100_001,
    "concession_types": 3_301,
    "billable_items": 3_401,
    "treatment_note_templates": 3_601,
    "appointment_types": 611_202_004_518_200_001,
    "practitioners": 611_202_004_518_300_001,
}


@lru_cache(maxsize=8192)
def _date(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * DAY))


def _ts(t: int | None) -> str | None:
    """``YYYY-MM-DDTHH:MM:SSZ``; string formatting beats strftime on a million records."""
    if t is None:
        return None
    day, s = divmod(t, DAY)
    return f"{_date(day)}T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z"


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _token(*parts: object) -> str:
    """A stable UUID for custom-field tokens (account-specific, like Cliniko's)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _stamped(rec_id: int, created: int, rec: Record) -> Record:
    return {"id": rec_id, "created_at": _ts(created), "updated_at": _ts(created + 600), **rec}


def _patient_count(size: str | int) -> int:
    if isinstance(size, int):
        if size < 1:
            raise ValueError(f"size must be a positive number of patients, got {size}")
        return size
    try:
        return SIZES[size]
    except KeyError:
        raise ValueError(f"unknown size {size!r}; use one of {', '.join(SIZES)} or a number") from None


class _SourceClinic(Plan):
    """The populated clinic: its plan rendered as Cliniko records."""

    name = "Harbourside Physio"
    shard = "au2"
    subdomain = "harbourside-physio"
    account_id = 40_117

    def __init__(self, seed: int, n_patients: int) -> None:
        super().__init__(seed, n_patients)
        self.ids = _SOURCE_IDS
        self.tokens = [_token(seed, "source", k) for k in range(5)]

    def pid(self, i: int) -> int:
        return self.ids["patients"] + i

    # -- rendering: reference data ----------------------------------------------------

    def _stamp(self, res: str, k: int, rec: Record, days_ago: int = 1_600) -> tuple[str, Record]:
        """A set-up record with its id and timestamps: set up before the first patient came."""
        return res, _stamped(self.ids[res] + k, (NOW_DAY - days_ago + k) * DAY + 3600, rec)

    def _users(self) -> Stream:
        people = [(self.pracs[0], "administrator"), (None, "receptionist")]
        people += [(p, "practitioner") for p in self.pracs[1:]]
        for k, (p, role) in enumerate(people):
            title, first, last = (p.title, p.first, p.last) if p else ("", "Kate", "Lawson")
            yield self._stamp("users", k, {
                "title": title, "first_name": first, "last_name": last,
                "email": f"{slug(first)}.{slug(last)}@{self.subdomain}.example.com", "role": role,
                "time_zone": "Melbourne", "user_active": p.active if p else True,
            })  # fmt: skip

    def _setup(self) -> Stream:
        """Businesses through contacts: the small tables a clinic sets up once."""
        for k in range(self.n_businesses):
            city, state, post_code = N.PLACES[k]
            yield self._stamp("businesses", k, {
                "business_name": N.BUSINESSES[k][0], "display_name": N.BUSINESSES[k][0].split()[-1],
                "address_1": f"{10 + 7 * k} {N.STREETS[k]}", "address_2": None if k else "Level 1",
                "city": city, "state": state, "post_code": post_code, "country": "Australia",
                "country_code": "AU", "business_registration_name": "ABN",
                "business_registration_value": f"51 824 753 55{k}",
                "contact_information": f"Phone 03 9{k}00 1234", "email_reply_to": f"{slug(city)}@example.com",
                "website_address": "https://harbourside.example.com", "show_in_online_bookings": k != 3,
            })  # fmt: skip
        for k, (name, rate) in enumerate(N.TAXES):
            yield self._stamp("taxes", k, {"name": name, "rate": rate, "amount": rate})
        for k, (name, _pct) in enumerate(N.CONCESSIONS):
            yield self._stamp("concession_types", k, {"name": name})
        for k, (code, name, cents, tax) in enumerate(N.BILLABLE_ITEMS):
            yield self._stamp("billable_items", k, {
                "item_code": code, "item_type": "Service", "name": name, "price": _money(cents),
                "tax_id": self.ids["taxes"] + tax,
            })  # fmt: skip
        for k, (code, name, supplier, cost, price, stock) in enumerate(N.PRODUCTS):
            yield self._stamp("products", k, {
                "item_code": code, "name": name, "product_supplier_name": supplier,
                "serial_number": "", "notes": None, "cost_price": _money(cost), "price_ex_tax": _money(price),
                "stock_level": stock, "tax_id": self.ids["taxes"],
            })  # fmt: skip
        for k, (name, deleted) in enumerate(N.TEMPLATES):
            yield self._stamp("treatment_note_templates", k, {
                "name": name, "content": N.template_content(name), "print_settings": N.PRINT_SETTINGS.copy(),
                "deleted_at": _ts(NOW - 700 * DAY) if deleted else None,
            })  # fmt: skip
        for k, (name, cat, color, minutes, most, item, product, tpl, archived) in enumerate(
            N.APPOINTMENT_TYPES
        ):
            yield self._stamp("appointment_types", k, {
                "name": name, "category": cat, "color": color,
                "description": "Group class 🧘" if most > 1 else None, "duration_in_minutes": minutes,
                "max_attendees": most, "show_in_online_bookings": not archived,
                "billable_item_id": self.ids["billable_items"] + item,
                "product_id": None if product is None else self.ids["products"] + product,
                "treatment_note_template_id": self.ids["treatment_note_templates"] + tpl,
                "archived_at": _ts(ARCHIVED_TYPE_DAY * DAY + 3600) if archived else None,
            })  # fmt: skip
        for k, p in enumerate(self.pracs):
            rec = _practitioner(p, self.ids["users"] + p.user, self.ids["appointment_types"] + (k % 4))
            res, rec = self._stamp("practitioners", k, rec)
            if not p.active:  # their record last changed when they left
                rec["updated_at"] = _ts(p.leave_day * DAY)
            yield res, rec
        for j in range(self.n_contacts):
            yield self._stamp("contacts", j, self._contact(j), days_ago=1_550)

    def _contact(self, j: int) -> Record:
        r = self.rng(RNG_CONTACT, j)
        doctor = j in self.doctors
        first, last = r.choice(N.FIRST_NAMES), r.choice(N.LAST_NAMES)
        city, state, post_code = r.choice(N.PLACES)
        return {
            "title": "Dr" if doctor else "", "first_name": first, "last_name": last, "preferred_name": None,
            "company_name": f"{city} Medical Centre" if doctor else r.choice(N.COMPANIES),
            "occupation": "General Practitioner" if doctor else "Case manager",
            "email": f"{slug(first)}.{slug(last)}@clinic{j}.example.com",
            "phone_numbers": [{"number": f"03 9{r.randrange(1000, 9999)} {r.randrange(1000, 9999)}",
                               "phone_type": "Work"}],
            "address_1": f"{r.randrange(1, 300)} {r.choice(N.STREETS)}", "address_2": "", "address_3": "",
            "city": city, "state": state, "post_code": post_code, "country": "Australia", "country_code": "AU",
            "notes": None, "provider_number": f"{r.randrange(100000, 999999)}{'ABCD'[j % 4]}" if doctor else "",
            "doctor_type": ("general_practitioner" if j % 2 == 0 else "specialist") if doctor else None,
            "type": "Doctor" if doctor else "Standard", "type_code": 1 if doctor else 0, "deleted_at": None,
        }  # fmt: skip

    # -- rendering: patients and what hangs off them ------------------------------------

    def _patient(self, i: int) -> Record:
        p, r = self.roster[i], self.rng(RNG_PATIENT, i)
        spec = p.spec
        created = self.created(p)
        city, state, post_code = r.choice(N.PLACES)
        sex = r.choice(("Female", "Male", "Female", "Male", "Intersex", ""))
        dob: object = _date(r.randrange(-10_950, 18_500))  # 1940 .. 2020
        if "dob" in spec:
            dob = spec["dob"]
        elif r.random() < 0.04:
            dob = None
        phones = [{"phone_type": "Mobile", "number": f"04{r.randrange(10, 99)} {r.randrange(100, 999)} "
                                                      f"{r.randrange(100, 999)}"}]  # fmt: skip
        if r.random() < 0.2:
            phones.append(
                {"phone_type": "Home", "number": f"03 9{r.randrange(100, 999)} {r.randrange(1000, 9999)}"}
            )
        elif r.random() < 0.08:
            phones = []
        archived = between(p.end * DAY, NOW - 60, r.getrandbits(8)) if p.kind == ARCHIVED else None
        deleted = between(created + DAY, NOW - 60, r.getrandbits(8)) if p.kind == GONE else None
        custom = None
        if r.random() < 0.4:
            section, text_field, radio_field, opt_google, opt_friend = self.tokens
            custom = {"sections": [{"token": section, "name": "Health fund", "fields": [
                {"token": text_field, "name": "Health fund name", "type": "text",
                 "value": r.choice(("Bupa", "Medibank", "HCF", "nib"))},
                {"token": radio_field, "name": "How did you hear about us?", "type": "radiobuttons",
                 "options": [{"token": r.choice((opt_google, opt_friend)), "selected": True}]},
            ]}]}  # fmt: skip
        return {
            "id": self.pid(i), "created_at": _ts(created),
            "updated_at": _ts(max(x for x in (created + 3600, archived, deleted) if x)),
            "title": r.choice(("", "", "Mr", "Ms", "Mrs", "Dr", "Mx")), "first_name": p.first,
            "last_name": p.last, "preferred_first_name": spec.get("preferred"), "email": p.email,
            "date_of_birth": dob, "gender": sex, "gender_identity": r.choice((sex, sex, "Non-binary", "")),
            "sex": sex, "pronouns": None,
            "address_1": f"{r.randrange(1, 400)} {r.choice(N.STREETS)}",
            "address_2": r.choice(("", "", "", f"Unit {r.randrange(1, 30)}")), "address_3": "",
            "city": city, "state": state, "post_code": post_code,
            "country": "New Zealand" if city == "Auckland" else "Australia",
            "patient_phone_numbers": phones, "emergency_contact": r.choice(("", "", "Partner 0400 111 222")),
            "occupation": r.choice(N.OCCUPATIONS), "notes": spec.get("notes", r.choice(("", "", "", "Prefers SMS"))),
            "appointment_notes": r.choice(("", "", "", "Needs ground-floor room")),
            "medicare": f"{r.randrange(2000, 6999)} {r.randrange(10000, 99999)} 1" if r.random() < 0.6 else "",
            "medicare_reference_number": str(r.randrange(1, 6)), "dva_card_number": "",
            "invoice_default_to": "", "invoice_email": "",
            "invoice_extra_information": r.choice(("", "", "", "Claim no. 4471\r\nWorkSafe Victoria")),
            "old_reference_id": f"LEG-{i:06d}" if r.random() < 0.3 else "",
            "referral_source": r.choice(("", "", "Google", "Friend", "GP referral")),
            "reminder_type": r.choice(("SMS & Email", "SMS & Email", "SMS & Email", "SMS", "None")),
            "receives_confirmation_emails": r.random() < 0.8,
            "accepted_privacy_policy": r.choice((True, True, None, False)),
            "accepted_email_marketing": r.random() < 0.3, "accepted_sms_marketing": r.random() < 0.2,
            "time_zone": r.choice(("Australia/Melbourne", "Australia/Melbourne", "Australia/Sydney", None)),
            "custom_fields": custom, "archived_at": _ts(archived), "deleted_at": _ts(deleted),
            "merged_at": _ts(archived) if p.merged_into >= 0 else None,
            "merged_with_patient_id": self.pid(p.merged_into) if p.merged_into >= 0 else None,
            "concession_type_id": self.ids["concession_types"] + p.concession if p.concession >= 0 else None,
            "referring_doctor_id": self.ids["contacts"] + r.choice(self.doctors) if r.random() < 0.25 else None,
        }  # fmt: skip

    def _appointment(self, aid: int, i: int, v: Visit) -> Record:
        p, d = self.roster[i], v.detail
        created = max(self.created(p) + 60, min(v.start - (d % 21) * DAY - 3600, NOW - 60))
        end = v.start + v.minutes * 60
        cancelled = between(created, min(v.start, NOW - 60), d >> 16) if v.state == CANCELLED else None
        deleted = between(created, NOW - 60, d >> 16) if v.state == DELETED else None
        marked = min(end + 600, NOW - 60) if v.state in (ARRIVED, DNA) else None
        reason = _REASONS[(d >> 9) % len(_REASONS)] if cancelled else None
        online = (d >> 12) % 5 == 0
        reminded = v.start < NOW + 2 * DAY and v.state != DELETED  # reminders go out two days ahead
        return {
            "id": aid, "created_at": _ts(created), "updated_at": _ts(cancelled or deleted or marked or created),
            "starts_at": _ts(v.start), "ends_at": _ts(end), "patient_name": f"{p.first} {p.last}",
            "notes": N.APPOINTMENT_NOTES[(d >> 5) % len(N.APPOINTMENT_NOTES)], "patient_arrived": v.state == ARRIVED,
            "did_not_arrive": v.state == DNA, "cancelled_at": _ts(cancelled), "cancellation_reason": reason,
            "cancellation_reason_description": CANCELLATION_REASONS[reason] if reason else "",
            "cancellation_note": N.CANCELLATION_NOTES[(d >> 24) % 4] if reason else None,
            "booking_ip_address": f"203.0.113.{d % 250}" if online else None,
            "online_booking_policy_accepted": True if online else None,
            "email_reminder_sent": reminded and bool(d >> 26 & 1), "sms_reminder_sent": reminded and bool(d >> 27 & 1),
            "invoice_status": None, "treatment_note_status": None, "repeat_rule": {}, "repeats": None,
            "deleted_at": _ts(deleted), "telehealth_url": f"https://{self.subdomain}.example.com/t/{aid:x}",
            "appointment_type_id": self.ids["appointment_types"] + v.atype,
            "business_id": self.ids["businesses"] + v.biz, "practitioner_id": self.ids["practitioners"] + v.prac,
            "patient_id": self.pid(i),
        }  # fmt: skip

    def _group_record(self, gid: int, g: Group, patient_ids: list[int]) -> Record:
        created = min(g.start - 30 * DAY, NOW - DAY)
        deleted = between(created, NOW - 60, g.start) if g.deleted else None
        return {
            "id": gid, "created_at": _ts(created), "updated_at": _ts(deleted or created),
            "starts_at": _ts(g.start), "ends_at": _ts(g.start + g.minutes * 60),
            "max_attendees": N.APPOINTMENT_TYPES[g.atype][4], "notes": None if g.start % 3 else "Bring a mat 🧘",
            "patient_ids": patient_ids, "repeat_rule": {}, "repeats": None, "deleted_at": _ts(deleted),
            "appointment_type_id": self.ids["appointment_types"] + g.atype,
            "business_id": self.ids["businesses"] + g.biz, "practitioner_id": self.ids["practitioners"] + g.prac,
        }  # fmt: skip

    def _attendee(self, att_id: int, gid: int, g: Group, a: Attendee) -> Record:
        d = a.detail
        booked = max(min(g.start - 30 * DAY, NOW - DAY), self.created(self.roster[a.patient]))
        created = min(booked + 60 + d % 3600, NOW - 60)
        cancelled = between(created, min(g.start, NOW - 60), d >> 8) if a.state == CANCELLED else None
        deleted = between(created, NOW - 60, d >> 8) if a.state == DELETED else None
        reason = _REASONS[(d >> 16) % len(_REASONS)] if cancelled else None
        return {
            "id": att_id, "created_at": _ts(created), "updated_at": _ts(cancelled or deleted or created),
            "arrived": {ARRIVED: True, DNA: False}.get(a.state), "notes": None,
            "cancelled_at": _ts(cancelled), "cancellation_reason": reason,
            "cancellation_reason_description": CANCELLATION_REASONS[reason] if reason else "",
            "cancellation_note": None, "booking_ip_address": None, "online_booking_policy_accepted": None,
            "email_reminder_sent": g.start < NOW, "sms_reminder_sent": False, "invoice_status": None,
            "treatment_note_status": None, "deleted_at": _ts(deleted),
            "telehealth_url": f"https://{self.subdomain}.example.com/a/{att_id:x}",
            "booking_id": gid, "patient_id": self.pid(a.patient),
        }  # fmt: skip

    def _note(self, nid: int, i: int, k: int, tpl: int, booking: int | None, t: int, note: int) -> Record:
        t = min(t, NOW - 120)
        prac = self.pracs[k]
        deleted = between(t, NOW - 60, nid) if note == 2 else None
        return {
            "id": nid, "created_at": _ts(t), "updated_at": _ts(deleted or t + 60),
            "title": N.TEMPLATES[tpl][0], "draft": nid % 23 == 0,
            "author_name": f"{prac.first} {prac.last}", "content": N.note_content(nid),
            "deleted_at": _ts(deleted), "patient_id": self.pid(i),
            "practitioner_id": self.ids["practitioners"] + k,
            "treatment_note_template_id": self.ids["treatment_note_templates"] + tpl, "booking_id": booking,
        }  # fmt: skip

    def _invoice(self, inv_id: int, number: int, i: int, plan: Invoice, appointment: int | None) -> Record:
        p = self.roster[i]
        lines = [_line(item, p.concession) for item in plan.lines]
        closed = min(plan.t + (number % 30) * DAY, NOW - 60) if plan.status in (20, 30) else None
        deleted = between(plan.t, NOW - 60, inv_id) if plan.deleted else None  # as its items
        return {
            "id": inv_id, "created_at": _ts(plan.t), "updated_at": _ts(deleted or closed or plan.t),
            "number": number, "issue_date": _date(plan.t // DAY), "status": plan.status,
            "status_description": N.INVOICE_STATUS[plan.status],
            "total_amount": _money(sum(x[5] for x in lines)), "tax_amount": _money(sum(x[4] for x in lines)),
            "net_amount": _money(sum(x[3] for x in lines)), "discounted_amount": _money(sum(x[2] for x in lines)),
            "notes": None if number % 9 else "Thank you! 🙏", "invoice_to": f"{p.first} {p.last}",
            "patient_extra_information": None, "closed_at": _ts(closed), "deleted_at": _ts(deleted),
            "appointment_id": appointment, "business_id": self.ids["businesses"] + plan.biz,
            "practitioner_id": self.ids["practitioners"] + plan.prac if plan.prac >= 0 else None,
            "patient_id": self.pid(i),
        }  # fmt: skip

    def _invoice_items(self, item_id: int, inv_id: int, i: int, plan: Invoice) -> Iterator[Record]:
        concession = self.roster[i].concession
        stamp = _ts(plan.t)
        deleted = _ts(between(plan.t, NOW - 60, inv_id)) if plan.deleted else None
        for n, item in enumerate(plan.lines):
            unit, qty, discount, net, tax, total, rate, tax_name, pct = _line(item, concession)
            is_product, idx, _ = item
            code, name = (N.PRODUCTS if is_product else N.BILLABLE_ITEMS)[idx][:2]
            yield {
                "id": item_id + n, "created_at": stamp, "updated_at": deleted or stamp, "name": name, "code": code,
                "quantity": qty, "unit_price": _money(unit), "net_price": _money(net),
                "discounted_amount": _money(discount), "discount_percentage": f"{pct}.0",
                "tax_rate": rate, "tax_amount": _money(tax), "total_including_tax": _money(total),
                "is_monetary_discount": False, "tax_name": tax_name,
                "concession_type_name": N.CONCESSIONS[concession][0] if discount else "",
                "deleted_at": deleted,
                "billable_item_id": None if is_product else self.ids["billable_items"] + idx,
                "product_id": self.ids["products"] + idx if is_product else None, "invoice_id": inv_id,
            }  # fmt: skip

    # -- the stream and its totals ---------------------------------------------------

    def records(self) -> Stream:
        """Every record, dependency first; a fresh, identical stream on every call."""
        ids = self.ids
        yield from self._users()
        yield from self._setup()
        for i in range(self.n):
            yield "patients", self._patient(i)
        alert_id = ids["medical_alerts"]
        for i in range(self.n):
            for name, deleted, t in self.alerts(i):
                yield "medical_alerts", {
                    "id": alert_id, "created_at": _ts(t), "updated_at": _ts(t + 60 if not deleted else NOW - 60),
                    "name": N.MEDICAL_ALERTS[name], "deleted_at": _ts(NOW - 60) if deleted else None,
                    "patient_id": self.pid(i),
                }  # fmt: skip
                alert_id += 1
        aid = ids["individual_appointments"]
        for i in range(self.n):
            for v in self.history(i).visits:
                yield "individual_appointments", self._appointment(aid, i, v)
                aid += 1
        yield from self._classes()
        for j in range(self.n_blocks):
            start, minutes, k, biz, note, deleted = self.block(j)
            created = min(start - 14 * DAY, NOW - DAY)
            yield "unavailable_blocks", {
                "id": ids["unavailable_blocks"] + j, "created_at": _ts(created),
                "updated_at": _ts(NOW - 60 if deleted else created), "starts_at": _ts(start),
                "ends_at": _ts(start + minutes * 60), "notes": N.BLOCK_NOTES[note], "repeat_rule": {},
                "repeats": None, "deleted_at": _ts(NOW - 60) if deleted else None,
                "business_id": ids["businesses"] + biz, "practitioner_id": ids["practitioners"] + k,
            }  # fmt: skip
        yield from self._treatment_notes()
        file_id = ids["patient_attachments"]
        for i in range(self.n):
            for entry, uploader, t, pending in self.files(i):
                filename, content_type, description, size = N.ATTACHMENTS[entry]
                yield "patient_attachments", {
                    "id": file_id, "created_at": _ts(t), "updated_at": _ts(t if pending else t + 30),
                    "filename": None if pending else filename, "content_type": None if pending else content_type,
                    "size": None if pending else size, "description": description,
                    "processing_completed": not pending, "patient_id": self.pid(i),
                    "user_id": ids["users"] + uploader,
                }  # fmt: skip
                file_id += 1
        yield from self._billing()

    def _classes(self) -> Stream:
        """Group appointments, then their attendees (the group's patient_ids already list them)."""
        gid0, att_id = self.ids["group_appointments"], self.ids["attendees"]
        for g in range(self.n_groups):
            group = self.group(g)
            live = [self.pid(a.patient) for a in group.attendees if a.state != DELETED]
            yield "group_appointments", self._group_record(gid0 + g, group, live)
        for g in range(self.n_groups):
            group = self.group(g)
            for a in group.attendees:
                yield "attendees", self._attendee(att_id, gid0 + g, group, a)
                att_id += 1

    def _treatment_notes(self) -> Stream:
        """Notes of appointments and notes with no booking, per patient; then notes of classes."""
        nid, aid = self.ids["treatment_notes"], self.ids["individual_appointments"]
        for i in range(self.n):
            history = self.history(i)
            for v in history.visits:
                if v.note:
                    end, tpl = v.start + v.minutes * 60, N.APPOINTMENT_TYPES[v.atype][7]
                    yield "treatment_notes", self._note(nid, i, v.prac, tpl, aid, end, v.note)
                    nid += 1
                aid += 1
            for t, k in history.notes:
                yield "treatment_notes", self._note(nid, i, k, 1, None, t, 1)
                nid += 1
        for g in range(self.n_groups):
            group = self.group(g)
            for a in group.attendees:
                if a.note:
                    end = group.start + group.minutes * 60
                    gid = self.ids["group_appointments"] + g
                    yield "treatment_notes", self._note(nid, a.patient, group.prac, 2, gid, end, a.note)
                    nid += 1

    def _invoices_of(self, i: int, aid: int) -> tuple[list[tuple[Invoice, int | None]], int]:
        """Patient i's invoices with their appointment ids, and the next appointment id."""
        history = self.history(i)
        out: list[tuple[Invoice, int | None]] = []
        for v in history.visits:
            if v.invoice:
                out.append((v.invoice, aid))
            aid += 1
        out += [(plan, None) for plan in history.invoices]
        return out, aid

    def _billing(self) -> Stream:
        """Invoices, then their items (regenerating the invoices so ids line up)."""
        inv_id, aid = self.ids["invoices"], self.ids["individual_appointments"]
        for i in range(self.n):
            invoices, aid = self._invoices_of(i, aid)
            for plan, appointment in invoices:
                number = inv_id - self.ids["invoices"] + 1001
                yield "invoices", self._invoice(inv_id, number, i, plan, appointment)
                inv_id += 1
        inv_id, aid = self.ids["invoices"], self.ids["individual_appointments"]
        item_id = self.ids["invoice_items"]
        for i in range(self.n):
            invoices, aid = self._invoices_of(i, aid)
            for plan, _ in invoices:
                for item in self._invoice_items(item_id, inv_id, i, plan):
                    yield "invoice_items", item
                item_id += len(plan.lines)
                inv_id += 1

    def count(self) -> Totals:
        """What each list route serves, from the plan (no patient records rendered)."""
        tot = Totals.empty(list(self.ids))
        for res, rec in (*self._users(), *self._setup()):
            tot.tally(res, rec)
        self.count_activity(tot)
        return tot

    def account(self) -> AccountSeed:
        admin = self.pracs[0]
        email = f"{slug(admin.first)}.{slug(admin.last)}@{self.subdomain}.example.com"
        fields = ("Health fund", "Health fund name", "How did you hear about us?")
        admin_row = (email, admin.first, admin.last)
        settings = N.settings(self.account_id, self.name, self.subdomain, admin_row, self.tokens, fields)
        users, role = self.ids["users"], "source_non_admin"
        keys = [  # the administrator-practitioner and the receptionist
            KeySeed("source", make_key(self.seed, "source", self.shard), users, True, True),
            KeySeed(role, make_key(self.seed, role, self.shard), users + 1, False, False),
        ]
        return AccountSeed(self.name, self.account_id, self.shard, self.subdomain, keys, settings,
                           self.records, dict(self.count()))  # fmt: skip


class _DestinationClinic:
    """The clinic's new account: staff, locations and a few types set up; no patients yet."""

    name = "Harbourside Physiotherapy"
    shard = "uk1"
    subdomain = "harbourside-physio-new"
    account_id = 90_233

    def __init__(self, seed: int, source: _SourceClinic) -> None:
        self.seed = seed
        self.source = source
        self.ids = _DESTINATION_IDS
        # Practitioner 0 (the source's administrator) comes first: they own the destination key too.
        self.pracs = [p for p in source.pracs if p.dest_name]
        self.tokens = [_token(seed, "destination", k) for k in range(5)]

    def _stamp(self, res: str, k: int, rec: Record) -> tuple[str, Record]:
        """A set-up record: the account was set up a month ago."""
        return res, _stamped(self.ids[res] + k, (NOW_DAY - 30 + k) * DAY + 7200, rec)

    def _email(self, first: str, last: str) -> str:
        return f"{slug(first)}.{slug(last)}@{self.source.subdomain}.example.com"

    def records(self) -> Stream:
        admin = self.pracs[0]
        first, last = admin.dest_name or (admin.first, admin.last)
        people = [(admin.title, first, last, self._email(first, last).capitalize(), "administrator")]
        people.append(("", "Morgan", "Ellis", self._email("Morgan", "Ellis"), "administrator"))
        for p in self.pracs[1:]:
            first, last = p.dest_name or (p.first, p.last)
            people.append((p.title, first, last, self._email(first, last), "practitioner"))
        for k, (title, first, last, email, role) in enumerate(people):
            yield self._stamp("users", k, {
                "title": title, "first_name": first, "last_name": last, "email": email, "role": role,
                "time_zone": "London", "user_active": True,
            })  # fmt: skip
        for k in range(self.source.n_businesses):
            city, state, post_code = N.PLACES[k]
            yield self._stamp("businesses", k, {
                "business_name": N.BUSINESSES[k][1], "display_name": None, "address_1": f"{10 + 7 * k} {N.STREETS[k]}",
                "address_2": None, "city": city, "state": state, "post_code": post_code, "country": "Australia",
                "country_code": "AU", "business_registration_name": "ABN",
                "business_registration_value": f"51 824 753 55{k}", "contact_information": "",
                "email_reply_to": "", "website_address": "", "show_in_online_bookings": False,
            })  # fmt: skip
        for k, (name, rate) in enumerate(N.TAXES):
            yield self._stamp("taxes", k, {"name": name, "rate": rate, "amount": rate})
        for k, name in enumerate(("pensioner", "Student", "Health care card")):
            yield self._stamp("concession_types", k, {"name": name})
        for k in range(2):
            code, name, cents, tax = N.BILLABLE_ITEMS[k]
            rec = {"item_code": code, "item_type": "Service", "name": name, "price": _money(cents),
                   "tax_id": self.ids["taxes"] + tax}  # fmt: skip
            yield self._stamp("billable_items", k, rec)
        name = N.TEMPLATES[1][0]
        rec = {"name": name, "content": N.template_content(name), "print_settings": N.PRINT_SETTINGS.copy(),
               "deleted_at": None}  # fmt: skip
        yield self._stamp("treatment_note_templates", 0, rec)
        for k, (name, minutes, most) in enumerate(N.DESTINATION_APPOINTMENT_TYPES):
            yield self._stamp("appointment_types", k, {
                "name": name, "category": None, "color": "#1F77B4", "description": None,
                "duration_in_minutes": minutes, "max_attendees": most, "show_in_online_bookings": False,
                "billable_item_id": self.ids["billable_items"] + k if k < 2 else None, "product_id": None,
                "treatment_note_template_id": self.ids["treatment_note_templates"] if most == 1 else None,
                "archived_at": None,
            })  # fmt: skip
        for k, p in enumerate(self.pracs):
            first, last = p.dest_name or (p.first, p.last)
            user = self.ids["users"] + (0 if k == 0 else k + 1)
            yield self._stamp("practitioners", k, _practitioner(p._replace(first=first, last=last), user,
                                                                  self.ids["appointment_types"]))  # fmt: skip

    def account(self) -> AccountSeed:
        totals = Totals.empty(list(self.ids))
        for res, rec in self.records():
            totals.tally(res, rec)
        admin = self.pracs[0]
        first, last = admin.dest_name or (admin.first, admin.last)
        fields = ("Health Fund", "Health fund name", "How did you hear about us?")  # a different case
        admin_row = (self._email(first, last).capitalize(), first, last)
        settings = N.settings(self.account_id, self.name, self.subdomain, admin_row, self.tokens, fields)
        users = self.ids["users"]
        role = "destination_admin_not_practitioner"
        keys = [
            KeySeed("destination", make_key(self.seed, "destination", self.shard), users, True, True),
            KeySeed(role, make_key(self.seed, role, self.shard), users + 1, True, False),
            # The second practitioner (user users + 2, after the two administrators) writes their own notes.
            KeySeed("destination_practitioner", make_key(self.seed, "destination_practitioner", self.shard),
                    users + 2, False, True),
        ]  # fmt: skip
        return AccountSeed(self.name, self.account_id, self.shard, self.subdomain, keys, settings,
                           self.records, dict(totals))  # fmt: skip


_TAX_PERCENT = tuple(int(float(rate)) for _, rate in N.TAXES)


def _practitioner(p: Prac, user_id: int, default_type_id: int) -> Record:
    label = f"{p.title} {p.first} {p.last}".strip()
    return {
        "first_name": p.first, "last_name": p.last, "title": p.title, "designation": p.designation,
        "label": label, "description": None if p.active else "Left the clinic", "show_in_online_bookings": p.active,
        "user_id": user_id, "default_appointment_type_id": default_type_id, "active": p.active,
    }  # fmt: skip


@lru_cache(maxsize=1024)
def _line(item: tuple[bool, int, int], concession: int) -> tuple[int, int, int, int, int, int, str, str, int]:
    """One invoice line in cents: (unit, qty, discount, net, tax, total, tax rate, tax name, discount %).

    Concessions discount services, not products; tax is on the discounted amount.
    """
    is_product, idx, qty = item
    unit, tax = (N.PRODUCTS[idx][4], 0) if is_product else N.BILLABLE_ITEMS[idx][2:4]
    pct = N.CONCESSIONS[concession][1] if concession >= 0 and not is_product else 0
    discount = unit * qty * pct // 100
    net = unit * qty - discount
    tax_cents = (net * _TAX_PERCENT[tax] + 50) // 100
    return unit, qty, discount, net, tax_cents, net + tax_cents, N.TAXES[tax][1], N.TAXES[tax][0], pct


def build_accounts(size: str | int = "demo", seed: int = 1) -> list[AccountSeed]:
    """The sandbox's accounts: a populated source clinic and an empty destination.

    Args:
        size: ``"tiny"`` (12 patients, every messy case once; for unit tests), ``"demo"``
            (400 patients, ~20,000 records), ``"large"`` (20,000 patients, ~1,000,000
            records), or a number of patients (everything else scales per patient).
        seed: the same seed always gives the same accounts, keys and records.

    Returns:
        ``[source, destination]``; their keys cover every role in ``accounts.ROLES``.

    Example:
        >>> source, destination = build_accounts("tiny")
        >>> sum(1 for _ in source.records()) > 100
        True
    """
    source = _SourceClinic(seed, _patient_count(size))
    return [source.account(), _DestinationClinic(seed, source).account()]
