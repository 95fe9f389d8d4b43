"""Top-up runs: after changes at the source, exactly those changes, for a fraction of the first run's requests.

Each test has its own demo sandbox (in this process) because it changes the source: through the API where
Cliniko can be written (patients, appointments), through the sandbox's test endpoint where it cannot (invoices).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from migrator.batches import delete_batch
from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.cliniko.filters import Filter
from migrator.cliniko.resources import resource
from migrator.destinations.local import LocalStore
from migrator.engine import Engine, RunResult, RunStopped
from migrator.errors import ConfigError
from migrator.ledger import Ledger
from migrator.mapping import build_mapping, to_rows
from migrator.plan import Plan, Scope
from migrator.preview import SOURCE_LISTS
from migrator.reconcile import reconcile, updated
from migrator.sandbox import Sandbox
from migrator.setup import copy_clinic_setup
from migrator.stages import MAPPED
from migrator.workflow import run_plan, top_up_point
from tests.conftest import RunningSandbox
from tests.test_cli_engine import into_store
from tests.test_reconcile import cli
from tests.test_resume import setup_workspace

BUSINESS = "514810972972521916"  # the demo clinic's first business


@dataclass
class Env:
    sandbox: Sandbox
    ledger: Ledger
    store: LocalStore
    source: ClinikoClient
    writer: ClinikoClient  # the same account, writable: the clinic changing things in Cliniko

    def plan(self, scope: str = "all") -> Plan:
        rows = to_rows(build_mapping(self.source, self.store.reference, can_create=True))
        rows = [r.model_copy(update={"action": "former"}) if r.action == "unresolved" else r for r in rows]
        return Plan(
            source_account="Harbourside Physio",
            source_shard="au2",
            destination=self.store.describe(),
            scope=Scope.parse(scope),
            mappings=rows,
        )

    def run(self, plan: Plan, *, top_up: bool = False) -> RunResult:
        return run_plan(plan, self.source, self.store, self.ledger, top_up=top_up)

    def put_record(self, resource_name: str, record: dict[str, Any]) -> dict[str, Any]:
        """Change the source as the clinic would in Cliniko's own screens (what the API cannot write)."""
        answer = httpx.post(
            f"{self.sandbox.origin}/_sandbox/records",
            json={"account": "source", "resource": resource_name, "record": record},
            timeout=10,
        )
        answer.raise_for_status()
        return answer.json()

    def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with self.ledger.lock:
            return self.ledger.conn.execute(sql, params).fetchall()

    def table_counts(self) -> dict[str, int]:
        return {e: self.store.count(e) for e in self.store.INSERT_ORDER}

    def items(self, batch_id: str) -> dict[tuple[str, str], tuple[str, str | None]]:
        return {(i.entity, i.source_id): (i.action, i.reason_code) for i in self.ledger.items(batch_id)}

    def dest_id(self, entity: str, source_id: str) -> int:
        return self.rows(f"SELECT id FROM clinic.{entity} WHERE source_id = ?", source_id)[0][0]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with Sandbox(size="demo", seed=1, rate_limit=0) as sandbox:
        config = ClientConfig(url_template=sandbox.url_template, requests_per_minute=0)
        ledger = Ledger(tmp_path / "workspace")
        store = LocalStore(tmp_path / "clinic.db", ledger)
        with ClinikoClient(sandbox.key("destination"), config=config) as dest:
            copy_clinic_setup(store, dest)
        with (
            ClinikoClient(sandbox.key("source"), config=config) as source,
            ClinikoClient(sandbox.key("source"), config=config, writable=True) as writer,
        ):
            yield Env(sandbox, ledger, store, source, writer)
        ledger.close()


def link(record: dict[str, Any], rel: str) -> str:
    return str(record[rel]["links"]["self"]).rsplit("/", 1)[-1]


def latest_appointments(env: Env, n: int) -> list[dict[str, Any]]:
    page = next(iter(env.source.pages("individual_appointments", sort="starts_at", order="desc")))
    return [a for a in page.records if not a.get("cancelled_at")][:n]


def new_invoice(env: Env, patient: str, business: str, total: str, status: int = 10) -> dict[str, Any]:
    return env.put_record(
        "invoices",
        {
            "number": 99001, "issue_date": "2026-11-21", "status": status, "status_description": "Open",
            "total_amount": total, "tax_amount": "0.00", "net_amount": total, "discounted_amount": "0.00",
            "notes": None, "invoice_to": "", "patient_extra_information": None, "closed_at": None,
            "appointment_id": None, "business_id": int(business), "practitioner_id": None, "patient_id": int(patient),
        },
    )  # fmt: skip


def test_a_top_up_brings_exactly_the_changes_for_a_fraction_of_the_requests(env: Env) -> None:
    plan = env.plan()
    first = env.run(plan)
    before = env.table_counts()
    owed_before = {
        r["patient_id"]: r["source_outstanding"]
        for r in reconcile(env.ledger, first.batch_id, source=env.source, store=env.store).balances.to_dicts()
    }

    # The clinic keeps working in Cliniko: a new patient, an appointment moved, one cancelled, a new invoice.
    patient = env.writer.post(
        "/patients", {"first_name": "Nova", "last_name": "Late", "date_of_birth": "1990-02-03"}
    )
    moved, cancelled = latest_appointments(env, 2)
    env.writer.put(
        f"/individual_appointments/{moved['id']}",
        {"starts_at": "2026-12-01T09:00:00Z", "ends_at": None, "notes": "Moved to the morning"},
    )
    env.writer.patch(f"/individual_appointments/{cancelled['id']}/cancel", {"cancellation_reason": 50})
    owner = link(moved, "patient")
    invoice = new_invoice(env, owner, link(moved, "business"), "85.00")

    dest_moved = env.dest_id("individual_appointments", str(moved["id"]))
    top = env.run(plan, top_up=True)

    # Exactly those four records, and nothing else, with what became of each.
    assert env.items(top.batch_id) == {
        ("patients", str(patient["id"])): ("created", None),
        ("individual_appointments", str(moved["id"])): ("already_present", "updated"),
        ("individual_appointments", str(cancelled["id"])): ("already_present", "cancelled"),
        ("invoices", str(invoice["id"])): ("created", None),
    }
    # The two rewrites are counted apart from what was merely present, and listed with what changed.
    assert top.updated == {"individual_appointments": 2} and top.as_dict()["updated"] == top.updated
    assert top.entities["individual_appointments"]["already_present"] == 2  # still counted as present
    listed = updated(env.ledger, top.batch_id)
    assert sorted(listed.select("source_id", "dest_id", "reason_code").rows()) == sorted(
        [
            (str(moved["id"]), str(dest_moved), "updated"),
            (
                str(cancelled["id"]),
                str(env.dest_id("individual_appointments", str(cancelled["id"]))),
                "cancelled",
            ),
        ]
    )
    assert listed.filter(pl.col("reason_code") == "updated")["reason"][0] == (
        "Changed in Cliniko since an earlier batch brought it (starts_at, ends_at, notes); updated in place."
    )
    # Nothing duplicated: the store grew by the new patient and the new invoice only.
    assert env.table_counts() == {
        **before,
        "patients": before["patients"] + 1,
        "invoices": before["invoices"] + 1,
    }
    # The moved appointment was rewritten in place; the cancellation applied; the invoice on the right patient.
    ((starts_at, data),) = env.rows(
        "SELECT starts_at, data FROM clinic.individual_appointments WHERE id = ?", dest_moved
    )
    assert starts_at == "2026-12-01T09:00:00Z" and json.loads(data)["notes"] == "Moved to the morning"
    ((cancelled_at, reason),) = env.rows(
        "SELECT cancelled_at, cancellation_reason FROM clinic.individual_appointments WHERE source_id = ?",
        str(cancelled["id"]),
    )
    assert cancelled_at is not None and reason == 50
    assert env.rows(
        "SELECT outstanding, patient_id, batch_id FROM clinic.invoices WHERE source_id = ?",
        str(invoice["id"]),
    ) == [("85.00", env.dest_id("patients", owner), top.batch_id)]

    # The cost: one request per list of changes the plan reads (22), the two /cancelled lists, and one per
    # /deleted list of the included entities (10): 34, against 201 for the first run.
    entities = set(plan.include) | set(MAPPED)
    deleted_lists = sum("deleted" in resource(e).list_routes for e in entities)
    assert top.requests == len(SOURCE_LISTS) + 2 + deleted_lists == 34
    assert first.requests == 201 and top.requests * 5 < first.requests
    summary = top.as_dict()["top_up"]
    assert summary["of"] == first.batch_id and summary["full_run_requests"] == first.requests
    assert summary["requests_saved"] == first.requests - top.requests == 167

    # It all reconciles, and the patient owes 85.00 more on both sides.
    check = reconcile(env.ledger, top.batch_id, source=env.source, store=env.store)
    assert check.ok, check.problems
    assert check.updated.equals(listed) and check.as_dict()["updated"] == 2
    balance = check.balances.filter(check.balances["patient_id"] == owner).to_dicts()[0]
    assert (
        balance["source_outstanding"]
        == balance["destination_outstanding"]
        == owed_before[owner] + Decimal("85.00")
    )
    counts = {r["entity"]: r for r in check.counts.iter_rows(named=True)}
    assert counts["patients"]["in_scope_total"] == counts["patients"]["source_count"] == 399

    # Another sweep right away reads the same lists, brings nothing and rewrites nothing.
    again = env.run(plan, top_up=True)
    assert again.requests == 34 and again.updated == {} and "updated" not in again.as_dict()
    assert {code for _, code in env.items(again.batch_id).values()} <= {"earlier_batch"}
    assert env.table_counts() == {
        **before,
        "patients": before["patients"] + 1,
        "invoices": before["invoices"] + 1,
    }


def test_deletions_at_the_source_are_applied_and_what_the_clinic_added_is_kept(env: Env) -> None:
    plan = env.plan()
    first = env.run(plan)
    (appointment,) = latest_appointments(env, 1)
    env.writer.delete(f"/individual_appointments/{appointment['id']}")
    ((invoice, items),) = env.rows(
        "SELECT i.source_id, count(t.id) FROM clinic.invoices i JOIN clinic.invoice_items t ON t.invoice_id = i.id"
        " GROUP BY i.id HAVING count(t.id) >= 2 ORDER BY i.id LIMIT 1"
    )
    env.put_record("invoices", {"id": int(invoice), "deleted_at": "2026-11-21T10:00:00Z"})
    for (item,) in env.rows(
        "SELECT t.source_id FROM clinic.invoice_items t JOIN clinic.invoices i ON i.id = t.invoice_id"
        " WHERE i.source_id = ?",
        invoice,
    ):
        env.put_record(
            "invoice_items", {"id": int(item), "deleted_at": "2026-11-21T10:00:00Z"}
        )  # as Cliniko does
    # A patient Cliniko deleted, to whom the clinic has meanwhile added an alert in the destination.
    ((kept, kept_source),) = env.rows("SELECT id, source_id FROM clinic.patients ORDER BY id DESC LIMIT 1")
    env.put_record("patients", {"id": int(kept_source), "deleted_at": "2026-11-21T10:00:00Z"})
    env.store.setup_reference("medical_alerts", [{"name": "Latex allergy (front desk)", "patient_id": kept}])

    top = env.run(plan, top_up=True)
    got = env.items(top.batch_id)
    assert got[("individual_appointments", str(appointment["id"]))] == ("skipped", "deleted_at_source")
    assert got[("invoices", invoice)] == ("skipped", "deleted_at_source")
    assert [k for k, v in got.items() if k[0] == "invoice_items"] and all(
        v == ("skipped", "deleted_at_source") for k, v in got.items() if k[0] == "invoice_items"
    )
    assert sum(1 for k in got if k[0] == "invoice_items") == items
    assert got[("patients", kept_source)] == ("already_present", "deleted_at_source_kept")
    assert len(got) == 3 + items
    assert env.rows(
        "SELECT count(*) FROM clinic.individual_appointments WHERE source_id = ?", str(appointment["id"])
    ) == [(0,)]
    assert env.rows("SELECT count(*) FROM clinic.invoices WHERE source_id = ?", invoice) == [(0,)]
    assert env.rows("SELECT count(*) FROM clinic.patients WHERE id = ?", kept) == [(1,)]

    # The first batch still reconciles: what Cliniko deleted is no longer expected of it.
    first_check = reconcile(env.ledger, first.batch_id, source=env.source, store=env.store)
    removed = {
        r["entity"]: r["removed_since"]
        for r in first_check.counts.iter_rows(named=True)
        if r["removed_since"]
    }
    assert removed == {"individual_appointments": 1, "invoices": 1, "invoice_items": items}
    assert all(r["difference"] == 0 for r in first_check.counts.iter_rows(named=True))
    # The source's counts are the top-up's to match, and the first batch's check says so.
    assert first_check.newer == top.batch_id
    assert first_check.problems and all(
        p.endswith(f"(batch {top.batch_id}, newer, accounts for what changed since: reconcile that one).")
        for p in first_check.problems
    )
    # Had the first batch failed, with no newer one, the advice would be to resume it, not to top it up.
    unfinished = dataclasses.replace(first_check, newer=None, status="failed")
    assert unfinished.problems and all(
        p.endswith("(the batch failed before it finished: running its plan again resumes it).")
        for p in unfinished.problems
    )
    # The top-up flags the one patient the destination keeps although Cliniko deleted them.
    check = reconcile(env.ledger, top.batch_id, source=env.source, store=env.store)
    assert len(check.problems) == 1 and check.problems[0].startswith("patients: the source lists 397 now")
    # ... and lists that patient among the records that want a look.
    assert check.flagged.select("entity", "source_id", "reason_code").rows() == [
        ("patients", kept_source, "deleted_at_source_kept")
    ]
    # Deleting the top-up does not bring back what Cliniko deleted, so the first batch still reconciles.
    delete_batch(env.ledger, env.store, top.batch_id)
    after = reconcile(env.ledger, first.batch_id, source=env.source, store=env.store)
    assert {
        r["entity"]: r["removed_since"] for r in after.counts.iter_rows(named=True) if r["removed_since"]
    } == removed
    assert all(r["difference"] == 0 for r in after.counts.iter_rows(named=True))
    assert not [p for p in after.problems if "missing" in p], after.problems


def test_a_business_top_up_brings_a_patient_who_entered_the_scope_with_their_history(env: Env) -> None:
    plan = env.plan(f"business:{BUSINESS}")
    first = env.run(plan)
    in_scope = {i.source_id for i in env.ledger.items(first.batch_id, "patients")}
    notes_by_patient: dict[str, int] = {}
    for page in env.source.pages("treatment_notes"):
        for note in page.records:
            patient = note["patient"]["links"]["self"].rsplit("/", 1)[-1]
            notes_by_patient[patient] = notes_by_patient.get(patient, 0) + 1
    # Two patients the business never saw nor billed: one books there, the other is billed there.
    newcomer, billed = sorted(
        (p for p in notes_by_patient if p not in in_scope), key=lambda p: (-notes_by_patient[p], p)
    )[:2]
    practitioner = next(iter(env.source.pages("practitioners"))).records[0]
    kind = next(iter(env.source.pages("appointment_types"))).records[0]
    booked = env.writer.post(
        "/individual_appointments",
        {
            "starts_at": "2026-12-02T10:00:00Z", "patient_id": newcomer, "practitioner_id": str(practitioner["id"]),
            "appointment_type_id": str(kind["id"]), "business_id": BUSINESS,
        },
    )  # fmt: skip
    invoice = new_invoice(env, billed, BUSINESS, "40.00")

    top = env.run(plan, top_up=True)
    got = env.items(top.batch_id)
    assert got[("individual_appointments", str(booked["id"]))] == ("created", None)
    assert got[("invoices", str(invoice["id"]))] == ("created", None)
    # Both come with their whole history (notes and files are not tied to a business), read by their id.
    assert got[("patients", newcomer)] == got[("patients", billed)] == ("created", None)
    for entity in ("medical_alerts", "treatment_notes", "patient_attachments"):
        theirs = {
            str(r["id"])
            for who in (newcomer, billed)
            for p in env.source.pages(entity, [_patient(who)])
            for r in p.records
        }
        assert {sid for (e, sid), (action, _) in got.items() if e == entity and action == "created"} == theirs
    check = reconcile(env.ledger, top.batch_id, source=env.source, store=env.store)
    assert check.ok, check.problems
    # Under a business filter the source can count what the filter selects by itself, not who follows from it.
    counts = {r["entity"]: r for r in check.counts.iter_rows(named=True)}
    assert counts["patients"]["source_count"] is None and counts["treatment_notes"]["source_count"] is None
    at_business = [r for page in env.source.pages("invoices", [_business()]) for r in page.records]
    assert counts["invoices"]["source_count"] == counts["invoices"]["in_scope_total"] == len(at_business)
    assert top.requests < first.requests


def test_a_top_up_brings_what_was_skipped_for_a_patient_unarchived_since(env: Env) -> None:
    # Without archived patients, what belongs to them is skipped as out of scope; once the clinic unarchives
    # one, a top-up reads that patient (updated since) and tries their skipped records again by id, though
    # none of those records changed themselves.
    plan = env.plan().model_copy(update={"include_archived_patients": False})
    first = env.run(plan)
    out = {
        (i.entity, i.source_id)
        for i in env.ledger.items(first.batch_id)
        if i.reason_code == "patient_out_of_scope"
    }
    entities = sorted({entity for entity, _ in out})

    def records_of_patient(patient: str) -> set[tuple[str, str]]:
        return {
            (entity, str(r["id"]))
            for entity in entities
            for page in env.source.pages(entity, [_patient(patient)])
            for r in page.records
        }

    # The archived patient with the most records of the most kinds.
    archived = [str(r["id"]) for page in env.source.pages("patients", route="archived") for r in page.records]
    patient, theirs = max(
        ((p, records_of_patient(p)) for p in archived),
        key=lambda pr: (len({e for e, _ in pr[1]}), len(pr[1]), pr[0]),
    )
    assert {e for e, _ in theirs} >= {"individual_appointments", "invoices"}, theirs
    assert theirs <= out
    assert not any(i.source_id == patient for i in env.ledger.items(first.batch_id, "patients"))

    env.writer.post(f"/patients/{patient}/unarchive", {})
    top = env.run(plan, top_up=True)
    got = env.items(top.batch_id)
    assert got[("patients", patient)] == ("created", None)
    assert {key: got.get(key) for key in theirs} == {key: ("created", None) for key in theirs}
    # Everything else the first run skipped for its patient stays skipped: those patients are still archived.
    still = {key for key, (_, code) in got.items() if code == "patient_out_of_scope"}
    assert still == out - theirs
    again = env.run(plan, top_up=True)
    assert sum(counts["created"] for counts in again.entities.values()) == 0
    check = reconcile(env.ledger, top.batch_id, source=env.source, store=env.store)
    assert check.ok, check.problems


def _patient(patient_id: str) -> Filter:
    return Filter("patient_id", "=", patient_id)


def _business() -> Filter:
    return Filter("business_id", "=", BUSINESS)


def test_a_stopped_top_up_resumes_as_a_top_up(env: Env) -> None:
    plan = env.plan()
    first = env.run(plan)
    patient = env.writer.post("/patients", {"first_name": "Ada", "last_name": "Resume"})
    invoice = new_invoice(env, str(patient["id"]), BUSINESS, "40.00")
    stop = threading.Event()

    def stop_at_invoices(event: Any) -> None:
        if event.stage == "medical_alerts":
            stop.set()

    engine = Engine(
        plan, env.source, env.store, env.ledger, progress=stop_at_invoices, stop=stop,
        top_up=top_up_point(env.ledger, plan),
    )  # fmt: skip
    with pytest.raises(RunStopped):
        engine.run()
    (stopped,) = [b for b in env.ledger.batches() if b.status == "stopped"]
    assert env.items(stopped.id) == {("patients", str(patient["id"])): ("created", None)}

    resumed = env.run(plan)  # not asked as a top-up: the stopped batch resumes as what it was
    assert resumed.batch_id == stopped.id and resumed.resumed
    assert resumed.top_up is not None and resumed.top_up.of == first.batch_id
    assert env.items(stopped.id) == {
        ("patients", str(patient["id"])): ("created", None),
        ("invoices", str(invoice["id"])): ("created", None),
    }
    assert resumed.batch_requests is not None and resumed.batch_requests < first.requests / 4


def test_a_stopped_top_up_of_a_batch_deleted_since_is_not_resumed(env: Env) -> None:
    """Its changes are relative to records that are gone: the plan starts afresh, and the top-up stays deletable."""
    plan = env.plan()
    first = env.run(plan)
    patient = env.writer.post("/patients", {"first_name": "Ada", "last_name": "Orphan"})
    stop = threading.Event()
    engine = Engine(
        plan, env.source, env.store, env.ledger, stop=stop, top_up=top_up_point(env.ledger, plan),
        progress=lambda event: stop.set() if event.stage == "medical_alerts" else None,
    )  # fmt: skip
    with pytest.raises(RunStopped):
        engine.run()
    (stopped,) = [b for b in env.ledger.batches() if b.status == "stopped"]
    delete_batch(env.ledger, env.store, first.batch_id)

    again = env.run(plan)
    assert again.batch_id not in (stopped.id, first.batch_id) and not again.resumed and again.top_up is None
    patients = again.entities["patients"]
    assert patients["in_scope"] == first.entities["patients"]["in_scope"] + 1
    assert (patients["created"], patients["already_present"]) == (
        patients["in_scope"] - 1,
        1,
    )  # Ada: the top-up's
    assert env.ledger.batch(stopped.id).status == "stopped"
    delete_batch(env.ledger, env.store, again.batch_id)
    delete_batch(env.ledger, env.store, stopped.id)
    assert env.rows("SELECT count(*) FROM clinic.patients WHERE source_id = ?", str(patient["id"])) == [(0,)]


def test_deleting_a_top_up_batch_removes_what_it_created_and_keeps_its_updates(env: Env) -> None:
    plan = env.plan()
    first = env.run(plan)
    patient = env.writer.post("/patients", {"first_name": "Gone", "last_name": "Again"})
    (moved,) = latest_appointments(env, 1)
    env.writer.put(f"/individual_appointments/{moved['id']}", {"notes": "Bring the referral"})
    top = env.run(plan, top_up=True)
    delete_batch(env.ledger, env.store, top.batch_id)
    assert env.rows("SELECT count(*) FROM clinic.patients WHERE source_id = ?", str(patient["id"])) == [(0,)]
    ((data, batch),) = env.rows(
        "SELECT data, batch_id FROM clinic.individual_appointments WHERE source_id = ?", str(moved["id"])
    )
    assert json.loads(data)["notes"] == "Bring the referral" and batch == first.batch_id


def test_top_up_from_the_command_line(tiny_sandbox: RunningSandbox, tmp_path: Path) -> None:
    mapping = setup_workspace(tiny_sandbox, tmp_path)
    target = into_store(tmp_path, mapping)
    key = tiny_sandbox.key("source")
    early = cli(tiny_sandbox, "run", *target, "--top-up", key=key)
    assert early.returncode == 2 and "nothing to top up" in early.stderr and early.stderr.count("\n") == 1
    # Without --mapping, the fresh auto-match has a former practitioner to decide; a top-up is told the truer
    # sentence: there is no batch to top up (and the source's lists are not read to match).
    bare = cli(tiny_sandbox, "run", *target[:4], "--top-up", key=key)
    assert bare.returncode == 2 and bare.stderr.startswith("error: No batch of this plan has completed yet,")
    first = cli(tiny_sandbox, "run", *target, "--json", key=key)
    assert first.returncode == 0, first.stderr
    full = json.loads(first.stdout)
    top = cli(tiny_sandbox, "run", *target, "--top-up", "--json", key=key)
    assert top.returncode == 0, top.stderr
    result = json.loads(top.stdout)
    assert result["top_up"]["of"] == full["batch_id"]
    # The tiny clinic's lists each fit in one page, so reading its changes (one request per list, plus the
    # /deleted and /cancelled lists) costs more than reading it all; the summary says so rather than hide it.
    assert (full["requests"], result["requests"]) == (23, 34)
    assert result["top_up"]["requests_saved"] == full["requests"] - result["requests"] == -11
    assert all(row["created"] == 0 for row in result["entities"].values())
    human = cli(tiny_sandbox, "run", *target, "--top-up", key=key)
    assert human.returncode == 0 and f"A top-up of batch {result['batch_id']}" in human.stdout
    assert (
        "11 requests more than the full run's 23, as every list of this clinic fits in a page."
        in human.stdout
    )
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        assert conn.execute("SELECT count(*) FROM batches WHERE status = 'completed'").fetchone() == (3,)
    # Listings say which batches were top-ups.
    listed = json.loads(cli(tiny_sandbox, "batches", "--json", "--workspace", str(tmp_path), key=key).stdout)
    assert [b["kind"] for b in listed] == ["top-up", "top-up", "full"]
    lines = cli(tiny_sandbox, "batches", "--workspace", str(tmp_path), key=key).stdout.splitlines()
    assert [line.split()[5] for line in lines] == ["top-up", "top-up", "full"]


def test_without_a_mapping_a_top_up_continues_the_plan_of_the_last_batch(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    mapping = setup_workspace(tiny_sandbox, tmp_path)
    edited = json.loads(mapping.read_text())["mappings"]
    assert any(row["action"] == "former" for row in edited)  # a decision auto-matching cannot make
    target = ("--to", f"sqlite:{tmp_path / 'clinic.db'}", "--workspace", str(tmp_path))
    key = tiny_sandbox.key("source")
    first = cli(tiny_sandbox, "run", *target, "--mapping", str(mapping), "--json", key=key)
    assert first.returncode == 0, first.stderr
    batch = json.loads(first.stdout)["batch_id"]

    # No --mapping: the sweep takes the first batch's (matching afresh would now map what that batch
    # created, and leave the former practitioners undecided).
    top = cli(tiny_sandbox, "run", *target, "--top-up", "--json", key=key)
    assert top.returncode == 0, top.stderr
    assert json.loads(top.stdout)["top_up"]["of"] == batch
    again = cli(tiny_sandbox, "run", *target, "--json", key=key)
    assert again.returncode == 0, again.stderr
    assert all(row["created"] == 0 for row in json.loads(again.stdout)["entities"].values())
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        plans = [json.loads(p)["mappings"] for (p,) in conn.execute("SELECT plan FROM batches ORDER BY id")]
    assert plans == [edited] * 3

    # Another filter is another plan: its mapping is matched afresh, and undecided rows stop it.
    other = cli(
        tiny_sandbox, "run", *target, "--filter", f"business:{_first_business(tiny_sandbox)}", key=key
    )
    assert other.returncode == 2 and "is unresolved: practitioners Liam Murphy" in other.stderr


def _first_business(sandbox: RunningSandbox) -> str:
    with sandbox.client() as client:
        return str(next(iter(client.pages("businesses"))).records[0]["id"])


def test_a_top_up_is_refused_once_a_batch_its_base_built_on_is_deleted(env: Env) -> None:
    """Deleting the full run under a top-up leaves the top-up's few records: topping those up would bring nothing."""
    plan = env.plan()
    first = env.run(plan)
    env.writer.post("/patients", {"first_name": "Ada", "last_name": "Base"})
    top = env.run(plan, top_up=True)
    assert top.entities["patients"]["created"] == 1
    delete_batch(env.ledger, env.store, first.batch_id)  # allowed: no record of the top-up uses its records

    with pytest.raises(ConfigError) as refused:
        env.run(plan, top_up=True)
    assert str(refused.value) == (
        f"Batch {first.batch_id}, which top-up {top.batch_id} builds on, has been deleted, so a top-up would miss "
        "what it brought; run this plan in full first (not as a top-up)."
    )
    again = env.run(plan)  # in full: everything comes back, Ada is the top-up's
    patients = again.entities["patients"]
    assert patients["in_scope"] == first.entities["patients"]["in_scope"] + 1
    assert (patients["created"], patients["already_present"]) == (patients["in_scope"] - 1, 1)
    assert env.run(plan, top_up=True).top_up is not None  # and top-ups build on that run
