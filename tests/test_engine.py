"""The migration engine end to end: the demo sandbox as a real server, into a real local store."""

from __future__ import annotations

import dataclasses
import gc
import inspect
import json
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from migrator.cliniko.client import ClientConfig, ClinikoClient, Identity
from migrator.destinations.local import LocalStore
from migrator.engine import Engine, RunResult, RunStopped, _ReferencedItems
from migrator.ledger import CommitGroup, Item, Ledger
from migrator.mapping import build_mapping, to_rows
from migrator.plan import MappingRow, Plan, Scope
from migrator.preview import list_key
from migrator.sandbox import Sandbox
from migrator.setup import copy_clinic_setup
from migrator.workflow import make_plan, source_account_of
from tests.conftest import interrupt_at


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(size="demo", seed=1, rate_limit=0) as running:
        yield running


def client_for(sandbox: Sandbox, role: str = "source") -> ClinikoClient:
    return ClinikoClient(
        sandbox.key(role),
        config=ClientConfig(url_template=sandbox.url_template, requests_per_minute=0, concurrency=4),
    )


@dataclass
class Env:
    sandbox: Sandbox
    workspace: Path
    ledger: Ledger
    store: LocalStore
    source: ClinikoClient

    def mapping(self, **overrides: str) -> list[MappingRow]:
        """Auto-matched rows, with former practitioners sent to "Former practitioner" unless overridden."""
        rows = to_rows(build_mapping(self.source, self.store.reference, can_create=True))
        out = []
        for row in rows:
            action = overrides.get(row.source_name)
            if action is None and row.action == "unresolved":
                action = "former" if row.entity == "practitioners" else "create"
            out.append(row.model_copy(update={"action": action}) if action else row)
        return out

    def plan(self, scope: str = "all", mappings: list[MappingRow] | None = None, **kw: Any) -> Plan:
        return Plan(
            source_account="Harbourside Physio",
            source_shard="au2",
            destination=self.store.describe(),
            scope=Scope.parse(scope),
            mappings=mappings if mappings is not None else self.mapping(),
            **kw,
        )

    def run(self, plan: Plan, batch_id: str | None = None) -> RunResult:
        return Engine(plan, self.source, self.store, self.ledger).run(batch_id)

    def rows(self, entity: str) -> list[sqlite3.Row]:
        self.ledger.conn.row_factory = sqlite3.Row
        try:
            return list(self.ledger.conn.execute(f"SELECT * FROM clinic.{entity}"))
        finally:
            self.ledger.conn.row_factory = None


@contextmanager
def env_of(sandbox: Sandbox, tmp_path: Path) -> Iterator[Env]:
    """A fresh workspace and store, set up from the sandbox's destination, and a client of its source."""
    ledger = Ledger(tmp_path / "workspace")
    store = LocalStore(tmp_path / "clinic.db", ledger)
    with client_for(sandbox, "destination") as dest:
        copy_clinic_setup(store, dest)
    with client_for(sandbox) as source:
        yield Env(sandbox, tmp_path / "workspace", ledger, store, source)


@pytest.fixture
def env(sandbox: Sandbox, tmp_path: Path) -> Iterator[Env]:
    with env_of(sandbox, tmp_path) as made:
        yield made


def source_totals(sandbox: Sandbox) -> dict[str, int]:
    return sandbox.info["totals"]["Harbourside Physio"]


def test_full_run_accounts_for_every_record(env: Env) -> None:
    result = env.run(env.plan())
    totals = source_totals(env.sandbox)
    for entity, row in result.entities.items():
        assert row["in_scope"] == row["created"] + row["linked"] + row["already_present"] + row["skipped"], (
            entity
        )
    # Every record the source lists is in scope (archived patients, former practitioners included).
    assert result.entities["patients"]["in_scope"] == totals["patients"] + totals["patients/archived"]
    assert (
        result.entities["practitioners"]["in_scope"]
        == totals["practitioners"] + totals["practitioners/inactive"]
    )
    for entity in (
        "individual_appointments",
        "treatment_notes",
        "invoices",
        "invoice_items",
        "attendees",
        "medical_alerts",
    ):
        assert result.entities[entity]["in_scope"] == totals[list_key(entity, None)], entity
    # What the ledger says was created is exactly what the store holds from this batch.
    for entity, row in result.entities.items():
        from_batch = [r for r in env.rows(entity) if r["batch_id"] == result.batch_id]
        assert len(from_batch) == row["created"], entity
    # The practitioners the clinic set up were mapped, not duplicated; formers went to one generic record.
    practitioners = env.rows("practitioners")
    assert (
        sum(
            1
            for p in practitioners
            if p["source_id"] is None and (p["first_name"], p["last_name"]) == ("Former", "practitioner")
        )
        == 1
    )
    assert result.entities["practitioners"]["linked"] >= 5
    # Deleted source records never come across.
    assert len(env.rows("individual_appointments")) == result.entities["individual_appointments"]["created"]
    batch = env.ledger.batch(result.batch_id)
    assert batch.status == "completed"


def test_appointments_keep_their_people_and_are_flagged_imported(env: Env) -> None:
    result = env.run(env.plan(include=["patients", "individual_appointments"]))
    assert result.entities["individual_appointments"]["skipped"] == 0
    by_id = {r["id"]: r for r in env.rows("patients")}
    with client_for(env.sandbox) as source:
        raw = next(iter(source.pages("individual_appointments"))).records[0]
    row = next(r for r in env.rows("individual_appointments") if r["source_id"] == str(raw["id"]))
    patient = by_id[row["patient_id"]]
    assert patient["source_id"] == raw["patient"]["links"]["self"].rsplit("/", 1)[-1]
    assert row["imported"] == 1 and row["notifications_suppressed"] == 1
    assert row["starts_at"].startswith(raw["starts_at"][:16])


def test_a_second_run_of_the_same_plan_creates_nothing(env: Env) -> None:
    plan = env.plan(include=["patients", "individual_appointments", "invoices", "invoice_items"])
    first = env.run(plan)
    counts_before = {e: len(env.rows(e)) for e in first.entities}
    second = env.run(plan)
    assert second.batch_id != first.batch_id
    for entity, row in second.entities.items():
        assert row["created"] == 0, entity
        assert row["in_scope"] == first.entities[entity]["in_scope"], entity
    assert second.entities["patients"]["already_present"] == first.entities["patients"]["created"]
    assert {e: len(env.rows(e)) for e in first.entities} == counts_before


@pytest.mark.parametrize(
    "size, seed, same_page", [("demo", 1, False), ("tiny", 3, True)], ids=["two pages", "one page"]
)
def test_two_source_patients_never_become_one_destination_patient(
    sandbox: Sandbox, tmp_path: Path, size: str, seed: int, same_page: bool
) -> None:
    """Twins at the source (same name and date of birth) and one such patient the clinic entered itself.

    One twin is linked to the clinic's patient; the other is created and flagged for review,
    whether the two come on one page (the tiny clinic) or on two (the demo clinic).
    """
    with ExitStack() as stack:
        running = (
            sandbox if size == "demo" else stack.enter_context(Sandbox(size=size, seed=seed, rate_limit=0))
        )
        env = stack.enter_context(env_of(running, tmp_path))
        (own,) = env.store.setup_reference(
            "patients",
            [{"first_name": "John", "last_name": "Brown", "date_of_birth": "1970-01-15", "data": {}}],
        )
        twins = {
            str(r["id"]): page.number
            for page in env.source.pages("patients")
            for r in page.records
            if (r["first_name"], r["last_name"], r["date_of_birth"]) == ("John", "Brown", "1970-01-15")
        }
        assert len(twins) == 2 and (len(set(twins.values())) == 1) == same_page
        result = env.run(env.plan(include=["patients"]))
        items = sorted(
            (i for i in env.ledger.items(result.batch_id, "patients") if i.source_id in twins),
            key=lambda i: i.action,
        )
        assert [(i.action, i.reason_code) for i in items] == [
            ("created", "review_ambiguous_match"),
            ("linked", "same_name_and_birth_date"),
        ]
        assert items[1].dest_id == own and items[0].dest_id != own
        assert "already linked to another source patient" in (items[0].reason or "")
        stored = [r for r in env.rows("patients") if (r["first_name"], r["last_name"]) == ("John", "Brown")]
        assert sorted(r["source_id"] or "" for r in stored if r["date_of_birth"] == "1970-01-15") == [
            "",
            items[0].source_id,
        ]
        # Running again changes nothing: the linked twin is already present, and so is the created one.
        again = env.run(env.plan(include=["patients"]))
        assert again.entities["patients"]["created"] == 0 and again.entities["patients"]["linked"] == 0


def test_a_renamed_source_account_keeps_the_name_its_batches_go_by(env: Env) -> None:
    """The clinic renames its Cliniko account between its run and its re-run (a top-up, say).

    Its records are told from others' by the name its batches go by, bound to the account's
    id, so the re-run finds everything already present: nothing is created twice, and
    nothing is linked to a copy the first run made.
    """
    identity = env.source.identity()
    assert identity.account == "Harbourside Physio" and identity.account_id
    include = ["patients", "individual_appointments", "invoices", "invoice_items"]
    rows = env.mapping()

    def plan_as(who: Identity) -> Plan:
        return make_plan(
            env.source, who, env.store, scope=Scope(), include=include, mappings=rows, ledger=env.ledger
        )

    first = env.run(plan_as(identity))
    before = {e: len(env.rows(e)) for e in include}
    renamed = plan_as(dataclasses.replace(identity, account="Harbourside Physio & Pilates"))
    assert renamed.source_account == "Harbourside Physio"
    assert renamed.source_account_id == identity.account_id
    again = env.run(renamed)
    for entity in include:
        assert again.entities[entity]["created"] == 0, entity
        assert again.entities[entity]["linked"] == 0, entity
        assert again.entities[entity]["already_present"] == first.entities[entity]["created"], entity
    assert {e: len(env.rows(e)) for e in include} == before


def test_the_name_batches_go_by_is_bound_to_the_account_id(tmp_path: Path) -> None:
    def who(name: str | None, account_id: str | None) -> Identity:
        return Identity(
            "au2", "https://api.au2.cliniko.com/v1", name, "Zoë Adams", "1", None, True, True, account_id
        )

    with Ledger(tmp_path / "workspace") as ledger:
        assert source_account_of(who("Harbourside", "7"), ledger) == "Harbourside"  # a first batch
        ledger.create_batch(
            source_account="Harbourside", destination="sqlite:x", plan={"source_account_id": "7"}
        )
        assert source_account_of(who("Harbourside Pilates", "7"), ledger) == "Harbourside"  # renamed since
        # Another account of the same name goes by its name and id, so the two never share records.
        assert source_account_of(who("Harbourside", "8"), ledger) == "Harbourside (account 8)"
        # A batch written before ids were recorded: the same name is taken to be the same account.
        ledger.create_batch(source_account="Bayside", destination="sqlite:x", plan={})
        assert source_account_of(who("Bayside", "9"), ledger) == "Bayside"
        # Without an id from Cliniko (or a ledger), the account's name, or the user's when it has none.
        assert source_account_of(who("Harbourside Pilates", None), ledger) == "Harbourside Pilates"
        assert source_account_of(who(None, None), None) == "Zoë Adams"


def test_business_filter_matches_a_hand_computation(env: Env) -> None:
    with client_for(env.sandbox) as source:
        business = next(iter(source.pages("businesses"))).records[0]
        bid = str(business["id"])
        appts = [r for p in source.pages("individual_appointments") for r in p.records]
        groups = [r for p in source.pages("group_appointments") for r in p.records]
        notes = [r for p in source.pages("treatment_notes") for r in p.records]
        invoices = [r for p in source.pages("invoices") for r in p.records]

    def link(record: dict[str, Any], rel: str) -> str | None:
        value = record.get(rel)
        return value["links"]["self"].rsplit("/", 1)[-1] if isinstance(value, dict) else None

    here = [a for a in appts if link(a, "business") == bid]
    here_groups = [g for g in groups if link(g, "business") == bid]
    expected_invoices = {str(i["id"]) for i in invoices if link(i, "business") == bid}
    seen = {link(a, "patient") for a in here} | {str(p) for g in here_groups for p in g["patient_ids"]}
    # Every invoice issued there comes with its patient, seen there at an appointment or not.
    billed = {link(i, "patient") for i in invoices if link(i, "business") == bid}
    patients = seen | billed
    expected_notes = {str(n["id"]) for n in notes if link(n, "patient") in patients}

    result = env.run(env.plan(f"business:{bid}"))
    items = {e: {i.source_id for i in env.ledger.items(result.batch_id, e)} for e in result.entities}
    assert items["individual_appointments"] == {str(a["id"]) for a in here}
    assert items["group_appointments"] == {str(g["id"]) for g in here_groups}
    assert {
        i.source_id for i in env.ledger.items(result.batch_id, "patients") if i.action != "skipped"
    } == patients
    assert items["treatment_notes"] == expected_notes  # all notes of those patients, wherever written
    invoiced = {i.source_id: i.action for i in env.ledger.items(result.batch_id, "invoices")}
    assert invoiced.keys() == expected_invoices and "skipped" not in invoiced.values()
    assert billed - seen  # the demo clinic has such patients: the rule is exercised
    assert 0 < len(patients) < source_totals(env.sandbox)["patients"]
    # A scope costs far fewer requests than reading everything.
    assert result.requests < 120
    assert not (env.workspace / "staging").exists()  # what the run staged goes with it, folder and all


def test_widening_the_scope_leaves_the_earlier_batch_as_it_was_and_both_deletable(env: Env) -> None:
    """A business batch, then all data: the first batch's notes keep the links they came with.

    Its notes whose appointment was at another business came without one. The all-data
    batch brings those appointments, but does not link the earlier notes to them (the source
    did not change them): otherwise each batch would rely on the other, and neither could be
    deleted.
    """
    from migrator.batches import delete_batch, deletion_plan

    with client_for(env.sandbox) as source:
        bid = str(next(iter(source.pages("businesses"))).records[0]["id"])
    mapping = env.mapping()
    narrow = env.run(env.plan(f"business:{bid}", mapping))
    unlinked = {  # notes with an appointment at the source, but none in this batch's scope
        r["source_id"]
        for r in env.rows("treatment_notes")
        if r["booking_id"] is None and json.loads(r["data"]).get("booking_id") is not None
    }
    wide = env.run(env.plan("all", mapping))

    notes = {i.source_id: i for i in env.ledger.items(wide.batch_id, "treatment_notes")}
    earlier = {i.source_id for i in env.ledger.items(narrow.batch_id, "treatment_notes")}
    assert {(notes[s].action, notes[s].reason_code) for s in earlier} == {
        ("already_present", "earlier_batch")
    }
    assert wide.entities["individual_appointments"]["created"] > 0
    stored = {r["source_id"]: r["booking_id"] for r in env.rows("treatment_notes")}
    assert unlinked and all(stored[s] is None for s in unlinked)

    assert deletion_plan(env.ledger, env.store, wide.batch_id).blocker is None  # the later batch goes first
    assert deletion_plan(env.ledger, env.store, narrow.batch_id).blocker is not None  # it uses what this made
    delete_batch(env.ledger, env.store, wide.batch_id)
    delete_batch(env.ledger, env.store, narrow.batch_id)
    for entity in ("patients", "treatment_notes", "individual_appointments", "invoices"):
        assert not [r for r in env.rows(entity) if r["batch_id"] is not None], entity


def test_practitioner_filter_matches_a_hand_computation(env: Env) -> None:
    with client_for(env.sandbox) as source:
        practitioner = next(iter(source.pages("practitioners"))).records[1]
        pid = str(practitioner["id"])
        appts = [r for p in source.pages("individual_appointments") for r in p.records]
        notes = [r for p in source.pages("treatment_notes") for r in p.records]
        groups = [r for p in source.pages("group_appointments") for r in p.records]
        invoices = [r for p in source.pages("invoices") for r in p.records]

    def link(record: dict[str, Any], rel: str) -> str | None:
        value = record.get(rel)
        return value["links"]["self"].rsplit("/", 1)[-1] if isinstance(value, dict) else None

    mine = [a for a in appts if link(a, "practitioner") == pid]
    classes = [g for g in groups if link(g, "practitioner") == pid]
    written = [n for n in notes if link(n, "practitioner") == pid]
    billed = [i for i in invoices if link(i, "practitioner") == pid]
    seen = {link(a, "patient") for a in mine} | {str(p) for g in classes for p in g["patient_ids"]}
    # Their patients: those they saw, wrote notes about or invoiced; every note and invoice comes across.
    patients = seen | {link(n, "patient") for n in written} | {link(i, "patient") for i in billed}
    result = env.run(env.plan(f"practitioner:{pid}"))
    items = {
        e: {i.source_id: i.action for i in env.ledger.items(result.batch_id, e)} for e in result.entities
    }
    assert items["individual_appointments"].keys() == {str(a["id"]) for a in mine}
    assert items["treatment_notes"].keys() == {str(n["id"]) for n in written}
    assert items["invoices"].keys() == {str(i["id"]) for i in billed}
    assert {sid for sid, action in items["patients"].items() if action != "skipped"} == patients
    assert patients - seen  # the demo clinic has such patients: the rule is exercised
    for entity in ("treatment_notes", "invoices"):
        assert set(items[entity].values()) == {"created"}, entity


def test_mapping_actions(env: Env) -> None:
    rows = env.mapping()
    practitioners = [r for r in rows if r.entity == "practitioners"]
    excluded = next(r for r in practitioners if r.action == "map")
    rows = [
        r.model_copy(update={"action": "exclude", "target_id": None}) if r is excluded else r for r in rows
    ]
    result = env.run(env.plan(mappings=rows, include=["patients", "individual_appointments"]))
    skipped = [
        i for i in env.ledger.items(result.batch_id, "individual_appointments") if i.action == "skipped"
    ]
    assert skipped and all(i.reason_code == "practitioner_excluded" for i in skipped)
    assert {i.reason for i in skipped} == {
        f"Its practitioner {excluded.source_name} ({excluded.source_id}) was skipped (practitioner_excluded)."
    }
    with client_for(env.sandbox) as source:
        theirs = source.count("individual_appointments", [])  # all
        assert len(skipped) < theirs
    practitioner_items = {i.source_id: i for i in env.ledger.items(result.batch_id, "practitioners")}
    assert practitioner_items[excluded.source_id].action == "skipped"
    formers = [r for r in rows if r.action == "former"]
    assert formers and all(practitioner_items[r.source_id].action == "linked" for r in formers)
    creates = [r for r in rows if r.action == "create"]
    for row in creates:
        assert (
            practitioner_items.get(row.source_id) is None
            or practitioner_items[row.source_id].action == "created"
        )


def test_unresolved_mapping_refuses_to_start(env: Env) -> None:
    from migrator.errors import MappingError

    rows = to_rows(build_mapping(env.source, env.store.reference, can_create=True))
    assert any(r.action == "unresolved" for r in rows)
    with pytest.raises(MappingError, match="unresolved"):
        env.run(env.plan(mappings=rows))
    assert env.ledger.batches() == []


def test_a_mapping_to_a_record_the_destination_lacks_refuses_to_start(env: Env) -> None:
    """A hand-edited target id, or a record deleted since: one sentence before any batch, not a failure part-way."""
    from migrator.errors import MappingError

    rows = env.mapping()
    mapped = next(r for r in rows if r.entity == "practitioners" and r.action == "map")
    rows = [r.model_copy(update={"target_id": "999"}) if r is mapped else r for r in rows]
    with pytest.raises(MappingError) as refused:
        env.run(env.plan(mappings=rows))
    assert str(refused.value) == (
        f"The mapping does not fit the destination: Practitioners {mapped.source_name!r} (source id "
        f"{mapped.source_id}) points at destination id 999, which does not exist among the destination's "
        "practitioners. Change that row (on the Mapping page, in the mapping file or in the notebook's table), then "
        "run again."
    )
    assert env.ledger.batches() == [] and env.rows("patients") == []
    # Several such rows: the first is named, and how many more there are, after it.
    rows = [r.model_copy(update={"target_id": "999"}) if r.action == "map" else r for r in rows]
    with pytest.raises(MappingError) as refused:
        env.run(env.plan(mappings=rows))
    others = sum(r.action == "map" for r in rows) - 1
    assert others > 0
    said = str(refused.value)
    assert said.startswith("The mapping does not fit the destination: ")
    assert f" (and {others} more rows). Change those rows (on the Mapping page" in said

    # Resuming is checked too: a business the batch was mapped to has since gone from the store.
    plan = env.plan(include=["patients"])
    target = next(r for r in plan.mappings if r.entity == "businesses" and r.action == "map")
    first = env.run(plan)
    env.ledger.conn.execute("DELETE FROM clinic.businesses WHERE id = ?", (int(target.target_id),))
    with pytest.raises(MappingError, match=f"points at destination id {target.target_id}, which does not"):
        env.run(plan, first.batch_id)


def test_items_are_one_per_record(env: Env) -> None:
    result = env.run(env.plan(include=["patients", "medical_alerts"]))
    keys = Counter(
        (i.entity, i.source_id) for e in result.entities for i in env.ledger.items(result.batch_id, e)
    )
    assert max(keys.values()) == 1
    assert json.loads(json.dumps(result.as_dict()))["batch_id"] == result.batch_id


def test_bad_records_are_skipped_with_their_reason_and_the_run_goes_on(tmp_path: Path) -> None:
    from migrator.sandbox.data import build_accounts

    source, destination = build_accounts("tiny", seed=4)
    clean_records = source.records
    broken: dict[str, str] = {}

    def corrupted() -> Iterator[tuple[str, dict[str, Any]]]:
        for entity, record in clean_records():
            if (
                entity == "individual_appointments"
                and "individual_appointments" not in broken
                and not record.get("deleted_at")
            ):
                record = {**record, "starts_at": "next Tuesday"}
                broken[entity] = str(record["id"])
            elif (
                entity == "patients"
                and "patients" not in broken
                and not record.get("deleted_at")
                and not record.get("archived_at")
            ):
                record = {**record, "created_at": "yesterday"}
                broken[entity] = str(record["id"])
            yield entity, record

    source.records = corrupted
    with Sandbox(accounts=[source, destination], rate_limit=0) as running:
        ledger = Ledger(tmp_path / "workspace")
        store = LocalStore(tmp_path / "clinic.db", ledger)
        with client_for(running) as client:
            env = Env(running, tmp_path / "workspace", ledger, store, client)
            result = env.run(env.plan(include=["patients", "individual_appointments"]))
    skipped = {(i.entity, i.source_id): i for i in ledger.items(result.batch_id, action="skipped")}
    appointment = skipped[("individual_appointments", broken["individual_appointments"])]
    assert appointment.reason_code == "invalid"
    assert appointment.reason.startswith("Failed validation on field starts_at")
    patient = skipped[("patients", broken["patients"])]
    assert patient.reason_code == "invalid" and "created_at" in patient.reason
    # The patient's own appointments are skipped because of it, with that reason; everything else came across.
    theirs = [
        i
        for i in skipped.values()
        if i.entity == "individual_appointments" and i.reason_code == "patient_skipped"
    ]
    assert all(broken["patients"] in i.reason for i in theirs)
    row = result.entities["individual_appointments"]
    assert row["created"] == row["in_scope"] - row["skipped"] > 50


def test_archived_patients_can_be_left_out(env: Env) -> None:
    result = env.run(env.plan(include=["patients"], include_archived_patients=False))
    totals = source_totals(env.sandbox)
    assert result.entities["patients"]["in_scope"] == totals["patients"]
    assert all(r["archived_at"] is None for r in env.rows("patients"))


def test_reassigning_a_former_practitioner(env: Env) -> None:
    rows = env.mapping()
    target = next(r for r in rows if r.entity == "practitioners" and r.action == "map")
    former = next(r for r in rows if r.entity == "practitioners" and r.action == "former")
    rows = [
        r.model_copy(update={"action": "reassign", "target_id": target.target_id}) if r is former else r
        for r in rows
    ]
    result = env.run(env.plan(mappings=rows, include=["patients", "individual_appointments"]))
    item = env.ledger.item(result.batch_id, "practitioners", former.source_id)
    assert (item.action, item.dest_id) == ("linked", target.target_id)
    with client_for(env.sandbox) as source:
        theirs = {
            str(r["id"])
            for p in source.pages("individual_appointments")
            for r in p.records
            if r["practitioner"]["links"]["self"].endswith("/" + former.source_id)
        }
    assert theirs
    moved = [r for r in env.rows("individual_appointments") if r["source_id"] in theirs]
    assert len(moved) == len(theirs) and {r["practitioner_id"] for r in moved} == {int(target.target_id)}


def test_excluding_a_practitioner_an_earlier_batch_brought_flags_the_copies_still_there(env: Env) -> None:
    """Former, then exclude: the new batch skips the appointments, and says the old copies remain.

    A first batch brings a former practitioner's appointments under "Former practitioner"
    (it may as well have failed part-way); a new plan excludes that practitioner. The new
    batch skips them as asked, and its reconciliation still balances, but the store holds
    the first batch's copies: its flagged list names each, until that batch is deleted.
    """
    from migrator.batches import delete_batch, deletion_plan
    from migrator.ledger import KEPT_FROM_EARLIER
    from migrator.plan import records_of
    from migrator.reconcile import flagged

    include = ["patients", "individual_appointments", "invoices"]
    rows = env.mapping()
    former = next(r for r in rows if r.entity == "practitioners" and r.action == "former")
    first = env.run(env.plan(mappings=rows, include=include))
    invoices_before = {r["source_id"]: dict(r) for r in env.rows("invoices")}
    brought = {
        i.source_id: i.dest_id
        for i in env.ledger.items(first.batch_id, "individual_appointments")
        if i.action == "created"
    }
    excluded = [r.model_copy(update={"action": "exclude"}) if r is former else r for r in rows]
    second = env.run(env.plan(mappings=excluded, include=include))

    skipped = {
        i.source_id
        for i in env.ledger.items(second.batch_id, "individual_appointments")
        if i.reason_code == "practitioner_excluded"
    }
    assert skipped and skipped <= set(brought)
    marked = flagged(env.ledger, second.batch_id).filter(pl.col("reason_code") == KEPT_FROM_EARLIER)
    assert marked.height == len(skipped)
    assert dict(zip(marked["source_id"], marked["dest_id"], strict=True)) == {s: brought[s] for s in skipped}
    assert set(marked["action"]) == {"skipped"}
    assert set(marked["entity"]) == {"individual_appointments"}
    assert marked["reason"][0].startswith(
        f"This batch skipped it (practitioner_excluded), but the earlier batch {first.batch_id} brought it"
    )
    assert flagged(env.ledger, first.batch_id).filter(pl.col("reason_code") == KEPT_FROM_EARLIER).is_empty()
    # The practitioner's invoices keep their links to the copies still there: Cliniko's records
    # have not changed, so they are not rewritten (nor said to be).
    theirs = {
        sid for sid, r in invoices_before.items() if r["practitioner_id"] is not None and r["appointment_id"]
    }
    kept = {
        sid for sid, r in invoices_before.items() if r["appointment_id"] in {int(d) for d in brought.values()}
    }
    assert kept and theirs
    assert {r["source_id"]: dict(r) for r in env.rows("invoices")} == invoices_before
    assert not second.updated
    # The same plan again (or a top-up of it) finds the excluded practitioner's copies through the first
    # batch, past the second's skips: nothing is rewritten.
    third = env.run(env.plan(mappings=excluded, include=include))
    assert not third.updated and not any(e["created"] for e in third.entities.values())
    assert {r["source_id"]: dict(r) for r in env.rows("invoices")} == invoices_before

    # Deleting the first batch takes what the second found already present: its plan says so.
    present: dict[str, int] = {}
    for entity in env.ledger.counts(second.batch_id):
        made = {
            (i.source_id, i.dest_id)
            for i in env.ledger.items(first.batch_id, entity)
            if i.action == "created"
        }
        found = [i for i in env.ledger.items(second.batch_id, entity) if i.action == "already_present"]
        if n := sum((i.source_id, i.dest_id) in made for i in found):
            present[entity] = n
    assert present["patients"] and present["individual_appointments"]
    assert not any(e["created"] for e in second.entities.values())
    plan = deletion_plan(env.ledger, env.store, first.batch_id)
    assert list(plan.found_by_later) == [second.batch_id, third.batch_id]  # the oldest first
    assert plan.found_by_later[second.batch_id] == plan.found_by_later[third.batch_id] == present
    assert plan.as_dict()["found_present_by_later_batches"] == plan.found_by_later
    note = plan.found_by_later_note
    assert note is not None and note.startswith(
        "Later batches found some of these already present, so they did not bring them themselves (batch "
    )
    assert all(records_of(e, n) in note for e, n in present.items()) and note.count(second.batch_id) == 1
    assert note.endswith(
        "they go too, and running those batches' plans again afterwards brings them back anew."
    )
    assert deletion_plan(env.ledger, env.store, second.batch_id).found_by_later == {}

    delete_batch(env.ledger, env.store, first.batch_id)
    assert not {r["source_id"] for r in env.rows("individual_appointments")} & skipped
    assert flagged(env.ledger, second.batch_id).filter(pl.col("reason_code") == KEPT_FROM_EARLIER).is_empty()


def test_a_run_collects_garbage_less_often_and_restores_the_collector_however_it_ends(env: Env) -> None:
    before = gc.get_threshold()
    during: list[tuple[int, int, int]] = []
    stop = threading.Event()

    def watch(event: Any) -> None:
        during.append(gc.get_threshold())
        if event.stage == "patients":
            stop.set()

    with pytest.raises(RunStopped):
        Engine(env.plan(), env.source, env.store, env.ledger, progress=watch, stop=stop).run()
    assert during and all(young >= 10_000 and oldest >= 100 for young, _, oldest in during)
    assert gc.get_threshold() == before
    env.run(env.plan())  # the stopped batch, resumed to the end
    assert gc.get_threshold() == before


def test_a_resumed_batch_does_not_read_again_the_stages_it_finished(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At Cliniko's pace reading a large clinic's finished stages again would cost most of an hour."""
    plan, stop = env.plan(), threading.Event()  # the plan's mapping reads the source: not counted below

    def watch(event: Any) -> None:
        if event.stage == "individual_appointments":
            stop.set()  # the patients and everything before them are finished

    with pytest.raises(RunStopped):
        Engine(plan, env.source, env.store, env.ledger, progress=watch, stop=stop).run()
    (batch,) = env.ledger.batches()
    finished = {p.stage for p in env.ledger.progress(batch.id) if p.finished}
    assert {"practitioners", "patients"} <= finished and "individual_appointments" not in finished
    read: list[str] = []
    pages = ClinikoClient.pages

    def counted(self: ClinikoClient, resource: str, *args: Any, **kwargs: Any) -> Any:
        read.append(resource)
        return pages(self, resource, *args, **kwargs)

    monkeypatch.setattr(ClinikoClient, "pages", counted)
    events: list[Any] = []
    resumed = Engine(plan, env.source, env.store, env.ledger, progress=events.append).run(batch.id)
    assert "individual_appointments" in read and not finished & set(read)
    # The stages passed over still report, finished, with what the earlier run did.
    patients = next(e for e in events if e.stage == "patients")
    assert patients.finished and patients.done == patients.total == resumed.entities["patients"]["in_scope"]
    assert all(p.finished for p in env.ledger.progress(batch.id))
    monkeypatch.undo()
    with env_of(env.sandbox, tmp_path / "clean") as clean:
        assert resumed.entities == clean.run(clean.plan()).entities


def _line_of(function: Any, text: str) -> int:
    """The line number of the one line of ``function`` that holds ``text``."""
    lines, first = inspect.getsourcelines(function)
    (offset,) = [n for n, line in enumerate(lines) if text in line]
    return first + offset


@pytest.mark.parametrize(
    ("function", "text"),
    [
        (CommitGroup.open, "self._opened = time.monotonic()"),  # just after BEGIN
        (CommitGroup.commit, 'conn.execute("COMMIT")'),
        (CommitGroup.commit, "self.commits += 1"),  # just after COMMIT
    ],
)
def test_ctrl_c_as_pages_begin_or_commit_leaves_the_batch_stopped_and_the_run_resumable(
    env: Env, tmp_path: Path, function: Any, text: str
) -> None:
    """CI once saw a Ctrl+C leave its batch ``running``: it landed just after ``BEGIN``, and the
    ``stopped`` written next went into a transaction that never committed."""
    engine = Engine(env.plan(), env.source, env.store, env.ledger, commit_interval=0)
    sys.settrace(interrupt_at(function.__code__, _line_of(function, text), hit=20))
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.run()
    finally:
        sys.settrace(None)
    assert not env.ledger.conn.in_transaction
    with Ledger(env.workspace) as other:  # what the next command sees
        (batch,) = other.batches()
        kept = sum(counts.get("created", 0) for counts in other.counts(batch.id).values())
        assert batch.status == "stopped" and kept > 0
        assert other.audit_log(batch.id)[-1]["detail"]["interrupted"] is True
    resumed = env.run(env.plan(), batch.id)
    with env_of(env.sandbox, tmp_path / "clean") as clean:
        assert resumed.entities == clean.run(clean.plan()).entities


def test_referenced_items_are_asked_of_the_ledger_once_and_kept_within_a_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(tmp_path / "workspace")
    batch = ledger.create_batch(source_account="40117", destination="sqlite:x", plan={})
    earlier = [Item("patients", str(n), str(100 + n), "created") for n in range(3)]
    ledger.record_items(batch.id, earlier)
    asked: list[list[str]] = []
    items_for = ledger.items_for

    def counted(batch_id: str, entity: str, source_ids: list[str]) -> dict[str, Item]:
        asked.append(sorted(source_ids))
        return items_for(batch_id, entity, source_ids)

    monkeypatch.setattr(ledger, "items_for", counted)
    referenced = _ReferencedItems(ledger, batch.id, limit=3)
    # Written by an earlier run of the batch: asked once; an id the batch has not dealt with, every time.
    assert referenced.get("patients", ["0", "1", "9"]) == {"0": earlier[0], "1": earlier[1]}
    assert referenced.get("patients", ["1", "0", "9"]) == {"0": earlier[0], "1": earlier[1]}
    assert asked == [["0", "1", "9"], ["9"]]
    # What the run writes is known as written, replacing what was kept.
    skipped = Item("patients", "1", None, "skipped", "deleted_at_source", "Deleted in Cliniko.")
    referenced.remember("patients", [skipped])
    assert referenced.get("patients", ["1"]) == {"1": skipped}
    referenced.remember(
        "invoice_items", [Item("invoice_items", "5", "5", "created")]
    )  # nothing refers to them
    # Past the limit the memory starts afresh, and the ledger answers again.
    referenced.remember("practitioners", [Item("practitioners", "7", "70", "linked")] * 2)
    asked.clear()
    assert referenced.get("patients", ["2"]) == {"2": earlier[2]}
    assert asked == [["2"]]


def test_a_second_run_finds_every_mapped_practitioner_already_present(env: Env) -> None:
    """Mapped, reassigned and "Former practitioner" rows alike: the second run links nothing anew."""
    rows = env.mapping()
    actions = Counter(r.action for r in rows if r.entity == "practitioners")
    assert actions["map"] and actions["former"]
    plan = env.plan(mappings=rows, include=["patients", "individual_appointments"])
    first = env.run(plan)
    second = env.run(plan)
    practitioners = second.entities["practitioners"]
    assert practitioners["linked"] == 0 and practitioners["created"] == 0
    brought = first.entities["practitioners"]
    assert practitioners["already_present"] == brought["linked"] + brought["created"] > 0
    former = {
        i.source_id: i.dest_id
        for i in env.ledger.items(first.batch_id, "practitioners")
        if i.reason_code == "mapped_former"
    }
    again = {
        i.source_id: i for i in env.ledger.items(second.batch_id, "practitioners") if i.source_id in former
    }
    assert {s: (i.action, i.dest_id) for s, i in again.items()} == {
        s: ("already_present", d) for s, d in former.items()
    }


def test_progress_shows_each_stage_out_of_what_its_lists_hold(env: Env) -> None:
    """From its first page, a stage's progress is out of the records Cliniko listed, not the pages read so far."""
    events: dict[str, list[tuple[int, int]]] = {}
    plan = env.plan(include=["patients", "individual_appointments"])
    result = Engine(
        plan,
        env.source,
        env.store,
        env.ledger,
        progress=lambda e: events.setdefault(e.stage, []).append((e.done, e.total)),
    ).run()
    totals = source_totals(env.sandbox)
    appointments = result.entities["individual_appointments"]["in_scope"]
    assert appointments == totals["individual_appointments"] > 1000
    assert len(events["individual_appointments"]) > 10
    assert all(total == appointments for _, total in events["individual_appointments"])
    assert events["individual_appointments"][0][0] == 100
    # Patients are two lists, the active ones then the archived: the total grows when the second opens.
    assert [t for _, t in events["patients"]] == sorted(t for _, t in events["patients"])
    assert {t for _, t in events["patients"]} == {
        totals["patients"],
        totals["patients"] + totals["patients/archived"],
    }


def test_a_copy_edited_in_the_store_is_rewritten_from_cliniko_and_flagged_as_such(env: Env) -> None:
    """Cliniko did not change the invoice; the store's copy was edited. The re-run says which side moved."""
    plan = env.plan(include=["patients", "invoices"])
    first = env.run(plan)
    ((invoice, source_id, total),) = env.ledger.conn.execute(
        "SELECT id, source_id, total_amount FROM clinic.invoices ORDER BY id LIMIT 1"
    ).fetchall()
    with env.ledger.transaction():
        env.ledger.conn.execute("UPDATE clinic.invoices SET total_amount = '999.00' WHERE id = ?", (invoice,))
    again = env.run(plan)
    item = env.ledger.item(again.batch_id, "invoices", source_id)
    assert item is not None and (item.action, item.reason_code) == ("already_present", "review_rewritten")
    assert item.reason == (
        "Cliniko's record has not changed since an earlier batch brought it, but the destination's copy "
        "differs (total_amount): edited there, or a mapping changed since; rewritten from Cliniko."
    )
    assert env.ledger.conn.execute(
        "SELECT total_amount FROM clinic.invoices WHERE id = ?", (invoice,)
    ).fetchone() == (total,)
    assert env.ledger.flagged_frame(again.batch_id)["source_id"].to_list() == [source_id]
    assert again.entities["invoices"]["already_present"] == again.entities["invoices"]["in_scope"]
    # Deleting the first batch takes the invoice: the flag no longer asks for a look at it.
    from migrator.batches import delete_batch

    delete_batch(env.ledger, env.store, first.batch_id)
    assert env.ledger.flagged_frame(again.batch_id).is_empty()


def test_a_run_result_echoes_as_one_line_of_totals() -> None:
    """A notebook cell ending in ``migrator.run(...)`` shows the totals, not every entity's dict."""
    result = RunResult(
        "b1",
        {
            "patients": {
                "in_scope": 1200,
                "created": 1000,
                "linked": 150,
                "already_present": 40,
                "skipped": 10,
            },
            "invoices": {"in_scope": 30, "created": 30, "linked": 0, "already_present": 0, "skipped": 0},
        },
        requests=321,
        seconds=12.345,
        resumed=True,
        updated={"patients": 3},
    )
    assert repr(result) == (
        "RunResult('b1', entities=2, in_scope=1,230, created=1,030, linked=150, already_present=40, skipped=10, "
        "updated=3, requests=321, seconds=12.3, resumed)"
    )
