"""The sandbox HTTP server, exercised as a real server on loopback.

Most tests serve small hand-written fixture accounts (below) from a thread, so
each expectation can be read off the fixture; one test goes through
``start_subprocess`` with the generated clinics of ``data.py``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from migrator.sandbox import Sandbox, start_subprocess
from migrator.sandbox.accounts import AccountSeed, KeySeed, make_key

UA = {"User-Agent": "sandbox tests (tests@example.com)"}
BIG_PRACTITIONER = 514_810_972_972_521_916  # > 2**53, like the docs' example
BIG_PATIENT = 372_481_449_527_346_255
N_PATIENTS = 120
DELETED_PATIENT, ARCHIVED_PATIENT = 1005, 1006


# -- fixture accounts -----------------------------------------------------------


def _ts(day: int, hour: int = 0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_577_836_800 + day * 86_400 + hour * 3600))


def _base(rid: int, *, day: int = 0, **fields: Any) -> dict[str, Any]:
    return {"id": rid, "created_at": _ts(day), "updated_at": _ts(day), "deleted_at": None, **fields}


def _patient_id(i: int) -> int:
    return BIG_PATIENT if i == N_PATIENTS - 1 else 1000 + i


def _source_records() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "users", _base(1, first_name="Ada", last_name="Admin", role="administrator", user_active=True)
    yield "users", _base(2, first_name="Rita", last_name="Reception", role="receptionist", user_active=True)
    yield "users", _base(3, first_name="Fred", last_name="Former", role="practitioner", user_active=False)
    yield "businesses", _base(10, business_name="Harbourside")
    yield "businesses", _base(11, business_name="Northside")
    yield "taxes", _base(7, name="GST", rate="10.0", amount="10.0")
    yield "treatment_note_templates", _base(60, name="Standard", content={"sections": []})
    prac: dict[str, Any] = {"default_appointment_type_id": None, "title": "Dr"}
    yield "practitioners", _base(BIG_PRACTITIONER, first_name="Ada", last_name="Admin", user_id=1, active=True,
                                 business_ids=[10, 11], **prac)  # fmt: skip
    yield "practitioners", _base(21, first_name="Fred", last_name="Former", user_id=3, active=False,
                                 business_ids=[11], **prac)  # fmt: skip
    none_links: dict[str, Any] = {
        "billable_item_id": None,
        "product_id": None,
        "treatment_note_template_id": None,
    }
    yield "appointment_types", _base(30, name="Initial", duration_in_minutes=45, max_attendees=1,
                                     practitioner_ids=[BIG_PRACTITIONER], archived_at=None, **none_links)  # fmt: skip
    yield "appointment_types", _base(31, name="Pilates", duration_in_minutes=60, max_attendees=3,
                                     practitioner_ids=[BIG_PRACTITIONER, 21], archived_at=None, **none_links)  # fmt: skip
    yield "appointment_types", _base(32, name="Old", duration_in_minutes=30, max_attendees=1,
                                     practitioner_ids=[], archived_at=_ts(5), **none_links)  # fmt: skip
    for i in range(N_PATIENTS):
        pid = _patient_id(i)
        yield (
            "patients",
            _base(
                pid,
                day=i,
                first_name=["Ann", "Bob", "Cy", "Dee"][i % 4],
                last_name=f"Smith{i:03d}" if i % 3 == 0 else f"Jones{i:03d}",
                email=f"p{i}@example.com" if i % 7 else None,
                date_of_birth=None if i % 10 == 0 else f"19{50 + i % 50}-{1 + i % 12:02d}-{1 + i % 28:02d}",
                old_reference_id=f"OLD-{i}",
                reminder_type="SMS" if i % 2 else "None",
                receives_confirmation_emails=True,
                archived_at=_ts(200) if pid == ARCHIVED_PATIENT else None,
                deleted_at=_ts(201) if pid == DELETED_PATIENT else None,
                concession_type_id=None,
                referring_doctor_id=None,
                merged_with_patient_id=None,
            ),
        )
    for i in range(40):
        yield (
            "individual_appointments",
            _base(
                5000 + i,
                day=300 + i,
                starts_at=_ts(300 + i, 9),
                ends_at=_ts(300 + i, 10),
                patient_id=1000 + i,
                practitioner_id=BIG_PRACTITIONER if i % 2 == 0 else 21,
                business_id=10 if i % 2 == 0 else 11,
                appointment_type_id=30,
                cancelled_at=_ts(299 + i) if i % 10 == 3 else None,
                deleted_at=_ts(299 + i) if i % 10 == 4 else None,
                archived_at=None,
            ),
        )
    yield "group_appointments", _base(7000, day=350, starts_at=_ts(350, 9), ends_at=_ts(350, 10),
                                      practitioner_id=BIG_PRACTITIONER, business_id=10, appointment_type_id=31,
                                      max_attendees=3, patient_ids=[1001, BIG_PATIENT])  # fmt: skip
    yield "attendees", _base(8000, day=350, booking_id=7000, patient_id=1001, cancelled_at=None)
    yield "attendees", _base(8001, day=350, booking_id=7000, patient_id=BIG_PATIENT, cancelled_at=None)
    yield "attendees", _base(8002, day=300, booking_id=5000, patient_id=1000, cancelled_at=None)
    yield "treatment_notes", _base(9000, day=300, patient_id=1000, practitioner_id=BIG_PRACTITIONER,
                                   treatment_note_template_id=60, booking_id=5000, attendee_id=8002,
                                   title="Standard", draft=False, author_name="Ada Admin")  # fmt: skip
    yield "treatment_notes", _base(9001, day=301, patient_id=1000, practitioner_id=BIG_PRACTITIONER,
                                   treatment_note_template_id=60, booking_id=None, attendee_id=None,
                                   title="Standard", draft=True, author_name="Ada Admin")  # fmt: skip
    yield "medical_alerts", _base(11000, patient_id=1000, name="Penicillin")
    yield "medical_alerts", _base(11001, patient_id=1000, name="Old alert", deleted_at=_ts(3))
    yield "patient_attachments", _base(12000, patient_id=1000, user_id=1, filename="x-ray.pdf",
                                       content_type="application/pdf", size=1000, description="scan",
                                       processing_completed=True)  # fmt: skip
    yield "invoices", _base(13000, day=300, patient_id=1000, appointment_id=5000, practitioner_id=BIG_PRACTITIONER,
                            business_id=10, issue_date="2020-10-27", number=1, status=20,
                            total_amount="110.0")  # fmt: skip
    yield "invoices", _base(13001, day=301, patient_id=1000, appointment_id=None, practitioner_id=None,
                            business_id=10, issue_date="2020-10-28", number=2, status=10,
                            total_amount="5.5")  # fmt: skip
    yield "invoice_items", _base(14000, invoice_id=13000, billable_item_id=None, product_id=None,
                                 name="Consult", unit_price="100.0")  # fmt: skip


def _dest_records() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "users", _base(1, first_name="Dana", last_name="Dest", role="administrator", user_active=True)
    yield "users", _base(2, first_name="Nora", last_name="Notprac", role="administrator", user_active=True)
    yield "businesses", _base(10, business_name="New Harbourside")
    yield "practitioners", _base(20, first_name="Dana", last_name="Dest", user_id=1, active=True,
                                 default_appointment_type_id=None)  # fmt: skip
    yield "appointment_types", _base(30, name="Initial", duration_in_minutes=30, max_attendees=1)
    yield "appointment_types", _base(31, name="Pilates", duration_in_minutes=60, max_attendees=2)
    yield "treatment_note_templates", _base(60, name="Standard", content=None)
    yield "patients", _base(100, first_name="Sam", last_name="Sms", reminder_type="SMS")
    yield "patients", _base(101, first_name="Nat", last_name="None", reminder_type="None")


def _settings(name: str, subdomain: str) -> dict[str, Any]:
    return {
        "account": {"id": 1, "name": name, "country": "Australia", "time_zone": "Melbourne",
                    "currency_symbol": "$", "subdomain": subdomain, "email_from": "x@example.com",
                    "admin": {"email": "a@example.com", "first_name": "Ada", "last_name": "Admin"}},
        "online_bookings": {"enabled": True, "adroll": {"advertiser_id": "a"}, "google_analytics": {}},
        "reminders": {"default_reminder_type": "SMS & Email"},
        "terminology": {"patient": "patient"},
    }  # fmt: skip


def fixture_accounts() -> list[AccountSeed]:
    def key(role: str, shard: str, user: int, admin: bool, prac: bool) -> KeySeed:
        return KeySeed(role, make_key(99, role, shard), user, admin, prac)

    source = AccountSeed(
        name="Fixture Source",
        account_id=1,
        shard="au2",
        subdomain="fixture-source",
        keys=[key("source", "au2", 1, True, True), key("source_non_admin", "au2", 2, False, False)],
        settings=_settings("Fixture Source", "fixture-source"),
        records=_source_records,
        totals={"patients": N_PATIENTS - 2},
    )
    dest = AccountSeed(
        name="Fixture Destination",
        account_id=2,
        shard="uk1",
        subdomain="fixture-dest",
        keys=[
            key("destination", "uk1", 1, True, True),
            key("destination_admin_not_practitioner", "uk1", 2, True, False),
        ],
        settings=_settings("Fixture Destination", "fixture-dest"),
        records=_dest_records,
    )
    return [source, dest]


# -- helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(accounts=fixture_accounts(), rate_limit=0) as sb:
        yield sb


def client(sb: Sandbox, role: str = "source", shard: str | None = None, **kw: Any) -> httpx.Client:
    if shard is None:
        shard = {"source": "au2", "source_non_admin": "au2"}.get(role, "uk1")
    return httpx.Client(
        base_url=sb.base_url(shard), auth=(sb.key(role), ""), headers=UA, timeout=kw.pop("timeout", 10), **kw
    )


@pytest.fixture(scope="module")
def src(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with client(sandbox) as c:
        yield c


def ids_of(payload: dict[str, Any], key: str) -> list[int]:
    return [int(r["id"]) for r in payload[key]]


def get_all(c: httpx.Client, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    url: str | None = path
    first = True
    while url:
        r = c.get(url, params={**params, "per_page": 100} if first else None)
        assert r.status_code == 200, r.text
        out.extend(r.json()[key])
        url, first = r.json()["links"].get("next"), False
    return out


Params = list[tuple[str, str | int | float | bool | None]]


def q(*filters: str) -> Params:
    return [("q[]", f) for f in filters]


# -- authentication -------------------------------------------------------------


def test_missing_unknown_and_wrong_shard_keys_are_401_without_echoing_the_key(sandbox: Sandbox) -> None:
    base = sandbox.base_url("au2")
    key = sandbox.key("source")
    cases = [
        httpx.get(f"{base}/patients", headers=UA),
        httpx.get(f"{base}/patients", headers=UA, auth=("MSnotarealkey0000-au2", "")),
        httpx.get(f"{sandbox.base_url('uk1')}/patients", headers=UA, auth=(key, "")),
        # no suffix, on the wrong shard
        httpx.get(f"{sandbox.base_url('uk1')}/patients", headers=UA, auth=(key.rpartition("-")[0], "")),
        # a suffix naming another shard, on the account's own shard
        httpx.get(f"{base}/patients", headers=UA, auth=(key.rpartition("-")[0] + "-uk1", "")),
    ]
    for r in cases:
        assert r.status_code == 401
        assert set(r.json()) == {"message"}
        assert key.rpartition("-")[0] not in r.text
    # without the suffix, on the right shard: accepted
    ok = httpx.get(f"{base}/patients", headers=UA, auth=(key.rpartition("-")[0], ""))
    assert ok.status_code == 200


def test_missing_user_agent_is_400(sandbox: Sandbox) -> None:
    r = httpx.get(
        f"{sandbox.base_url('au2')}/patients", auth=(sandbox.key("source"), ""), headers={"User-Agent": ""}
    )
    assert r.status_code == 400
    assert "User-Agent" in r.json()["message"]


def test_user_and_settings(sandbox: Sandbox, src: httpx.Client) -> None:
    user = src.get("/user").json()
    assert (user["first_name"], user["id"]) == ("Ada", 1)
    assert user["links"]["self"].endswith("/au2/v1/users/1")
    full = src.get("/settings").json()
    assert full["account"]["email_from"] == "x@example.com" and "adroll" in full["online_bookings"]
    with client(sandbox, "source_non_admin") as other:
        assert other.get("/settings").status_code == 403
        public = other.get("/settings/public")
        assert public.status_code == 200
        assert (
            "email_from" not in public.json()["account"] and "adroll" not in public.json()["online_bookings"]
        )
        assert public.json()["account"]["subdomain"] == "fixture-source"


# -- lists, pagination, filters, sorting ------------------------------------------


def test_envelope_and_pagination(src: httpx.Client) -> None:
    r = src.get("/patients", params={"per_page": 25})
    body = r.json()
    live = N_PATIENTS - 2
    assert body["total_entries"] == live and len(body["patients"]) == 25
    assert "page=1" in body["links"]["self"] and "per_page=25" in body["links"]["self"]
    assert "previous" not in body["links"]
    assert body["links"]["self"].startswith(str(src.base_url))
    second = src.get(body["links"]["next"]).json()
    assert "page=2" in second["links"]["self"] and "page=1" in second["links"]["previous"]
    seen: list[int] = []
    url: str | None = "/patients?per_page=25"
    while url:
        page = src.get(url).json()
        seen += ids_of(page, "patients")
        url = page["links"].get("next")
    assert len(seen) == live == len(set(seen))
    assert DELETED_PATIENT not in seen and ARCHIVED_PATIENT not in seen
    default = src.get("/patients").json()
    assert len(default["patients"]) == 50
    clamped = src.get("/patients", params={"per_page": 500}).json()
    assert len(clamped["patients"]) == 100 and "per_page=100" in clamped["links"]["self"]
    beyond = src.get("/patients", params={"page": 9}).json()
    assert beyond["patients"] == [] and "next" not in beyond["links"]
    assert src.get("/patients", params={"page": 0}).status_code == 400


def test_links_keep_the_filters(src: httpx.Client) -> None:
    body = src.get("/patients", params=[*q("first_name:=Ann"), ("per_page", "5")]).json()
    assert "q%5B%5D=first_name%3A%3DAnn" in body["links"]["next"]
    second = src.get(body["links"]["next"]).json()
    assert {p["first_name"] for p in second["patients"]} == {"Ann"}


def test_datetime_filters(src: httpx.Client) -> None:
    after = _ts(100)
    got = get_all(src, "/patients", "patients", **{"q[]": f"created_at:>{after}"})
    assert got and all(p["created_at"] > after for p in got)
    ge = src.get("/patients", params=q(f"created_at:>={after}")).json()["total_entries"]
    assert ge == len(got) + 1
    both = src.get("/patients", params=q(f"created_at:>={_ts(10)}", f"created_at:<{_ts(20)}")).json()
    assert both["total_entries"] == 10  # AND-combined: days 10..19
    frac = src.get("/patients", params=q(f"created_at:>{_ts(100)[:-1]}.5Z")).json()["total_entries"]
    assert frac == len(got)
    assert src.get("/patients", params=q("created_at:>2020-01-01T00:00:00+10:00")).status_code == 400
    assert src.get("/patients", params=q("created_at:=2020-01-01T00:00:00Z")).status_code == 400
    cancelled = src.get("/individual_appointments", params=q("cancelled_at:>2000-01-01T00:00:00Z")).json()
    assert cancelled["total_entries"] == 4 and all(
        a["cancelled_at"] for a in cancelled["individual_appointments"]
    )


def test_date_filters_with_wildcards(src: httpx.Client) -> None:
    may = get_all(src, "/patients", "patients", **{"q[]": "date_of_birth:=****-05-**"})
    assert may and all(p["date_of_birth"][5:7] == "05" for p in may)
    exact = src.get("/patients", params=q("date_of_birth:=1951-02-02")).json()["patients"]
    assert [p["date_of_birth"] for p in exact] == ["1951-02-02"]
    older = get_all(src, "/patients", "patients", **{"q[]": "date_of_birth:<1960-01-01"})
    assert older and all("" < p["date_of_birth"] < "1960-01-01" for p in older)
    assert src.get("/patients", params=q("date_of_birth:~1950")).status_code == 400
    assert src.get("/patients", params=q("date_of_birth:=1950-5-1")).status_code == 400


def test_integer_filters(src: httpx.Client) -> None:
    listed = src.get("/patients", params=q(f'id:=1001,1002,"{BIG_PATIENT}"')).json()
    assert sorted(ids_of(listed, "patients")) == [1001, 1002, BIG_PATIENT]
    by_prac = get_all(src, "/individual_appointments", "individual_appointments",
                      **{"q[]": f"practitioner_id:={BIG_PRACTITIONER}"})  # fmt: skip
    assert len(by_prac) == 16  # 20 even appointments, 4 of them (i % 10 == 4) deleted
    not_prac = src.get("/individual_appointments", params=q(f"practitioner_id:!={BIG_PRACTITIONER}")).json()
    assert not_prac["total_entries"] == 20
    assert src.get("/invoices", params=q("number:>=2")).json()["total_entries"] == 1
    assert src.get("/invoices", params=q("status:=10,20")).json()["total_entries"] == 2
    assert src.get("/patients", params=q("id:=abc")).status_code == 400
    assert src.get("/patients", params=q("id:~1")).status_code == 400


def test_string_filters(src: httpx.Client) -> None:
    smiths = get_all(src, "/patients", "patients", **{"q[]": "last_name:~mith"})
    assert smiths and all("mith" in p["last_name"] for p in smiths)
    like = get_all(src, "/patients", "patients", **{"q[]": "last_name:~~jones0%5"})  # case-insensitive
    assert like and all(p["last_name"].startswith("Jones0") and p["last_name"].endswith("5") for p in like)
    equal = src.get("/patients", params=q("email:=p1@example.com")).json()
    assert ids_of(equal, "patients") == [1001]
    others = src.get("/patients", params=q("first_name:!=Ann")).json()["total_entries"]
    anns = src.get("/patients", params=q("first_name:=Ann")).json()["total_entries"]
    assert others + anns == N_PATIENTS - 2
    underscore = src.get("/patients", params=q("last_name:~~Smith_%")).json()["total_entries"]
    assert underscore == 0  # only % is a wildcard


def test_unknown_filter_field_is_400(src: httpx.Client) -> None:
    r = src.get("/patients", params=q("notes:~x"))
    assert r.status_code == 400 and "notes" in r.json()["message"]


def test_sorting(src: httpx.Client) -> None:
    default = ids_of(src.get("/patients").json(), "patients")
    assert default[:3] == [1000, 1001, 1002]
    desc = src.get("/patients", params={"order": "desc"}).json()["patients"]
    assert int(desc[0]["id"]) == BIG_PATIENT
    by_name = src.get("/patients", params={"sort": "last_name:desc", "per_page": 100}).json()["patients"]
    names = [p["last_name"] for p in by_name]
    assert names == sorted(names, reverse=True)
    multi = src.get("/patients", params={"sort": "first_name,created_at:desc", "per_page": 100}).json()
    rows = [(p["first_name"], p["created_at"]) for p in multi["patients"]]
    assert rows == sorted(rows, key=lambda r: (r[0], [-ord(ch) for ch in r[1]]))
    assert src.get("/patients", params={"sort": "last name"}).status_code == 400


def test_lifecycle_routes(src: httpx.Client) -> None:
    deleted = src.get("/patients/deleted").json()
    assert deleted["total_entries"] == 1
    assert deleted["patients"][0]["deleted_at"] and set(deleted["patients"][0]) == {"deleted_at", "links"}
    archived = src.get("/patients/archived").json()["patients"]
    assert [int(p["id"]) for p in archived] == [ARCHIVED_PATIENT] and archived[0]["archived_at"]
    plain = ids_of(
        src.get("/individual_appointments", params={"per_page": 100}).json(), "individual_appointments"
    )
    assert len(plain) == 36 and 5003 in plain and 5004 not in plain  # cancelled in, deleted out
    cancelled = ids_of(src.get("/individual_appointments/cancelled").json(), "individual_appointments")
    assert cancelled == [5003, 5013, 5023, 5033]
    gone = ids_of(src.get("/individual_appointments/deleted").json(), "individual_appointments")
    assert gone == [5004, 5014, 5024, 5034]
    assert ids_of(src.get("/practitioners").json(), "practitioners") == [BIG_PRACTITIONER]
    assert ids_of(src.get("/practitioners/inactive").json(), "practitioners") == [21]
    assert ids_of(src.get("/appointment_types/archived").json(), "appointment_types") == [32]
    assert ids_of(src.get("/appointment_types").json(), "appointment_types") == [30, 31]
    assert src.get("/patients/cancelled").status_code == 404
    assert src.get(f"/patients/{DELETED_PATIENT}").status_code == 404
    assert src.get(f"/patients/{ARCHIVED_PATIENT}").status_code == 200
    assert src.get("/patients/99999").status_code == 404
    assert src.get("/nonsense").status_code == 404


def test_nested_routes(src: httpx.Client) -> None:
    assert ids_of(src.get("/patients/1000/medical_alerts").json(), "medical_alerts") == [11000]
    assert ids_of(src.get("/patients/1000/medical_alerts/deleted").json(), "medical_alerts") == [11001]
    assert ids_of(src.get("/group_appointments/7000/attendees").json(), "attendees") == [8000, 8001]
    assert ids_of(src.get("/individual_appointments/5000/attendees").json(), "attendees") == [8002]
    assert ids_of(src.get("/businesses/11/practitioners").json(), "practitioners") == [BIG_PRACTITIONER]
    assert ids_of(src.get("/businesses/11/practitioners/inactive").json(), "practitioners") == [21]
    assert ids_of(
        src.get(f"/practitioners/{BIG_PRACTITIONER}/appointment_types").json(), "appointment_types"
    ) == [
        30,
        31,
    ]
    assert ids_of(src.get("/appointment_types/31/practitioners").json(), "practitioners") == [
        BIG_PRACTITIONER
    ]
    assert ids_of(src.get("/appointments/5000/invoices").json(), "invoices") == [13000]
    assert ids_of(src.get("/patients/1000/invoices").json(), "invoices") == [13000, 13001]
    assert ids_of(src.get("/invoices/13000/invoice_items").json(), "invoice_items") == [14000]
    assert ids_of(src.get("/patients/1000/patient_attachments").json(), "patient_attachments") == [12000]
    assert ids_of(src.get("/patients/1000/appointments").json(), "appointments") == [5000]
    assert src.get("/patients/424242/medical_alerts").status_code == 404
    assert src.get("/bookings/7000").json()["links"]["self"].endswith("/bookings/7000")
    assert src.get("/individual_appointments/5000/conflicts").json() == {"conflicts": {"exist": False}}


# -- rendering ------------------------------------------------------------------


def test_mixed_ids_and_big_numbers_are_exact(src: httpx.Client) -> None:
    r = src.get("/practitioners")
    assert r.json()["practitioners"][0]["id"] == str(BIG_PRACTITIONER)
    raw = src.get(f"/patients/{BIG_PATIENT}").text
    assert f'"id":{BIG_PATIENT}' in raw  # a JSON number, all 18 digits
    group = src.get("/group_appointments/7000")
    assert f"[1001,{BIG_PATIENT}]" in group.text and group.json()["id"] == 7000
    taxes = src.get("/taxes").json()["taxes"]
    assert taxes[0]["id"] == "7" and taxes[0]["rate"] == "10.0"


@pytest.mark.parametrize("mode", ["str", "int"])
def test_id_modes(mode: str) -> None:
    with Sandbox(accounts=fixture_accounts(), rate_limit=0, ids=mode) as sb, client(sb) as c:  # type: ignore[arg-type]
        prac = c.get("/practitioners").text
        patient = c.get(f"/patients/{BIG_PATIENT}").text
        group = c.get("/group_appointments/7000").text
    if mode == "str":
        assert f'"id":"{BIG_PRACTITIONER}"' in prac and f'"id":"{BIG_PATIENT}"' in patient
        assert f'["1001","{BIG_PATIENT}"]' in group
    else:
        assert f'"id":{BIG_PRACTITIONER}' in prac and f'"id":{BIG_PATIENT}' in patient
        assert f"[1001,{BIG_PATIENT}]" in group


def test_rendering_links_blanks_and_omissions(src: httpx.Client) -> None:
    base = str(src.base_url).rstrip("/")
    patient = src.get("/patients/1000").json()
    assert patient["date_of_birth"] == "" and patient["archived_at"] == "" and patient["deleted_at"] == ""
    assert patient["concession_type"] is None
    assert patient["medical_alerts"]["links"]["self"] == f"{base}/patients/1000/medical_alerts?page=1"
    assert not any(k.endswith("_id") for k in patient)
    appt = src.get("/individual_appointments/5000").json()
    assert appt["patient"] == {"links": {"self": f"{base}/patients/1000"}}
    assert appt["practitioner"]["links"]["self"] == f"{base}/practitioners/{BIG_PRACTITIONER}"
    assert appt["deleted_at"] is None and appt["cancelled_at"] is None
    assert appt["attendees"]["links"]["self"] == f"{base}/individual_appointments/5000/attendees"
    paid = src.get("/invoices/13000").json()
    assert paid["appointment"]["links"]["self"] == f"{base}/appointments/5000"
    loose = src.get("/invoices/13001").json()
    assert "appointment" not in loose and "practitioner" not in loose and loose["total_amount"] == "5.5"
    note = src.get("/treatment_notes/9000").json()
    assert note["booking"]["links"]["self"] == f"{base}/bookings/5000"
    assert "booking" not in src.get("/treatment_notes/9001").json()
    atype = src.get("/appointment_types/30").json()
    assert "billable_item" not in atype and atype["id"] == "30"
    attendee = src.get("/attendees/8000").json()
    assert attendee["booking"]["links"]["self"] == f"{base}/bookings/7000"


# -- writes ---------------------------------------------------------------------


@pytest.fixture()
def dest(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with client(sandbox, "destination") as c:
        yield c


def test_create_update_patient(dest: httpx.Client) -> None:
    r = dest.post("/patients", json={"first_name": "Émile", "last_name": "Zola", "date_of_birth": "1840-04-02",
                                     "gender": "ignored", "id": 5, "reminder_type": "None"})  # fmt: skip
    assert r.status_code == 201
    created = r.json()
    assert created["first_name"] == "Émile" and created["archived_at"] == "" and "gender" not in created
    assert int(created["id"]) != 5 and r.headers["location"] == created["links"]["self"]
    assert dest.get(r.headers["location"]).json()["last_name"] == "Zola"
    defaulted = dest.post("/patients", json={"first_name": "A", "last_name": "B"}).json()
    assert defaulted["reminder_type"] == "SMS & Email"  # the account default, as in Cliniko
    bad = dest.post("/patients", json={"first_name": "Only", "date_of_birth": "1-2-3"})
    assert bad.status_code == 422
    assert set(bad.json()["errors"]) == {"last_name", "date_of_birth"} and bad.json()["message"]
    upd = dest.put(
        f"/patients/{created['id']}", json={"appointment_notes": "Prefers mornings", "date_of_birth": ""}
    )
    assert upd.status_code == 200
    assert upd.json()["appointment_notes"] == "Prefers mornings" and upd.json()["date_of_birth"] == ""
    assert upd.json()["updated_at"] >= created["updated_at"]
    assert dest.delete(f"/patients/{created['id']}").status_code == 405
    assert dest.post("/patients", content=b"{not json").status_code == 400
    assert dest.post("/invoices", json={}).status_code == 405


def test_appointment_create_cancel_delete(dest: httpx.Client) -> None:
    body = {"starts_at": "2030-01-01T09:00:00+10:00", "patient_id": "101", "practitioner_id": 20,
            "appointment_type_id": "30", "business_id": "10"}  # fmt: skip
    r = dest.post("/individual_appointments", json=body)
    assert r.status_code == 201, r.text
    appt = r.json()
    assert appt["starts_at"] == "2029-12-31T23:00:00Z" and appt["ends_at"] == "2029-12-31T23:30:00Z"
    assert appt["patient_name"] == "Nat None" and appt["cancelled_at"] is None
    moved = dest.put(
        f"/individual_appointments/{appt['id']}", json={"ends_at": "2029-12-31T23:50:00Z"}
    ).json()
    assert moved["ends_at"] == "2029-12-31T23:50:00Z"
    reset = dest.put(f"/individual_appointments/{appt['id']}", json={"ends_at": None}).json()
    assert reset["ends_at"] == "2029-12-31T23:30:00Z"
    missing = dest.post("/individual_appointments", json={**body, "patient_id": 999, "business_id": None})
    assert missing.status_code == 422 and set(missing.json()["errors"]) == {"patient_id", "business_id"}
    no_reason = dest.patch(f"/individual_appointments/{appt['id']}/cancel", json={})
    assert no_reason.status_code == 422 and "cancellation_reason" in no_reason.json()["errors"]
    ok = dest.patch(f"/individual_appointments/{appt['id']}/cancel", json={"cancellation_reason": 50})
    assert ok.status_code == 204
    cancelled = dest.get(f"/individual_appointments/{appt['id']}").json()
    assert cancelled["cancelled_at"] and cancelled["cancellation_reason_description"] == "Other"
    assert int(appt["id"]) in ids_of(
        dest.get("/individual_appointments/cancelled").json(), "individual_appointments"
    )
    assert dest.delete(f"/individual_appointments/{appt['id']}").status_code == 204
    assert dest.get(f"/individual_appointments/{appt['id']}").status_code == 404
    assert int(appt["id"]) in ids_of(
        dest.get("/individual_appointments/deleted").json(), "individual_appointments"
    )


def test_group_attendees_and_archive(dest: httpx.Client) -> None:
    group = dest.post("/group_appointments", json={"starts_at": "2020-01-01T00:00:00Z", "practitioner_id": 20,
                                                   "appointment_type_id": 31, "business_id": 10}).json()  # fmt: skip
    assert group["max_attendees"] == 2 and group["patient_ids"] == []
    first = dest.post("/attendees", json={"booking_id": group["id"], "patient_id": 100})
    assert first.status_code == 201
    dest.post("/attendees", json={"booking_id": str(group["id"]), "patient_id": "101"})
    full = dest.post("/attendees", json={"booking_id": group["id"], "patient_id": 100})
    assert full.status_code == 422 and "booking_id" in full.json()["errors"]
    assert dest.get(f"/group_appointments/{group['id']}").json()["patient_ids"] == [100, 101]
    assert (
        dest.patch(f"/attendees/{first.json()['id']}/cancel", json={"cancellation_reason": "10"}).status_code
        == 204
    )
    assert dest.delete(f"/attendees/{first.json()['id']}").status_code == 204
    assert dest.get(f"/group_appointments/{group['id']}").json()["patient_ids"] == [101]
    assert dest.post("/patients/101/archive").status_code == 204
    assert 101 in ids_of(dest.get("/patients/archived").json(), "patients")
    back = dest.post("/patients/101/unarchive")
    assert back.status_code == 200 and back.json()["archived_at"] == ""


def test_treatment_note_author_is_the_keys_practitioner(sandbox: Sandbox, dest: httpx.Client) -> None:
    body = {"patient_id": 100, "treatment_note_template_id": 60, "practitioner_id": 999, "draft": True,
            "content": json.dumps({"sections": [{"name": "S", "questions": []}]})}  # fmt: skip
    r = dest.post("/treatment_notes", json=body)
    assert r.status_code == 201, r.text
    note = r.json()
    assert note["practitioner"]["links"]["self"].endswith("/practitioners/20")
    assert note["author_name"] == "Dana Dest" and note["title"] == "Standard"
    assert note["content"] == {"sections": [{"name": "S", "questions": []}]}
    with client(sandbox, "destination_admin_not_practitioner") as other:
        refused = other.post("/treatment_notes", json=body)
    assert refused.status_code == 422 and "practitioner" in refused.json()["errors"]


def test_reminders_recorded_only_for_messaging_patients(sandbox: Sandbox, dest: httpx.Client) -> None:
    def book(patient: int, start: str) -> int:
        body = {"starts_at": start, "patient_id": patient, "practitioner_id": 20, "appointment_type_id": 30,
                "business_id": 10}  # fmt: skip
        r = dest.post("/individual_appointments", json=body)
        assert r.status_code == 201
        return int(r.json()["id"])

    sms = book(100, "2031-06-01T00:00:00Z")
    silent = book(101, "2031-06-02T00:00:00Z")
    past = book(100, "2001-06-01T00:00:00Z")
    group = dest.post("/group_appointments", json={"starts_at": "2031-07-01T00:00:00Z", "practitioner_id": 20,
                                                   "appointment_type_id": 31, "business_id": 10}).json()  # fmt: skip
    joined = dest.post("/attendees", json={"booking_id": group["id"], "patient_id": 100}).json()
    quiet = dest.post("/attendees", json={"booking_id": group["id"], "patient_id": 101}).json()
    reminders = httpx.get(f"{sandbox.origin}/_sandbox/reminders").json()["Fixture Destination"]
    recorded = {r["id"] for r in reminders}
    assert sms in recorded and silent not in recorded and past not in recorded
    assert joined["id"] in recorded and quiet["id"] not in recorded
    entry = next(r for r in reminders if r["id"] == sms)
    assert entry["reminder_type"] == "SMS" and entry["resource"] == "individual_appointments"


def test_attachment_upload_flow(sandbox: Sandbox, src: httpx.Client) -> None:
    presign = src.get("/patients/1001/attachment_presigned_post").json()
    assert presign["fields"]["key"].endswith("${filename}")
    s3 = httpx.post(
        presign["url"], data=presign["fields"], files={"file": ("notes.txt", b"hello", "text/plain")}
    )
    assert s3.status_code == 201
    key = s3.text.split("<Key>")[1].split("</Key>")[0]
    created = src.post("/patient_attachments", json={"patient_id": 1001, "upload_url": f"{presign['url']}/{key}",
                                                     "description": "letter"})  # fmt: skip
    assert created.status_code == 201
    assert created.json()["processing_completed"] is False and created.json()["filename"] is None
    done = src.get(created.headers["location"]).json()
    assert done["processing_completed"] is True and (done["filename"], done["size"]) == ("notes.txt", 5)
    content = src.get(done["content"]["links"]["self"])
    assert content.content == b"hello" and content.headers["content-type"] == "text/plain"
    generated = src.get("/patient_attachments/12000/content")
    assert len(generated.content) == 1000
    assert src.get("/patient_attachments/12000/content").content == generated.content
    again = src.post(
        "/patient_attachments", json={"patient_id": 1001, "upload_url": f"{presign['url']}/{key}"}
    )
    assert again.status_code == 422  # the upload was consumed


# -- rate limit and faults -----------------------------------------------------------


def test_rate_limit_per_user_with_absolute_reset() -> None:
    accounts = fixture_accounts()
    src_key = accounts[0].keys[0]
    # a second key of the same user shares the budget
    accounts[0].keys.append(
        KeySeed("source_second_key", make_key(98, "x", "au2"), src_key.user_id, True, True)
    )
    with Sandbox(accounts=accounts, rate_limit=3, rate_window=2) as sb:
        with client(sb) as a, client(sb, "source_second_key", shard="au2") as b:
            window = math.floor(time.time() / 2)
            if time.time() - window * 2 > 1.5:  # too close to a window edge: wait for the next
                time.sleep(2 - (time.time() - window * 2) + 0.05)
            statuses = [a.get("/user").status_code, b.get("/user").status_code, a.get("/user").status_code]
            limited = b.get("/user")
            again = a.get("/user")
            other_user = httpx.get(
                f"{sb.base_url('au2')}/user", auth=(sb.key("source_non_admin"), ""), headers=UA
            )
        assert statuses == [200, 200, 200]
        assert limited.status_code == 429 and again.status_code == 429
        reset = int(limited.headers["x-ratelimit-reset"])
        assert reset % 2 == 0 and 0 < reset - time.time() <= 2
        assert other_user.status_code == 200
        time.sleep(max(0.0, reset - time.time()) + 0.05)
        with client(sb) as a:
            assert [a.get("/user").status_code for _ in range(3)] == [200, 200, 200]  # 429s did not count
        stats = httpx.get(f"{sb.origin}/_sandbox/stats").json()
        assert stats["accounts"]["Fixture Source"]["rate_limited"] == 2


@pytest.mark.parametrize("kind", ["502", "503", "stall", "drop", "truncate"])
def test_each_fault_kind_is_seen_by_the_client(kind: str) -> None:
    with Sandbox(accounts=fixture_accounts(), rate_limit=0, faults=1.0, fault_kinds=(kind,), stall=1.0) as sb:
        with client(sb, timeout=0.4) as c:
            if kind in ("502", "503"):
                assert c.get("/patients").status_code == int(kind)
            elif kind == "stall":
                with pytest.raises(httpx.ReadTimeout):
                    c.get("/patients")
            else:
                with pytest.raises(httpx.RemoteProtocolError):
                    c.get("/patients")
                with pytest.raises(httpx.RemoteProtocolError):
                    c.patch("/individual_appointments/5000/cancel", json={"cancellation_reason": 10})  # 204
        if kind == "stall":
            with client(sb, timeout=5) as slow:
                started = time.monotonic()
                assert slow.get("/patients").status_code == 200
                assert time.monotonic() - started >= 1.0
        stats = httpx.get(f"{sb.origin}/_sandbox/stats").json()  # never faulted itself
        assert stats["accounts"]["Fixture Source"]["faults"][kind] >= 1


def test_faults_are_a_deterministic_fraction() -> None:
    def statuses() -> list[int]:
        options: dict[str, Any] = {"rate_limit": 0, "faults": 0.3, "fault_kinds": ("503",), "seed": 7}
        with Sandbox(accounts=fixture_accounts(), **options) as sb, client(sb) as c:
            return [c.get("/user").status_code for _ in range(60)]

    first, second = statuses(), statuses()
    assert first == second and 5 < first.count(503) < 35


def test_stats_count_requests_and_writes_per_key(sandbox: Sandbox) -> None:
    httpx.post(f"{sandbox.origin}/_sandbox/reset_stats")
    with client(sandbox, "source_non_admin") as c:
        for _ in range(3):
            c.get("/user")
        c.put("/patients/1001", json={"notes": "x"})
    stats = httpx.get(f"{sandbox.origin}/_sandbox/stats").json()
    tally = next(v for v in stats["keys"].values() if v["role"] == "source_non_admin")
    assert (tally["requests"], tally["writes"]) == (4, 1) and stats["total_requests"] == 4
    assert stats["accounts"]["Fixture Source"]["writes"] == 1
    assert httpx.get(f"{sandbox.origin}/_sandbox/health").json()["ok"] is True


def test_a_held_create_is_applied_though_its_answer_never_comes() -> None:
    with (
        Sandbox(accounts=fixture_accounts(), rate_limit=0) as sb,
        client(sb, "destination", timeout=0.5) as c,
    ):
        held = httpx.post(f"{sb.origin}/_sandbox/hold_creates", json={"count": 1, "seconds": 3})
        assert held.json() == {"count": 1, "seconds": 3.0}
        assert c.get("/patients").status_code == 200  # reads are never held
        with pytest.raises(httpx.ReadTimeout):
            c.post("/patients", json={"first_name": "Held", "last_name": "Answer"})
        made = c.get("/patients", params=q("last_name:=Answer")).json()["patients"]
        assert [p["first_name"] for p in made] == ["Held"]  # created, though the client never heard
        assert c.post("/patients", json={"first_name": "Next", "last_name": "One"}).status_code == 201
        stats = httpx.get(f"{sb.origin}/_sandbox/stats").json()
        assert stats["accounts"]["Fixture Destination"]["faults"] == {"hold": 1}
        bad = httpx.post(f"{sb.origin}/_sandbox/hold_creates", json={"count": -1, "seconds": 1})
        assert bad.status_code == 400


def test_latency_is_added_to_api_responses() -> None:
    with Sandbox(accounts=fixture_accounts(), rate_limit=0, latency_ms=300) as sb, client(sb) as c:
        c.get("/user")  # connection set-up out of the way
        started = time.monotonic()
        assert c.get("/user").status_code == 200
        assert time.monotonic() - started >= 0.3
        started = time.monotonic()
        httpx.get(f"{sb.origin}/_sandbox/health")
        assert time.monotonic() - started < 0.3  # test endpoints are not slowed


# -- the generated clinics, in a subprocess --------------------------------------------


def test_subprocess_serves_the_generated_clinics() -> None:
    pytest.importorskip("migrator.sandbox.data")
    proc, info = start_subprocess(size="tiny", rate_limit=0)
    try:
        assert info["url_template"].endswith("/{shard}/v1")
        roles = {a["role"] for a in info["accounts"]}
        assert {"source", "destination"} <= roles
        for entry in info["accounts"]:
            assert entry["user"] and entry["key"].endswith("-" + entry["shard"])
        for entry in info["accounts"]:
            if entry["role"] not in ("source", "destination"):
                continue
            totals = info["totals"][entry["name"]]
            base = info["url_template"].replace("{shard}", entry["shard"])
            with httpx.Client(base_url=base, auth=(entry["key"], ""), headers=UA, timeout=10) as c:
                assert c.get("/user").json()["first_name"] in entry["user"]
                for name, expected in totals.items():
                    r = c.get(f"/{name}", params={"per_page": 1})
                    assert r.status_code == 200, (name, r.text)
                    key = name.split("/")[0]
                    assert r.json()["total_entries"] == expected, name
                    assert key in r.json()
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
