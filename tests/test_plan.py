"""The plan: scope parsing, data types and their closure, mapping-row rules, JSON, no secrets."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from migrator.errors import ConfigError, MappingError
from migrator.plan import (
    CORE_TYPES,
    DATA_TYPES,
    DEFAULT_INCLUDE,
    DEPENDS_ON,
    FINANCIAL_TYPES,
    OPTIONAL_TYPES,
    TYPE_DESCRIPTIONS,
    MappingRow,
    Plan,
    Scope,
    allowed_actions,
    close_include,
    default_include,
    parse_include,
)

# --- scope -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "ids", "canonical"),
    [
        ("all", "all", [], "all"),
        ("  ALL ", "all", [], "all"),
        ("business:514810972972521916", "business", ["514810972972521916"], "business:514810972972521916"),
        ("business:1,2", "business", ["1", "2"], "business:1,2"),
        ("Business: 1 , 2 ", "business", ["1", "2"], "business:1,2"),
        ("practitioner:7", "practitioner", ["7"], "practitioner:7"),
        ("practitioner:7,9,7", "practitioner", ["7", "9"], "practitioner:7,9"),
        ("practitioner:007", "practitioner", ["7"], "practitioner:7"),
    ],
)
def test_scope_parses_good_text(text: str, kind: str, ids: list[str], canonical: str) -> None:
    scope = Scope.parse(text)
    assert (scope.kind, scope.ids) == (kind, ids)
    assert str(scope) == canonical
    assert Scope.parse(str(scope)) == scope


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("", "The scope is empty; use 'all', 'business:ID[,ID...]' or 'practitioner:ID[,ID...]'."),
        ("business:", "The business scope names no ids; give at least one business id, as in 'business:123' or 'business:123,456'."),
        ("practitioner", "The practitioner scope names no ids; give at least one practitioner id, as in 'practitioner:123' or 'practitioner:123,456'."),
        ("clinic:1", "Unknown scope kind 'clinic'; use 'all', 'business:ID[,ID...]' or 'practitioner:ID[,ID...]'."),
        ("businesses:1", "Unknown scope kind 'businesses'; use 'all', 'business:ID[,ID...]' or 'practitioner:ID[,ID...]'."),
        ("all:1", "The 'all' scope takes no ids; write just 'all' (got 'all:1')."),
        ("business:abc", "Scope ids must be Cliniko ids (decimal digits); 'abc' is not."),
        ("business:1,x,-2", "Scope ids must be Cliniko ids (decimal digits); 'x', '-2' are not."),
        ("business:1,,2", "The business scope has an empty id in '1,,2'; separate ids with single commas."),
        ("business:1,", "The business scope has an empty id in '1,'; separate ids with single commas."),
        ("practitioner:١٢", "Scope ids must be Cliniko ids (decimal digits); '١٢' is not."),
    ],
)  # fmt: skip
def test_scope_refuses_bad_text_with_a_sentence(text: str, sentence: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Scope.parse(text)
    assert str(caught.value) == sentence


def test_scope_model_checks_ids_against_kind() -> None:
    assert Scope() == Scope.parse("all")
    with pytest.raises(ValueError, match="needs at least one business id"):
        Scope(kind="business")
    with pytest.raises(ValueError, match="takes no ids"):
        Scope(kind="all", ids=["1"])


# --- data types ------------------------------------------------------------------


def test_type_lists_follow_seed_001() -> None:
    assert set(CORE_TYPES) == {
        "patients",
        "individual_appointments",
        "group_appointments",
        "unavailable_blocks",
        "treatment_notes",
        "patient_attachments",
        "medical_alerts",
    }
    assert set(OPTIONAL_TYPES) == {
        "products",
        "billable_items",
        "appointment_types",
        "concession_types",
        "contacts",
        "treatment_note_templates",
        "taxes",
    }
    assert FINANCIAL_TYPES == ("invoices", "invoice_items")
    assert set(DATA_TYPES) == {*CORE_TYPES, *OPTIONAL_TYPES, *FINANCIAL_TYPES, "attendees"}
    assert DEFAULT_INCLUDE == DATA_TYPES
    # every type has one plain sentence for its tick-box
    assert set(TYPE_DESCRIPTIONS) == set(DATA_TYPES)
    for name, text in TYPE_DESCRIPTIONS.items():
        assert text.endswith(".") and text[0].isupper(), name
    assert "attendees" in TYPE_DESCRIPTIONS["group_appointments"]
    assert "business" in TYPE_DESCRIPTIONS["treatment_notes"]
    # dependencies only name known types
    assert all(dep in DATA_TYPES for deps in DEPENDS_ON.values() for dep in deps)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("patients", ["patients"]),
        ("individual_appointments", ["patients", "individual_appointments"]),
        ("treatment_notes, patient_attachments", ["patients", "treatment_notes", "patient_attachments"]),
        ("group_appointments", ["patients", "group_appointments", "attendees"]),
        ("attendees", ["patients", "group_appointments", "attendees"]),
        ("invoice_items", ["patients", "invoices", "invoice_items"]),
        ("invoices", ["patients", "invoices", "invoice_items"]),
        ("Products,TAXES", ["taxes", "products"]),
        ("products,products,", ["products"]),
        ("optional", list(OPTIONAL_TYPES)),
        ("all", list(DATA_TYPES)),
        ("core", [t for t in DATA_TYPES if t in CORE_TYPES or t == "attendees"]),
    ],
)
def test_include_is_parsed_and_closed_in_stage_order(text: str, expected: list[str]) -> None:
    assert parse_include(text) == expected


def test_include_refuses_unknown_and_empty_lists() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_include("patients,appointments,notes")
    assert str(caught.value).startswith(
        "Unknown data types 'appointments', 'notes'; choose from appointment_types,"
    )
    with pytest.raises(ConfigError, match="Unknown data type 'practitioners';"):
        parse_include("practitioners")
    with pytest.raises(ConfigError, match="Choose at least one data type"):
        parse_include(" , ")


def test_include_for_cliniko_has_no_financials() -> None:
    assert "invoices" not in parse_include("all", local=False)
    assert parse_include("all", local=False) == default_include(local=False)
    with pytest.raises(ConfigError) as caught:
        parse_include("patients,invoices", local=False)
    assert str(caught.value) == (
        "A Cliniko destination cannot take invoices or invoice_items: Cliniko's API cannot create financial "
        "records; choose the local store, or leave them out."
    )
    assert close_include(["medical_alerts"]) == ["patients", "medical_alerts"]


# --- mapping rows ----------------------------------------------------------------


def row(entity: str = "practitioners", action: str = "map", **kw: Any) -> MappingRow:
    data = {"entity": entity, "source_id": "7", "source_name": "Anh Trần", "action": action, **kw}
    return MappingRow.model_validate(data)


def test_mapping_row_rules() -> None:
    assert row(target_id="9").target_id == "9"
    assert row(target_id=9).target_id == "9"  # a number from an edited table
    assert row("practitioners", "former").target_id is None
    assert row("practitioners", "former", target_id="5").target_id == "5"
    assert row("practitioners", "reassign", target_id="5").action == "reassign"
    assert row("businesses", "exclude").action == "exclude"
    for entity in ("practitioners", "businesses", "appointment_types"):
        assert row(entity, "create").action == "create"
        assert row(entity, "unresolved").action == "unresolved"
    # a target means nothing for create, exclude and unresolved: cleared, not kept
    cleared = row("businesses", "exclude", target_id="3", target_name="X")
    assert (cleared.target_id, cleared.target_name) == (None, None)


@pytest.mark.parametrize(
    ("entity", "action", "kw", "message"),
    [
        (
            "practitioners",
            "map",
            {},
            "practitioners 'Anh Trần' (source id 7): the action 'map' needs a target_id",
        ),
        ("practitioners", "map", {"target_id": " "}, "the action 'map' needs a target_id"),
        ("practitioners", "reassign", {}, "the action 'reassign' needs a target_id"),
        ("businesses", "former", {}, "the action 'former' is only for practitioners"),
        (
            "appointment_types",
            "reassign",
            {"target_id": "1"},
            "the action 'reassign' is only for practitioners",
        ),
        ("appointment_types", "exclude", {}, "the action 'exclude' is only for practitioners and businesses"),
        ("patients", "map", {"target_id": "1"}, "entity"),
        ("practitioners", "keep", {}, "action"),
        ("practitioners", "create", {"api_key": "MS-secret"}, "Extra inputs are not permitted"),
    ],
)
def test_mapping_row_refuses(entity: str, action: str, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        row(entity, action, **kw)


def test_allowed_actions_depend_on_the_destination() -> None:
    assert allowed_actions("practitioners", can_create=True) == (
        "map",
        "former",
        "reassign",
        "exclude",
        "create",
        "unresolved",
    )
    assert "create" not in allowed_actions("practitioners", can_create=False)
    assert allowed_actions("businesses", can_create=False) == ("map", "exclude", "unresolved")
    assert allowed_actions("appointment_types", can_create=False) == ("map", "create", "unresolved")
    with pytest.raises(ConfigError, match="Unknown mapping entity 'patients'"):
        allowed_actions("patients", can_create=True)


# --- the plan --------------------------------------------------------------------


def rows() -> list[MappingRow]:
    return [
        MappingRow(
            entity="practitioners", source_id="1", source_name="Zoë Adams", action="map", target_id="11"
        ),
        MappingRow(entity="practitioners", source_id="4", source_name="Anh Trần", action="unresolved"),
        MappingRow(
            entity="practitioners",
            source_id="5",
            source_name="Dr Former Person",
            source_active=False,
            action="unresolved",
        ),
        MappingRow(entity="businesses", source_id="20", source_name="Coburg – North", action="unresolved"),
        MappingRow(entity="businesses", source_id="21", source_name="Richmond", action="map", target_id="31"),
        MappingRow(entity="appointment_types", source_id="40", source_name="Pilates", action="create"),
    ]


def make_plan(**kw: Any) -> Plan:
    data: dict[str, Any] = {
        "source_account": "Harbourside Physio",
        "source_shard": "au2",
        "destination": "sqlite:/tmp/clinic.db",
        "scope": Scope.parse("business:514810972972521916,514810972972521917"),
        "include": parse_include("treatment_notes,group_appointments,invoices"),
        "include_archived_patients": False,
        "mappings": rows(),
        **kw,
    }
    return Plan.model_validate(data)


def test_plan_json_round_trip() -> None:
    plan = make_plan()
    text = plan.to_json()
    assert "Anh Trần" in text and "Coburg – North" in text  # readable, not escaped
    again = Plan.from_json(text)
    assert again == plan
    assert again.scope.ids == ["514810972972521916", "514810972972521917"]
    assert again.include == ["patients", "group_appointments", "attendees", "treatment_notes", "invoices", "invoice_items"]  # fmt: skip
    assert json.loads(text)["scope"] == {
        "kind": "business",
        "ids": ["514810972972521916", "514810972972521917"],
    }
    assert plan.created_with.startswith("cliniko-migrator")
    assert plan.is_local and plan.sqlite_path == "/tmp/clinic.db"


def test_plan_defaults_and_closure() -> None:
    local = Plan(source_account="A", source_shard="au1", destination="sqlite:x.db")
    assert local.include == list(DATA_TYPES) and local.scope == Scope() and local.mappings == []
    cliniko = Plan(source_account="A", source_shard="au1", destination="cliniko")
    assert cliniko.include == default_include(local=False) and "invoices" not in cliniko.include
    # a hand-written include is closed and put in stage order
    assert make_plan(include=["treatment_notes", "medical_alerts"]).include == [
        "patients",
        "medical_alerts",
        "treatment_notes",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"destination": "postgres:x"},
            "destination: the destination must be 'sqlite:PATH' or 'cliniko[:ACCOUNT_ID]'",
        ),
        ({"destination": "sqlite:"}, "the destination must be 'sqlite:PATH' or 'cliniko[:ACCOUNT_ID]'"),
        ({"source_shard": "AU-1"}, "source_shard: the source shard must look like 'au1' or 'uk2'"),
        ({"include": ["patients", "notes"]}, "Unknown data type 'notes'"),
        ({"destination": "cliniko"}, "A Cliniko destination cannot take invoices or invoice_items"),
        (
            {"destination": "cliniko", "include": ["patients"], "mappings": [rows()[5], rows()[5]]},
            "appointment_types source id 40 has more than one mapping row",
        ),
        (
            {
                "destination": "cliniko",
                "include": ["patients"],
                "mappings": [
                    MappingRow(entity="businesses", source_id="2", source_name="B", action="create")
                ],
            },
            "a Cliniko destination cannot create businesses",
        ),
        (
            {
                "destination": "cliniko",
                "include": ["patients"],
                "mappings": [
                    MappingRow(entity="practitioners", source_id="2", source_name="P", action="former")
                ],
            },
            "cannot create the generic 'Former practitioner'",
        ),
        ({"api_key": "MS0xLXNlY3JldA-au1"}, "api_key: Extra inputs are not permitted"),
    ],
)
def test_plan_refuses_inconsistent_input(change: dict[str, Any], message: str) -> None:
    text = json.dumps({**json.loads(make_plan().to_json()), **_jsonable(change)})
    with pytest.raises(ConfigError) as caught:
        Plan.from_json(text)
    assert message in str(caught.value)
    assert str(caught.value).startswith("The plan is not valid: ") and str(caught.value).endswith(".")
    assert "MS0xLXNlY3JldA" not in str(caught.value)  # a pasted key is never echoed


def _jsonable(change: dict[str, Any]) -> dict[str, Any]:
    out = dict(change)
    if "mappings" in out:
        out["mappings"] = [r.model_dump(mode="json") for r in out["mappings"]]
    return out


def test_plan_from_json_refuses_garbage() -> None:
    with pytest.raises(ConfigError, match=r"^The plan is not valid: "):
        Plan.from_json("{not json")
    with pytest.raises(ConfigError, match="source_account: Field required"):
        Plan.from_json('{"source_shard": "au1", "destination": "cliniko"}')


def test_plan_schema_has_no_field_for_a_secret() -> None:
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            names.update(node.get("properties", {}))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(Plan.model_json_schema())
    assert {"source_account", "scope", "mappings", "target_id"} <= names  # the walk sees nested models
    secretish = re.compile(r"key|secret|token|password|credential|auth", re.IGNORECASE)
    assert [n for n in names if secretish.search(n)] == []


def test_plan_mapping_lookups() -> None:
    plan = make_plan()
    assert set(plan.mapping_for("practitioners")) == {"1", "4", "5"}
    assert plan.mapping_for("businesses")["21"].target_id == "31"
    assert [r.source_name for r in plan.unresolved()] == ["Anh Trần", "Dr Former Person", "Coburg – North"]
    with pytest.raises(ConfigError):
        plan.mapping_for("patients")


def test_require_resolved_lists_the_unresolved_rows() -> None:
    with pytest.raises(MappingError) as caught:
        make_plan().require_resolved()
    assert str(caught.value) == (
        "3 mapping rows are unresolved: practitioners Anh Trần, Dr Former Person; businesses Coburg – North. "
        "Choose an action for each before running."
    )
    one = make_plan(mappings=rows()[:2])
    with pytest.raises(MappingError, match=r"^1 mapping row is unresolved: practitioners Anh Trần\. Choose"):
        one.require_resolved()
    resolved = make_plan(mappings=[r for r in rows() if r.action != "unresolved"])
    resolved.require_resolved()  # nothing to say
    assert resolved.unresolved() == []


def test_names_and_notes_do_not_make_another_plan_but_decisions_do(tmp_path: Any) -> None:
    from migrator.ledger import Ledger
    from migrator.workflow import earlier_mapping, same_plan

    first = make_plan()
    with Ledger(tmp_path) as ledger:
        batch = ledger.create_batch(
            source_account=first.source_account,
            destination=first.destination,
            plan=json.loads(first.to_json()),
        )
        renamed = [
            r.model_copy(update={"source_name": r.source_name + " (renamed)", "note": "x"}) for r in rows()
        ]
        assert same_plan(batch, make_plan(mappings=list(reversed(renamed))))
        decided = [r.model_copy(update={"action": "exclude"}) if r.source_id == "5" else r for r in rows()]
        assert not same_plan(batch, make_plan(mappings=decided))
        assert not same_plan(batch, make_plan(include_archived_patients=True))
        # A plan that differs only in its mapping takes the batch's; another filter has none to take.
        assert earlier_mapping(ledger, make_plan(mappings=[])) == first.mappings
        assert earlier_mapping(ledger, make_plan(mappings=[], scope=Scope.parse("all"))) is None
        ledger.set_status(batch.id, "deleted")
        assert earlier_mapping(ledger, make_plan(mappings=[])) is None
