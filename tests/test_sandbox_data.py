"""The sandbox's synthetic clinics: deterministic, consistent, counted, and messy."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from migrator.cliniko.resources import RESOURCES
from migrator.sandbox.accounts import ROLES, AccountSeed
from migrator.sandbox.data import NOW, build_accounts

Record = dict[str, Any]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
DECIMAL = re.compile(r"^-?\d+\.\d+$")
NOW_TEXT = "2026-11-01T00:00:00Z"
LIFECYCLE = (
    "created_at",
    "updated_at",
    "deleted_at",
    "archived_at",
    "cancelled_at",
    "closed_at",
    "merged_at",
)
# Where a relation's id may point: bookings are individual or group appointments.
TARGETS = {
    "bookings": ("individual_appointments", "group_appointments"),
    "appointments": ("individual_appointments",),
}


@pytest.fixture(scope="module")
def tiny() -> list[AccountSeed]:
    return build_accounts("tiny")


@pytest.fixture(scope="module")
def demo() -> list[AccountSeed]:
    return build_accounts("demo")


@pytest.fixture(scope="module")
def tiny_source(tiny: list[AccountSeed]) -> dict[str, list[Record]]:
    return _by_resource(tiny[0].records())


def _by_resource(stream: Iterable[tuple[str, Record]]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = defaultdict(list)
    for res, rec in stream:
        out[res].append(rec)
    return out


def _digest(account: AccountSeed) -> str:
    h = hashlib.sha256()
    for res, rec in account.records():
        h.update(res.encode())
        h.update(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


def _expected_totals(account: AccountSeed) -> Counter[str]:
    """Counts per list route, computed independently of the generator."""
    out: Counter[str] = Counter()
    for res, rec in account.records():
        if rec.get("deleted_at"):
            out[f"{res}/deleted"] += 1
        elif rec.get("archived_at"):
            out[f"{res}/archived"] += 1
        elif res == "practitioners" and not rec["active"]:
            out[f"{res}/inactive"] += 1
        else:
            out[res] += 1
            if rec.get("cancelled_at"):
                out[f"{res}/cancelled"] += 1
    return out


def _fold(name: str) -> str:
    """A name as a person would match it: no accents, no case, single spaces."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return " ".join(ascii_name.lower().split())


def _has_emoji(text: str | None) -> bool:
    return bool(text) and any(ord(c) >= 0x1F300 for c in text)


# -- determinism --------------------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny", "demo"])
def test_same_seed_gives_identical_accounts(size: str) -> None:
    first, second = build_accounts(size, seed=7), build_accounts(size, seed=7)
    assert [_digest(a) for a in first] == [_digest(a) for a in second]
    assert [a.totals for a in first] == [a.totals for a in second]
    assert [a.keys for a in first] == [a.keys for a in second]
    assert [a.settings for a in first] == [a.settings for a in second]


def test_now_is_a_fixed_anchor() -> None:
    assert datetime.fromtimestamp(NOW, UTC) == datetime(2026, 11, 1, tzinfo=UTC)


def test_different_seeds_differ() -> None:
    one, two = build_accounts("tiny", seed=1), build_accounts("tiny", seed=2)
    assert _digest(one[0]) != _digest(two[0])
    assert one[0].keys[0].key != two[0].keys[0].key


def test_records_gives_a_fresh_identical_stream(tiny: list[AccountSeed]) -> None:
    source = tiny[0]
    before = _digest(source)
    for _, rec in source.records():  # a consumer that mutates what it is given
        rec.clear()
    assert _digest(source) == before


# -- accounts and keys --------------------------------------------------------------


def test_keys_cover_every_role_on_their_accounts_shard(tiny: list[AccountSeed]) -> None:
    source, destination = tiny
    assert (source.shard, destination.shard) == ("au2", "uk1")
    keys = {k.role: (account, k) for account in tiny for k in account.keys}
    assert sorted(keys) == sorted(ROLES)
    for account, key in keys.values():
        assert key.key.endswith(f"-{account.shard}")
    assert keys["source"][0] is source and keys["source_non_admin"][0] is source
    assert keys["destination"][0] is destination
    assert keys["destination_admin_not_practitioner"][0] is destination


def test_key_owners_have_the_rights_their_keys_claim(tiny: list[AccountSeed]) -> None:
    for account in tiny:
        data = _by_resource(account.records())
        users = {u["id"]: u for u in data["users"]}
        practitioner_users = {p["user_id"] for p in data["practitioners"] if p["active"]}
        for key in account.keys:
            user = users[key.user_id]
            assert (user["role"] == "administrator") is key.is_admin
            assert (key.user_id in practitioner_users) is key.is_practitioner
        assert account.settings["account"]["subdomain"] == account.subdomain
        assert account.settings["account"]["id"] == account.account_id
        assert {u["role"] for u in users.values()} <= {"administrator", "practitioner", "receptionist"}
    non_admin = next(k for k in tiny[0].keys if k.role == "source_non_admin")
    roles = {u["id"]: u["role"] for u in _by_resource(tiny[0].records())["users"]}
    assert roles[non_admin.user_id] == "receptionist"


def test_settings_have_the_documented_shape(tiny: list[AccountSeed]) -> None:
    for account in tiny:
        s = account.settings
        assert set(s) == {"terminology", "account", "calendar", "online_bookings",
                          "patient_custom_fields_definition", "reminders"}  # fmt: skip
        assert set(s["account"]["admin"]) == {"email", "first_name", "last_name"}
        fields = s["patient_custom_fields_definition"]["sections"][0]["fields"]
        assert len(fields) >= 2 and all(f["token"] for f in fields)
    source_tokens = tiny[0].settings["patient_custom_fields_definition"]["sections"][0]["token"]
    assert source_tokens != tiny[1].settings["patient_custom_fields_definition"]["sections"][0]["token"]


# -- consistency --------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny", "demo"])
def test_every_reference_points_at_a_record_yielded_earlier(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    for account in request.getfixturevalue(fixture):
        seen: dict[str, set[int]] = defaultdict(set)
        for res, rec in account.records():
            for rel, target in RESOURCES[res].relations.items():
                field = f"{rel}_id"
                assert field in rec, (res, field)
                value = rec[field]
                if value is not None:
                    assert any(value in seen[t] for t in TARGETS.get(target, (target,))), (
                        res,
                        rec["id"],
                        field,
                    )
            for pid in rec.get("patient_ids", ()):
                assert pid in seen["patients"]
            assert isinstance(rec["id"], int) and rec["id"] not in seen[res], (res, rec["id"])
            seen[res].add(rec["id"])


@pytest.mark.parametrize("fixture", ["tiny", "demo"])
def test_records_are_well_formed(fixture: str, request: pytest.FixtureRequest) -> None:
    for account in request.getfixturevalue(fixture):
        shapes: dict[str, set[frozenset[str]]] = defaultdict(set)
        for res, rec in account.records():
            shapes[res].add(frozenset(rec))
            for field in (*LIFECYCLE, "starts_at", "ends_at"):
                if rec.get(field) is not None:
                    assert TIMESTAMP.match(rec[field]), (res, field, rec[field])
            for field in LIFECYCLE:
                if rec.get(field) is not None:
                    assert rec[field] <= NOW_TEXT, (res, field, rec[field])
            assert rec["created_at"] <= rec["updated_at"], (res, rec["id"])
            if "starts_at" in rec:
                assert rec["starts_at"] < rec["ends_at"]
            for field in (
                "total_amount",
                "price",
                "price_ex_tax",
                "unit_price",
                "total_including_tax",
                "rate",
            ):
                if field in rec:
                    assert isinstance(rec[field], str) and DECIMAL.match(rec[field]), (res, field)
        # the server stores each resource as one table: every record has the same fields
        assert all(len(s) == 1 for s in shapes.values()), [r for r, s in shapes.items() if len(s) > 1]


@pytest.mark.parametrize("size", ["tiny", "demo", 2000])
def test_totals_equal_the_counts_of_the_stream(size: str | int) -> None:
    for account in build_accounts(size):
        expected = _expected_totals(account)
        assert {k: v for k, v in account.totals.items() if v} == dict(expected)
        for res in {r for r, _ in account.records()}:
            assert res in account.totals
            for route in RESOURCES[res].list_routes:
                assert f"{res}/{route}" in account.totals


@pytest.mark.parametrize("fixture", ["tiny", "demo"])
def test_group_patient_ids_are_the_live_attendees(fixture: str, request: pytest.FixtureRequest) -> None:
    data = _by_resource(request.getfixturevalue(fixture)[0].records())
    live: dict[int, list[int]] = defaultdict(list)
    for attendee in data["attendees"]:
        if attendee["deleted_at"] is None:
            live[attendee["booking_id"]].append(attendee["patient_id"])
    groups = data["group_appointments"]
    assert groups and all(g["patient_ids"] == live[g["id"]] for g in groups)
    max_attendees = {g["id"]: g["max_attendees"] for g in groups}
    assert all(len(ids) <= max_attendees[gid] for gid, ids in live.items())


@pytest.mark.parametrize("fixture", ["tiny", "demo"])
def test_invoice_totals_are_the_sum_of_their_items(fixture: str, request: pytest.FixtureRequest) -> None:
    data = _by_resource(request.getfixturevalue(fixture)[0].records())
    items: dict[int, list[Record]] = defaultdict(list)
    for item in data["invoice_items"]:
        items[item["invoice_id"]].append(item)
        assert (item["billable_item_id"] is None) != (item["product_id"] is None)
    for invoice in data["invoices"]:
        lines = items[invoice["id"]]
        assert 1 <= len(lines) <= 3
        assert sum(Decimal(x["total_including_tax"]) for x in lines) == Decimal(invoice["total_amount"])
        net, tax = Decimal(invoice["net_amount"]), Decimal(invoice["tax_amount"])
        assert net + tax == Decimal(invoice["total_amount"])
        assert all(x["deleted_at"] is None for x in lines) is (invoice["deleted_at"] is None)


def test_former_practitioners_only_have_past_appointments(demo: list[AccountSeed]) -> None:
    data = _by_resource(demo[0].records())
    former = {p["id"] for p in data["practitioners"] if not p["active"]}
    theirs = [a for a in data["individual_appointments"] if a["practitioner_id"] in former]
    assert theirs and all(a["starts_at"] < NOW_TEXT for a in theirs)


def test_large_ids_and_distinct_id_spaces(tiny: list[AccountSeed]) -> None:
    source = _by_resource(tiny[0].records())
    for res in ("practitioners", "businesses", "appointment_types", "taxes", "patients", "treatment_notes",
                "invoices"):  # fmt: skip
        assert min(r["id"] for r in source[res]) > 2**53, res
    # bookings mixes both kinds of appointment, so their ids never collide
    individual = {a["id"] for a in source["individual_appointments"]}
    assert not individual & {g["id"] for g in source["group_appointments"]}
    destination = _by_resource(tiny[1].records())
    for res in destination:
        assert not {r["id"] for r in destination[res]} & {r["id"] for r in source.get(res, [])}, res


def test_size_scales_per_patient(demo: list[AccountSeed]) -> None:
    def per_patient(account: AccountSeed, patients: int) -> float:
        return sum(1 for _ in account.records()) / patients

    small, big = per_patient(demo[0], 400), per_patient(build_accounts(2000)[0], 2000)
    assert 30 < small < 70 and abs(big - small) / small < 0.2
    assert build_accounts(2000)[0].totals["patients"] > 1900


def test_unknown_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown size"):
        build_accounts("huge")
    with pytest.raises(ValueError, match="positive"):
        build_accounts(0)


# -- messiness, each case present in the tiny clinic -----------------------------------


def test_tiny_source_has_every_resource(tiny_source: dict[str, list[Record]]) -> None:
    missing = [name for name in RESOURCES if not tiny_source.get(name)]
    assert missing == []
    assert len(tiny_source["patients"]) == 12


def test_tiny_has_messy_patients(tiny_source: dict[str, list[Record]]) -> None:
    patients = tiny_source["patients"]
    live = [p for p in patients if not p["deleted_at"] and not p["archived_at"]]
    by_name: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for p in live:
        by_name[p["first_name"], p["last_name"]].append(p)
    dobs = [[p["date_of_birth"] for p in same] for same in by_name.values() if len(same) > 1]
    assert any(len(set(d)) > 1 for d in dobs), "same name, different dates of birth"
    assert any(len(set(d)) < len(d) for d in dobs), "same name and same date of birth"
    emails = Counter(p["email"] for p in live if p["email"])
    shared = [e for e, n in emails.items() if n > 1]
    assert any(len({p["first_name"] for p in live if p["email"] == e}) > 1 for e in shared), "family email"
    assert any(p["date_of_birth"] is None for p in live)
    names = " ".join(f"{p['first_name']} {p['last_name']}" for p in patients)
    for low, high in ((0x4E00, 0x9FFF), (0x0370, 0x03FF), (0x0400, 0x04FF), (0x0600, 0x06FF)):
        assert any(low <= ord(c) <= high for c in names), hex(low)  # CJK, Greek, Cyrillic, Arabic
    assert any(_has_emoji(p["preferred_first_name"]) for p in patients)
    archived = [p for p in patients if p["archived_at"]]
    assert archived and any(p["merged_with_patient_id"] for p in archived)
    assert any(p["deleted_at"] for p in patients)
    assert not any(p["archived_at"] and p["deleted_at"] for p in patients)


def test_tiny_has_messy_appointments(tiny_source: dict[str, list[Record]]) -> None:
    appointments = tiny_source["individual_appointments"]
    former = {p["id"] for p in tiny_source["practitioners"] if not p["active"]}
    assert former and any(a["practitioner_id"] in former for a in appointments)
    cancelled = [a for a in appointments if a["cancelled_at"] and not a["deleted_at"]]
    assert cancelled and all(a["cancellation_reason"] in (10, 20, 30, 31, 40, 50, 60) for a in cancelled)
    assert all(a["cancellation_reason_description"] for a in cancelled)
    assert any(a["did_not_arrive"] for a in appointments)
    assert any(a["patient_arrived"] for a in appointments)
    assert any(a["deleted_at"] for a in appointments)
    assert any(a["starts_at"] > NOW_TEXT for a in appointments), "bookings ahead"
    assert any(_has_emoji(a["notes"]) for a in appointments)
    archived_types = {t["id"] for t in tiny_source["appointment_types"] if t["archived_at"]}
    assert archived_types and any(a["appointment_type_id"] in archived_types for a in appointments)
    assert any(t["max_attendees"] > 1 for t in tiny_source["appointment_types"])
    attendees = tiny_source["attendees"]
    assert any(a["cancelled_at"] for a in attendees) and any(a["deleted_at"] for a in attendees)
    assert any(g["deleted_at"] for g in tiny_source["group_appointments"])


def test_tiny_has_every_deletion(tiny_source: dict[str, list[Record]]) -> None:
    for res in ("patients", "medical_alerts", "individual_appointments", "group_appointments", "attendees",
                "unavailable_blocks", "treatment_notes", "invoices", "invoice_items", "treatment_note_templates"):  # fmt: skip
        assert any(r["deleted_at"] for r in tiny_source[res]), res
        assert any(not r["deleted_at"] for r in tiny_source[res]), res


def test_tiny_has_every_kind_of_invoice_and_note(tiny_source: dict[str, list[Record]]) -> None:
    invoices = tiny_source["invoices"]
    assert {i["status"] for i in invoices} == {10, 20, 30, 40}
    labels = {i["status"]: i["status_description"] for i in invoices}
    assert labels == {10: "Open", 20: "Paid", 30: "Closed", 40: "Open (credit)"}
    assert any(i["practitioner_id"] is None for i in invoices)
    assert any(i["appointment_id"] is None for i in invoices)
    assert any(i["appointment_id"] is not None for i in invoices)
    individual = {a["id"] for a in tiny_source["individual_appointments"]}
    groups = {g["id"] for g in tiny_source["group_appointments"]}
    bookings = [n["booking_id"] for n in tiny_source["treatment_notes"]]
    assert None in bookings and individual & set(bookings) and groups & set(bookings)
    contacts = {(c["type"], c["type_code"]) for c in tiny_source["contacts"]}
    assert contacts == {("Doctor", 1), ("Standard", 0)}


# -- the destination -----------------------------------------------------------------


def test_destination_is_set_up_but_empty(tiny: list[AccountSeed]) -> None:
    source, destination = (_by_resource(a.records()) for a in tiny)
    for res in ("patients", "individual_appointments", "group_appointments", "attendees", "invoices"):
        assert not destination.get(res), res
    assert destination["businesses"] and destination["appointment_types"]
    exact = {(p["first_name"], p["last_name"]) for p in destination["practitioners"]}
    folded = {(_fold(p["first_name"]), _fold(p["last_name"])) for p in destination["practitioners"]}
    active = [p for p in source["practitioners"] if p["active"]]
    matched = [p for p in active if (_fold(p["first_name"]), _fold(p["last_name"])) in folded]
    assert len(matched) == len(active) - 1, "one active source practitioner is missing"
    assert any((p["first_name"], p["last_name"]) not in exact for p in matched), "names differ in the raw"
    source_businesses = {b["business_name"] for b in source["businesses"]}
    dest_businesses = [b["business_name"] for b in destination["businesses"]]
    assert any(name not in source_businesses for name in dest_businesses)
    assert {_fold(n) for n in dest_businesses} & {_fold(n) for n in source_businesses}
