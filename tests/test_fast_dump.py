"""The fast dumper gives exactly pydantic's dump of a record, or declines: never a different record.

A migration stores ``model_dump(mode="json")`` of every record it reads, and compares it
with what an earlier batch stored, so the fast path must agree with pydantic value for
value and key for key, and must never accept a record pydantic refuses.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from migrator.cliniko.models import ClinikoRecord, fast_dumper, model_for
from migrator.cliniko.resources import RESOURCES
from migrator.preview import SOURCE_LISTS
from tests.conftest import RunningSandbox
from tests.test_models import PAYLOADS


def _pydantic(model: type[ClinikoRecord], raw: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return model.model_validate(raw).model_dump(mode="json")
    except ValidationError:
        return None


def _check(model: type[ClinikoRecord], raw: dict[str, Any]) -> bool:
    """Whether the fast path answered; fails if its answer is not pydantic's, order included."""
    dumper = fast_dumper(model)
    assert dumper is not None
    fast = dumper(raw)
    if fast is None:
        return False
    expected = _pydantic(model, raw)
    assert expected is not None, f"accepted what pydantic refuses: {raw}"
    assert list(fast.items()) == list(expected.items())
    return True


def test_every_record_of_the_demo_clinic_dumps_as_pydantic_dumps_it(demo_sandbox: RunningSandbox) -> None:
    answered: dict[str, int] = {}
    declined: dict[str, int] = {}
    with demo_sandbox.client(concurrency=4) as client:
        for name, route in SOURCE_LISTS:
            model = model_for(name)
            for page in client.pages(name, route=route):
                for raw in page.records:
                    raw = {k: v for k, v in raw.items() if k != "_route"}
                    if fast_dumper(model) is None:
                        continue
                    tally = answered if _check(model, raw) else declined
                    tally[name] = tally.get(name, 0) + 1
    # The bulk of a clinic takes the fast path: if a model change turned it off, this says so.
    for name in ("individual_appointments", "treatment_notes", "invoices", "invoice_items", "attendees"):
        assert answered.get(name, 0) > 0 and declined.get(name, 0) == 0, name
    assert sum(answered.values()) > 17_000


def test_models_with_rules_of_their_own_have_no_fast_path() -> None:
    # Nested models (phone numbers), a kept URL link, a validator of its own: pydantic's alone.
    for name in ("patients", "contacts", "patient_attachments"):
        assert fast_dumper(model_for(name)) is None, name
    from migrator.cliniko.models import DeletedPatient

    assert fast_dumper(DeletedPatient) is None


@pytest.mark.parametrize("name", sorted(n for n in RESOURCES if fast_dumper(model_for(n)) is not None))
def test_each_documented_payload_takes_the_fast_path(name: str) -> None:
    assert _check(model_for(name), json.loads(PAYLOADS[name]))


# --- awkward values: pydantic's answer, or none -------------------------------------------

_APPOINTMENT = json.loads(PAYLOADS["individual_appointments"])

_IDS = [7, "7", "007", 0, -1, True, 1.0, "", "12a", "١٢", None, 514810972972521916, 2**70]
_DATETIMES = [
    "2023-11-02T01:35:00Z",
    "2023-11-02 01:35:00Z",
    "2023-11-02t01:35:00z",
    "2023-11-02T01:35:00+10:00",
    "2023-11-02T01:35:00+00:00",
    "2023-11-02T01:35:00.5Z",
    "2023-11-02T01:35Z",
    "2023-11-02T01:35:00",
    "2023-02-30T01:00:00Z",
    "2023-11-02T24:00:00Z",
    "2023-11-02",
    "",
    None,
    0,
]
_DECIMALS = ["110.00", "-0.00", "0", "10.0", "0.000000", "0.0000001", "1e3", "007.5", "1.", ".5",
             12.5, 12, "abc", "", None, True, "99999999999999999999.99"]  # fmt: skip
_BOOLS = [True, False, "true", 1, 0, None, "", "yes"]
_INTS = [1, 0, -3, "1", 1.0, 1.5, True, 2**70, None, ""]
_TEXTS = ["text", "", " padded ", 1, None, True, ["a"], {"links": {"self": "x"}}]
_LINKS = [
    None,
    {"links": {"self": "https://api.au1.cliniko.com/v1/patients/7"}},
    {"links": {"self": "https://api.au1.cliniko.com/v1/patients/007"}},
    {"links": {"self": "https://api.au1.cliniko.com/v1/patients/7/"}},
    {"links": {"self": "https://api.au1.cliniko.com/v1/patients/7?page=1"}},
    {"links": {"self": "https://api.au1.cliniko.com/v1/patients/7#top"}},
    {"links": {"self": "https://x/v1/patients/1?next=/9"}},
    {"links": {"self": "https://api.au1.cliniko.com/v1/patients/abc"}},
    {"links": {"self": "https://api.au1.cliniko.com/v1/patients/١٢"}},
    {"links": {"self": None}},
    {"links": {"self": 7}},
    {"links": {}},
    {"links": None},
    {"links": {"self": "https://api.au1.cliniko.com/v1/patients/7"}, "name": "extra key"},
    "https://api.au1.cliniko.com/v1/patients/7",
    7,
]

_OWN_LINKS = [
    {"self": "https://api.au1.cliniko.com/v1/individual_appointments/1"},
    {"self": None},
    {},
    "x",
    None,
]


@pytest.mark.parametrize(
    ("name", "field", "values"),
    [
        ("individual_appointments", "id", _IDS),
        ("individual_appointments", "starts_at", _DATETIMES),
        ("individual_appointments", "cancelled_at", _DATETIMES),
        ("individual_appointments", "patient_arrived", _BOOLS),
        ("individual_appointments", "cancellation_reason", _INTS),
        ("individual_appointments", "notes", _TEXTS),
        ("individual_appointments", "repeat_rule", _TEXTS),
        ("individual_appointments", "patient", _LINKS),
        ("individual_appointments", "practitioner", _LINKS),
        ("individual_appointments", "links", _OWN_LINKS),
        ("invoice_items", "unit_price", _DECIMALS),
        ("invoice_items", "quantity", _INTS),
        ("group_appointments", "patient_ids", [[1, "2"], ["007"], [1.0], [True], [], None, "1"]),
    ],
)
def test_an_awkward_value_gets_pydantics_answer_or_none(name: str, field: str, values: list[Any]) -> None:
    model = model_for(name)
    base = json.loads(PAYLOADS[name])
    answered = [_check(model, {**base, field: value}) for value in values]
    assert answered[0]  # the first, usual value is served fast


def test_undeclared_fields_are_kept_in_their_order_and_navigation_dropped() -> None:
    model = model_for("individual_appointments")
    raw = {
        "zeta": 1,
        **_APPOINTMENT,
        "alpha": {"nested": [1, 2]},
        "conflicts": {"links": {"self": "https://x/v1/individual_appointments/1/conflicts"}},
        "odd": {"links": {"self": "https://x"}, "more": 1},
    }
    assert _check(model, raw)
    dumped = fast_dumper(model)(raw)  # type: ignore[misc]
    assert list(dumped)[-3:] == ["zeta", "alpha", "odd"] and "conflicts" not in dumped


def test_a_relation_id_given_directly_or_a_link_only_value_is_left_to_pydantic() -> None:
    model = model_for("individual_appointments")
    dumper = fast_dumper(model)
    assert dumper is not None
    assert dumper({**_APPOINTMENT, "patient_id": "9"}) is None
    assert dumper({**_APPOINTMENT, "links_self": "https://x/v1/individual_appointments/1"}) is None
    assert dumper({**_APPOINTMENT, "repeat_rule": {"links": {"self": "https://x"}}}) is None
    # and each of those is still read, by pydantic, as before
    assert _pydantic(model, {**_APPOINTMENT, "patient_id": "9"})["patient_id"] == "9"  # type: ignore[index]
