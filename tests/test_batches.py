"""Deleting a batch: only what it created (and what was since created for its patients), within 48 hours."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

import migrator
from migrator import steps
from migrator.batches import BatchNotDeletable, DeletionPlan, deletable, delete_batch, deletion_plan
from migrator.destinations.local import KeptLink
from migrator.errors import ConfigError, paths_said
from migrator.plan import records_of
from migrator.reconcile import counts
from tests.test_engine import Env, env, sandbox  # noqa: F401 - fixtures


def test_deletion_removes_what_the_batch_created_and_nothing_it_linked(env: Env) -> None:  # noqa: F811
    set_up = {e: len(env.rows(e)) for e in ("practitioners", "businesses", "appointment_types")}
    first = env.run(env.plan(include=["patients", "individual_appointments", "invoices", "invoice_items"]))
    # A pre-existing patient, equal to a source patient, is linked by a second source... simulate it:
    # the clinic entered one patient by hand before a later batch; that batch links rather than creates.
    plan = deletion_plan(env.ledger, env.store, first.batch_id)
    assert plan.as_dict()["created"]["patients"] == first.entities["patients"]["created"]
    assert plan.dependents == {}  # nothing was created since for those patients
    delete_batch(env.ledger, env.store, first.batch_id)
    assert env.ledger.batch(first.batch_id).status == "deleted"
    for entity in ("patients", "individual_appointments", "invoices", "invoice_items"):
        assert env.store.count(entity) == 0, entity
    # Practitioners, businesses and appointment types the clinic set up, merely linked, are all still there.
    for entity, n in set_up.items():
        assert sum(1 for r in env.rows(entity) if r["batch_id"] is None) >= n, entity
    actions = [a["action"] for a in env.ledger.audit_log(first.batch_id)]
    assert "delete" in " ".join(actions) or "deleted" in " ".join(actions)


def test_a_deletion_commits_its_chunks_together(env: Env) -> None:  # noqa: F811
    # A commit costs several fsyncs: one per chunk of 500 made a large clinic's deletion 2.4 times as long.
    batch = env.run(env.plan(include=["patients", "individual_appointments", "invoices", "invoice_items"]))
    created = {e: row["created"] for e, row in batch.entities.items()}
    chunks = sum(-(-n // 500) for n in created.values())
    assert chunks > 10
    statements: list[str] = []
    env.ledger.conn.set_trace_callback(statements.append)
    try:
        delete_batch(env.ledger, env.store, batch.batch_id, commit_interval=3600)
    finally:
        env.ledger.conn.set_trace_callback(None)
    # Status "deleting", every chunk, status "deleted": three commits, and everything went.
    assert sum(s == "COMMIT" for s in statements) == 3
    assert {e: env.store.count(e, batch.batch_id) for e in created} == dict.fromkeys(created, 0)
    noted = env.ledger.deleted_by(batch.batch_id)
    assert {e: len(noted.get(e, ())) for e in created} == created


def test_a_deletion_reports_its_progress_chunk_by_chunk(env: Env) -> None:  # noqa: F811
    batch = env.run(env.plan(include=["patients", "individual_appointments", "invoices", "invoice_items"]))
    created = {e: row["created"] for e, row in batch.entities.items() if row["created"]}
    seen: list[tuple[str, int, int]] = []
    delete_batch(env.ledger, env.store, batch.batch_id, progress=lambda *event: seen.append(event))
    total = sum(created.values())
    assert {t for _, _, t in seen} == {total}
    removed = [n for _, n, _ in seen]
    assert removed == sorted(removed) and removed[-1] == total
    assert len(seen) == sum(-(-n // 500) for n in created.values())  # one call per chunk of 500
    # In reverse dependency order (invoice items before invoices, before patients), each type's chunks together.
    order = list(dict.fromkeys(e for e, _, _ in seen))
    assert order == [e for e in env.store.DELETE_ORDER if e in created]
    assert order.index("invoice_items") < order.index("invoices") < order.index("patients")


def test_what_a_stopped_deletion_removed_is_listed_in_the_order_of_deletion(env: Env) -> None:  # noqa: F811
    batch = env.run(env.plan(include=["patients", "individual_appointments", "invoices", "invoice_items"]))
    # A deletion stopped part-way, in the order it deletes: all the invoice items, then 3 appointments.
    removed = {
        "invoice_items": env.store.created_by(batch.batch_id, "invoice_items"),
        "individual_appointments": env.store.created_by(batch.batch_id, "individual_appointments")[:3],
    }
    for entity, ids in removed.items():
        with env.ledger.transaction():
            env.store.delete(entity, ids)
            env.ledger.record_deletions(batch.batch_id, entity, ids)
    plan = deletion_plan(env.ledger, env.store, batch.batch_id)
    assert plan.already_deleted_note == (
        "Already deleted before the last deletion stopped part-way: "
        f"{records_of('invoice_items', len(removed['invoice_items']))}, 3 individual appointments."
    )


def test_records_created_since_for_the_batchs_patients_go_with_them(env: Env) -> None:  # noqa: F811
    first = env.run(env.plan(include=["patients"]))
    second = env.run(env.plan(include=["patients", "medical_alerts"]))
    assert second.entities["patients"]["already_present"] == first.entities["patients"]["created"]
    alerts = second.entities["medical_alerts"]["created"]
    assert alerts > 0
    plan = deletion_plan(env.ledger, env.store, first.batch_id)
    assert len(plan.dependents["medical_alerts"]) == alerts  # seed 000's warning, counted
    delete_batch(env.ledger, env.store, first.batch_id)
    assert env.store.count("patients") == 0 and env.store.count("medical_alerts") == 0


def test_a_linked_patient_survives_deletion(env: Env) -> None:  # noqa: F811
    # The clinic already has one of the source's patients (same name and date of birth), entered by hand.
    source_patient = next(
        r
        for p in env.source.pages("patients")
        for r in p.records
        if r.get("date_of_birth") and r["first_name"].isascii()
    )
    env.store.setup_reference(
        "patients",
        [
            {
                "first_name": source_patient["first_name"].upper(),
                "last_name": f" {source_patient['last_name']} ",
                "date_of_birth": source_patient["date_of_birth"],
                "data": {"entered": "by hand"},
            }
        ],
    )
    result = env.run(env.plan(include=["patients"]))
    linked = [i for i in env.ledger.items(result.batch_id, "patients") if i.action == "linked"]
    assert [i.source_id for i in linked] == [str(source_patient["id"])]
    delete_batch(env.ledger, env.store, result.batch_id)
    remaining = env.rows("patients")
    assert len(remaining) == 1 and remaining[0]["batch_id"] is None


def test_the_48_hour_boundary(env: Env) -> None:  # noqa: F811
    result = env.run(env.plan(include=["patients"]))
    created = env.ledger.batch(result.batch_id).created_at
    with pytest.raises(BatchNotDeletable, match="within 48 hours"):
        delete_batch(env.ledger, env.store, result.batch_id, now=created + timedelta(hours=48))
    assert env.store.count("patients") == result.entities["patients"]["created"]  # nothing touched
    delete_batch(env.ledger, env.store, result.batch_id, now=created + timedelta(hours=47, minutes=59))
    assert env.store.count("patients") == 0
    with pytest.raises(BatchNotDeletable, match="already"):
        delete_batch(env.ledger, env.store, result.batch_id)


def test_a_batch_whose_records_a_later_batch_uses_is_not_deleted(env: Env) -> None:  # noqa: F811
    """Deleting the first batch would leave the second's appointments without practitioner or type."""
    first = env.run(env.plan(include=["appointment_types"]))
    created_types = first.entities["appointment_types"]["created"]
    assert created_types > 0 and first.entities["practitioners"]["created"] == 1  # "Former practitioner"
    second = env.run(env.plan(include=["appointment_types", "patients", "individual_appointments"]))
    appointments = env.rows("individual_appointments")
    type_ids = {str(r["id"]) for r in env.rows("appointment_types") if r["batch_id"] == first.batch_id}
    former = next(r["id"] for r in env.rows("practitioners") if r["batch_id"] == first.batch_id)
    using_types = sum(1 for r in appointments if str(r["appointment_type_id"]) in type_ids)
    using_former = sum(1 for r in appointments if r["practitioner_id"] == former)
    assert using_types > 0 and using_former > 0

    plan = deletion_plan(env.ledger, env.store, first.batch_id)
    assert {(k.entity, k.column, k.batch_id): k.records for k in plan.kept_links} == {
        ("individual_appointments", "practitioner_id", second.batch_id): using_former,
        ("individual_appointments", "appointment_type_id", second.batch_id): using_types,
    }
    assert plan.blocker == (
        f"Batch {first.batch_id} cannot be deleted while other records rely on what it created "
        f"(in batch {second.batch_id}, {using_former:,} individual appointments would lose their practitioner; "
        f"{using_types:,} individual appointments their appointment type): "
        f"delete batch {second.batch_id} first, or keep this one."
    )
    with pytest.raises(BatchNotDeletable) as refused:
        delete_batch(env.ledger, env.store, first.batch_id)
    assert str(refused.value) == plan.blocker
    assert env.ledger.batch(first.batch_id).status == "completed"
    assert env.rows("individual_appointments") == appointments  # nothing touched
    assert len(type_ids) == created_types
    # Listings say so before anyone picks it: the library, and the notebook's frame.
    assert deletable(env.ledger, env.ledger.batch(first.batch_id)) == (False, plan.blocker)
    assert deletable(env.ledger, env.ledger.batch(second.batch_id))[0] is True
    listed = {
        r["id"]: (r["deletable"], r["why"]) for r in steps.batches(env.ledger.workspace).iter_rows(named=True)
    }
    assert listed[first.batch_id] == (False, plan.blocker) and listed[second.batch_id][0] is True

    delete_batch(env.ledger, env.store, second.batch_id)
    assert deletion_plan(env.ledger, env.store, first.batch_id).blocker is None
    assert deletable(env.ledger, env.ledger.batch(first.batch_id))[0] is True
    delete_batch(env.ledger, env.store, first.batch_id)
    assert not [r for r in env.rows("appointment_types") if r["batch_id"] is not None]


def test_a_later_batchs_records_removed_with_a_deleted_batch_count_as_removed_not_missing(
    env: Env,  # noqa: F811
) -> None:
    """Seed 000: deleting a batch takes what a later one found already present, and made for its patients."""
    first = env.run(env.plan(include=["patients"]))
    second = env.run(env.plan(include=["patients", "medical_alerts"]))
    patients = first.entities["patients"]["created"]
    alerts = second.entities["medical_alerts"]["created"]
    assert second.entities["patients"]["already_present"] == patients and alerts > 0
    delete_batch(env.ledger, env.store, first.batch_id)

    later = counts(env.ledger, second.batch_id, store=env.store).filter(
        pl.col("entity").is_in(["patients", "medical_alerts"])
    )
    assert later.select("entity", "in_destination", "removed_since", "difference").rows() == [
        ("patients", 0, patients, 0),
        ("medical_alerts", 0, alerts, 0),
    ]
    own = counts(env.ledger, first.batch_id, store=env.store).filter(pl.col("entity") == "patients")
    assert own.select("created", "in_destination", "removed_since", "difference").rows() == [
        (patients, 0, patients, 0)
    ]


def test_records_found_by_their_details_are_named_five_at_most() -> None:
    found = [str(n) for n in range(1, 8)]
    plan = DeletionPlan(
        "b1", {"individual_appointments": found}, {}, matched={"individual_appointments": found}
    )
    assert plan.matched_note == (
        "Found in the account by their details, as the answers to the batch's creates of them were lost when "
        "a run was interrupted: 7 individual appointments (ids 1, 2, 3, 4, 5 and 2 more). Make sure none of "
        "them is a record the clinic made itself."
    )
    assert plan.as_dict()["found_by_matching"] == {"individual_appointments": 7}
    assert DeletionPlan("b1", {}, {}).matched_note is None


def test_records_that_would_lose_the_same_link_are_named_in_one_clause() -> None:
    """Many data types relying on a batch read as one clause per batch and link, not one per data type."""
    plan = DeletionPlan(
        "b1",
        {"appointment_types": ["7"], "billable_items": ["8"]},
        {},
        kept_links=(
            KeptLink("individual_appointments", "appointment_type_id", "b2", 1_200),
            KeptLink("group_appointments", "appointment_type_id", "b2", 3),
            KeptLink("invoice_items", "billable_item_id", "b2", 40),
            KeptLink("invoice_items", "billable_item_id", "b3", 1),
            KeptLink("individual_appointments", "appointment_type_id", None, 1),
            KeptLink("group_appointments", "appointment_type_id", None, 1),
        ),
    )
    assert plan.blocker == (
        "Batch b1 cannot be deleted while other records rely on what it created (in batch b2, 1,200 "
        "individual appointments and 3 group appointments would lose their appointment type; 40 invoice "
        "items their billable item; in batch b3, 1 invoice item would lose its billable item; among the "
        "clinic's own records, 1 appointment and 1 group appointment would lose their appointment type): "
        "delete batches b2 and b3, and change or delete the clinic's own records first, or keep this one."
    )


def test_a_notebook_deletes_a_batch_with_one_call(env: Env, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """``migrator.delete_batch``: the dry run says what would go and touches nothing; then it goes, with a bar."""
    first = env.run(env.plan(include=["patients"]))
    second = env.run(env.plan(include=["patients", "medical_alerts"]))
    patients, alerts = first.entities["patients"]["created"], second.entities["medical_alerts"]["created"]
    # The engine's own store is not the workspace's default one: the batch names where it went.
    would = steps.delete_batch(first.batch_id, workspace=env.workspace, dry_run=True)
    created = {e: c["created"] for e, c in first.entities.items() if c["created"]}
    assert created["patients"] == patients
    assert {e: len(ids) for e, ids in would.created.items() if ids} == created
    assert {e: len(ids) for e, ids in would.dependents.items()} == {"medical_alerts": alerts}
    assert would.total == sum(created.values()) + alerts and would.blocker is None
    # A notebook cell ending in the call shows its counts, not every id (hundreds of thousands on a large clinic).
    shown = repr(would)
    assert shown.startswith(f"DeletionPlan(batch_id={first.batch_id!r}, created={{") and len(shown) < 400
    # The second batch found the first's patients already present: they go too, and the plan says so.
    assert f"found_present_by_later_batches={{{second.batch_id!r}: {{" in shown
    assert f"'patients': {patients}}}}}" in shown
    assert all(f"'{e}': {n}" in shown for e, n in created.items()) and f"total={would.total})" in shown
    assert f"created_since_for_its_patients={{'medical_alerts': {alerts}}}" in shown
    assert not any(repr(i) in shown for i in would.created["patients"][:20])
    assert env.store.count("patients") == patients and env.ledger.batch(first.batch_id).status == "completed"

    capsys.readouterr()
    gone = steps.delete_batch(first.batch_id, workspace=env.workspace)
    assert gone.total == would.total
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()  # tqdm's text bar, outside Jupyter
    assert re.match(rf"Deleting [a-z_]+ +: 100%.* {gone.total}/{gone.total} ", bar[-1]), bar[-3:]
    assert env.store.count("patients") == 0 and env.store.count("medical_alerts") == 0
    assert env.ledger.batch(first.batch_id).status == "deleted"
    assert [e["actor"] for e in env.ledger.audit_log(first.batch_id)][-2:] == ["notebook", "notebook"]
    with pytest.raises(migrator.BatchNotDeletable, match="has already been deleted"):  # the notebook's names
        steps.delete_batch(first.batch_id, workspace=env.workspace, dry_run=True)
    assert isinstance(gone, migrator.DeletionPlan)
    for unknown, said in (("b20200101-000000-0000", "b20200101-000000-0000"), ("", "with an empty id")):
        with pytest.raises(migrator.BatchNotFound) as refused:
            steps.delete_batch(unknown, workspace=env.workspace, dry_run=True)
        assert str(refused.value).startswith(f"There is no batch {said} in the ledger at ")


def test_read_only_library_calls_make_no_workspace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A mistyped workspace is said to hold no ledger, and is not created behind the analyst's back."""
    typo = tmp_path / "worksapce"
    listed = steps.batches(typo)
    assert listed.height == 0 and "deletable" in listed.columns
    for call in (
        lambda: steps.delete_batch("b20261121-135301-3f9a", workspace=typo, dry_run=True),
        lambda: steps.reconcile("b20261121-135301-3f9a", source=None, workspace=typo),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigError) as refused:
            call()
        assert str(refused.value) == (
            f"There is no batch b20261121-135301-3f9a: {typo} holds no ledger (ledger.db); "
            "check the workspace argument."
        )
    assert not typo.exists()


def test_a_file_as_the_workspace_is_refused_not_said_to_be_empty(tmp_path: Path) -> None:
    """Listing, deleting and checking say what run() and mapping() say of a file: not "holds no ledger".

    In one sentence, as the library's other refusals: a ConfigError, with the file system's error as its cause.
    """
    a_file = tmp_path / "ledger.db"  # the ledger itself, given where its folder is wanted
    a_file.write_text("not a folder")
    for call in (
        lambda: steps.batches(a_file),
        lambda: steps.delete_batch("b20261121-135301-3f9a", workspace=a_file, dry_run=True),
        lambda: steps.reconcile("b20261121-135301-3f9a", source=None, workspace=a_file),  # type: ignore[arg-type]
        lambda: steps.mapping(None, workspace=a_file),  # type: ignore[arg-type]  # refused before any read
    ):
        with pytest.raises(ConfigError) as refused:
            call()
        assert str(refused.value) == f"Cannot use {a_file}: a file is already there where a folder is needed."
        assert isinstance(refused.value.__cause__, FileExistsError)
    with pytest.raises(ConfigError) as refused:
        migrator.save_mapping(a_file / "mapping.json", [])
    assert str(refused.value).startswith(f"Cannot use {a_file}")
    assert a_file.read_text() == "not a folder"


def test_a_database_the_library_may_read_but_not_write_is_refused_in_one_sentence(tmp_path: Path) -> None:
    """SQLite's read-only refusal, from a wrapped step, is a ConfigError saying what to give; others pass."""
    database = tmp_path / "ledger.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE t (x)")

    @paths_said
    def write(sql: str) -> None:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as read_only:
            read_only.execute(sql)

    with pytest.raises(ConfigError) as refused:
        write("INSERT INTO t VALUES (1)")
    assert str(refused.value).startswith(
        "The ledger or the clinic store may be read but not written (attempt to write a readonly database): "
        "let this user write both files"
    )
    assert isinstance(refused.value.__cause__, sqlite3.OperationalError)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):  # not a permission: as it was
        write("INSERT INTO nope VALUES (1)")
