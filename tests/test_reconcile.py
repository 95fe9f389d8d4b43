"""Reconciliation: zero after a clean run, and each kind of damage shows up as exactly that difference.

One migration of the demo clinic (served by the session's sandbox process) is made per module;
each test works on its own copy of the ledger and the store, so a test's damage stays its own.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from migrator.cliniko.client import ClinikoClient
from migrator.destinations.local import LocalStore
from migrator.errors import ConfigError, MigratorError
from migrator.ledger import Ledger
from migrator.mapping import build_mapping, to_rows
from migrator.plan import Plan, Scope
from migrator.reconcile import (
    COUNT_SCHEMA,
    Reconciliation,
    counts,
    merged_counts,
    reconcile,
    skipped,
    skipped_summary,
)
from migrator.setup import copy_clinic_setup
from migrator.workflow import open_local_store, run_plan
from tests.conftest import ROOT, RunningSandbox
from tests.test_resume import setup_workspace


@dataclass
class Migrated:
    """A finished migration: where its files are, its batch, and what it excluded."""

    folder: Path
    batch_id: str
    excluded: str  # the source id of the practitioner the mapping excluded
    requests: int
    to_former: int  # former practitioners given the one generic "Former practitioner"


@pytest.fixture(scope="module")
def migrated(demo_sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Migrated:
    # The first former practitioner is excluded (their records are skipped with that reason), the others
    # go to the generic "Former practitioner".
    return migrate(demo_sandbox, tmp_path_factory.mktemp("migrated"), exclude_first=True)


def migrate(sandbox: RunningSandbox, folder: Path, *, exclude_first: bool) -> Migrated:
    """Run the whole demo clinic into a new store in ``folder``; former practitioners to "Former practitioner"."""
    ledger = Ledger(folder / "workspace")
    store = LocalStore(folder / "clinic.db", ledger)
    with sandbox.client("destination") as dest:
        copy_clinic_setup(store, dest)
    with sandbox.client() as source:
        rows = to_rows(build_mapping(source, store.reference, can_create=True))
        formers = [r for r in rows if r.action == "unresolved"]
        decided = {
            r.source_id: ("exclude" if exclude_first and r is formers[0] else "former") for r in formers
        }
        rows = [r.model_copy(update={"action": decided[r.source_id]}) if r in formers else r for r in rows]
        plan = Plan(
            source_account="Harbourside Physio",
            source_shard="au2",
            destination=store.describe(),
            scope=Scope.parse("all"),
            mappings=rows,
        )
        result = run_plan(plan, source, store, ledger)
    ledger.close()
    excluded = formers[0].source_id if exclude_first else ""
    return Migrated(
        folder, result.batch_id, excluded, result.requests, list(decided.values()).count("former")
    )


@dataclass
class Copy:
    ledger: Ledger
    store: LocalStore
    batch_id: str

    def sql(self, statement: str, *params: object) -> list[tuple]:
        with self.ledger.transaction():
            return self.ledger.conn.execute(statement, params).fetchall()


@pytest.fixture
def copy(migrated: Migrated, tmp_path: Path) -> Iterator[Copy]:
    shutil.copytree(migrated.folder / "workspace", tmp_path / "workspace")
    shutil.copy(migrated.folder / "clinic.db", tmp_path / "clinic.db")
    ledger = Ledger(tmp_path / "workspace")
    yield Copy(ledger, LocalStore(tmp_path / "clinic.db", ledger), migrated.batch_id)
    ledger.close()


@pytest.fixture
def source(demo_sandbox: RunningSandbox) -> Iterator[ClinikoClient]:
    with demo_sandbox.client() as client:
        yield client


def cli(sandbox: RunningSandbox, *args: str, key: str) -> subprocess.CompletedProcess[str]:
    """``python -m migrator ARGS`` against the sandbox, unpaced (the sandbox has no rate limit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env.update(
        MIGRATOR_API_URL=sandbox.url_template, MIGRATOR_SOURCE_KEY=key, MIGRATOR_REQUESTS_PER_MINUTE="0"
    )
    return subprocess.run(
        [sys.executable, "-m", "migrator", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def check(copy: Copy, source: ClinikoClient) -> Reconciliation:
    return reconcile(copy.ledger, copy.batch_id, source=source, store=copy.store)


def nonzero(frame: pl.DataFrame, column: str) -> dict[str, int]:
    return dict(frame.filter(pl.col(column) != 0).select("entity", column).iter_rows())


def test_a_clean_run_reconciles(
    copy: Copy, source: ClinikoClient, demo_sandbox: RunningSandbox, migrated: Migrated
) -> None:
    followed: list[tuple[int, int]] = []
    result = reconcile(
        copy.ledger, copy.batch_id, source=source, store=copy.store, progress=lambda *n: followed.append(n)
    )
    assert result.ok, result.problems
    # A notebook cell shows one line, not every frame in full.
    assert repr(result) == (
        f"Reconciliation({copy.batch_id!r}, ok=True, problems=0, entities={result.counts.height}, balances=398 "
        f"(0 differ), moved_invoices=0, missing=0, skipped={result.skipped.height}, flagged=0, updated=0)"
    )
    # The read of the source's invoices is followed page by page, to the last of its 3,739.
    invoices = demo_sandbox.totals()["invoices"]
    assert len(followed) == -(-invoices // 100) and followed[-1] == (invoices, invoices)
    assert [read for read, _ in followed] == sorted({read for read, _ in followed})
    assert {listed for _, listed in followed} == {invoices}
    assert result.problems == []
    frame = result.counts
    assert list(frame.columns) == list(COUNT_SCHEMA)
    assert nonzero(frame, "difference") == {} and nonzero(frame, "source_difference") == {}
    # The fresh count at the source is the sandbox's own totals, independent of the engine.
    totals = demo_sandbox.totals()
    row = {r["entity"]: r for r in frame.iter_rows(named=True)}
    assert row["patients"]["source_count"] == totals["patients"] + totals["patients/archived"] == 398
    assert row["invoices"]["source_count"] == totals["invoices"] == row["invoices"]["in_scope"]
    assert row["individual_appointments"]["in_scope"] == totals["individual_appointments"]
    # The excluded practitioner's appointments are in scope, skipped, and still reconcile.
    appointments = row["individual_appointments"]
    assert appointments["skipped"] > 0
    assert (
        appointments["in_destination"]
        == appointments["created"]
        == appointments["in_scope"] - appointments["skipped"]
        == appointments["in_destination_records"]
    )
    # One former practitioner went to "Former practitioner": one destination record each.
    assert migrated.to_former == 1
    assert row["practitioners"]["in_destination_records"] == row["practitioners"]["in_destination"]
    # Balances: every patient brought, none differing, and the total owed equals the store's own column.
    assert result.balances.height == 398 and result.balance_diffs.height == 0
    assert result.balances.schema["difference"] == pl.Decimal(38, 2)
    owed = sum(Decimal(v) for (v,) in copy.sql("SELECT outstanding FROM clinic.invoices") if v is not None)
    assert result.balances["source_outstanding"].sum() == owed != 0
    # Written for an analyst: each frame as CSV and Parquet; a file where the folder should be is one sentence.
    files = result.write(copy.ledger.path.parent / "check")
    assert len(files) == 16 and pl.read_parquet(files[1]).equals(result.counts)
    with pytest.raises(ConfigError) as refused:
        result.write(files[0])
    assert str(refused.value) == (
        f"Cannot use {files[0]}: a file is already there where a folder for the check's CSV and Parquet files "
        "is needed."
    )
    with pytest.raises(
        ConfigError
    ) as refused:  # a folder the file system will not make: said, not raised raw
        result.write(files[0] / "inside")
    assert str(refused.value) == f"Cannot use {files[0] / 'inside'}: not a directory."
    (copy.ledger.path.parent / "check" / "balances.csv").unlink()
    (
        copy.ledger.path.parent / "check" / "balances.csv"
    ).mkdir()  # where a file goes: Polars' own error names none
    with pytest.raises(ConfigError) as refused:
        result.write(copy.ledger.path.parent / "check")
    assert (
        str(refused.value)
        == f"Cannot use {copy.ledger.path.parent / 'check' / 'balances.csv'}: is a directory."
    )


def test_a_batch_part_way_through_its_deletion_is_not_called_deleted(
    copy: Copy, source: ClinikoClient
) -> None:
    """QA: a deletion interrupted from its progress callback left status deleting, said as 'has been deleted'."""
    copy.ledger.set_status(copy.batch_id, "deleting")
    with pytest.raises(ConfigError) as refused:
        reconcile(copy.ledger, copy.batch_id, source=source, store=copy.store)
    assert str(refused.value) == (
        f"Batch {copy.batch_id} is part-way through its deletion: finish deleting it (delete it again); nothing "
        "of it will be left to reconcile."
    )


def test_former_practitioners_sharing_one_record_are_counted_as_the_records_they_are(
    demo_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A walkthrough saw "In the destination 9, Destination total 8": two formers, one record."""
    both = migrate(demo_sandbox, tmp_path, exclude_first=False)
    assert both.to_former == 2
    ledger, store = open_local_store(f"sqlite:{tmp_path / 'clinic.db'}", tmp_path / "workspace")
    with ledger:
        row = counts(ledger, both.batch_id, store=store).row(
            by_predicate=pl.col("entity") == "practitioners", named=True
        )
        assert row["in_destination"] == row["in_scope"] == row["created"] + row["linked"]
        assert row["in_destination_records"] == row["in_destination"] - 1
        assert row["in_destination_total"] == store.count("practitioners")
        assert row["difference"] == 0


def test_an_invoice_amount_tampered_with_shows_as_that_patients_difference(
    copy: Copy, source: ClinikoClient
) -> None:
    invoice_id, total, patient = copy.sql(
        "SELECT i.id, i.total_amount, p.source_id FROM clinic.invoices i JOIN clinic.patients p ON p.id = i.patient_id"
        " WHERE i.status = 10 ORDER BY i.id LIMIT 1"
    )[0]
    copy.sql(
        "UPDATE clinic.invoices SET total_amount = ? WHERE id = ?",
        str(Decimal(total) + Decimal("12.34")),
        invoice_id,
    )
    result = check(copy, source)
    diffs = result.balance_diffs.to_dicts()
    assert [(d["patient_id"], d["difference"]) for d in diffs] == [(patient, Decimal("12.34"))]
    assert diffs[0]["destination_outstanding"] - diffs[0]["source_outstanding"] == Decimal("12.34")
    assert nonzero(result.counts, "difference") == {}  # every record is there; only the money differs
    assert result.problems == [
        f"1 patient's balance differs from Cliniko's: {diffs[0]['patient']} ({patient}) by +12.34."
    ]


def test_an_amount_that_is_not_one_is_named_in_one_sentence(copy: Copy, source: ClinikoClient) -> None:
    """A total typed by hand with a decimal comma: reconciliation names the invoice rather than failing."""
    (invoice_id,) = copy.sql("SELECT min(id) FROM clinic.invoices WHERE status = 10")[0]
    copy.sql("UPDATE clinic.invoices SET total_amount = '12,50' WHERE id = ?", invoice_id)
    with pytest.raises(MigratorError) as raised:
        check(copy, source)
    assert str(raised.value) == (
        f"Invoice {invoice_id} in the local clinic store {copy.store.path} has total_amount '12,50', which is "
        "not an amount; correct it there (as digits with a point, e.g. 12.50) to compare balances."
    )


def test_a_business_batch_after_a_full_one_compares_only_the_invoices_of_its_plan(
    copy: Copy, source: ClinikoClient
) -> None:
    """The store also holds the full batch's invoices at the other businesses: they are not this plan's.

    The source side reads the business's invoices only, so the destination side leaves out
    what another plan of this source brought, and the balances agree.
    """
    full = Plan.model_validate(copy.ledger.batch(copy.batch_id).plan)
    business = next(iter(source.pages("businesses"))).records[0]["id"]
    plan = full.model_copy(update={"scope": Scope.parse(f"business:{business}")})
    narrower = run_plan(plan, source, copy.store, copy.ledger)
    result = reconcile(copy.ledger, narrower.batch_id, source=source, store=copy.store)
    assert result.balances.height > 50
    assert result.balances.filter(pl.col("destination_outstanding") != 0).height > 10
    assert result.balance_diffs.height == 0, result.balance_diffs.head(3).to_dicts()
    # The full batch still compares every invoice of its patients.
    whole = reconcile(copy.ledger, copy.batch_id, source=source, store=copy.store)
    assert whole.balance_diffs.height == 0
    assert whole.balances["destination_outstanding"].sum() > result.balances["destination_outstanding"].sum()


def test_a_deleted_destination_appointment_shows_as_one_missing(copy: Copy, source: ClinikoClient) -> None:
    (gone,) = copy.sql("SELECT min(id) FROM clinic.individual_appointments")[0]
    copy.sql("DELETE FROM clinic.individual_appointments WHERE id = ?", gone)
    result = check(copy, source)
    assert nonzero(result.counts, "difference") == {"individual_appointments": -1}
    assert (
        nonzero(result.counts, "source_difference") == {}
    )  # the source still has it: the plan accounts for it
    assert result.balance_diffs.height == 0
    assert not result.ok
    (source_id,) = copy.sql(
        "SELECT source_id FROM items WHERE batch_id = ? AND entity = 'individual_appointments' "
        "AND dest_id = ?",
        copy.batch_id,
        str(gone),
    )[0]
    assert result.missing.rows() == [("individual_appointments", source_id, str(gone))]
    assert result.problems == [
        "individual_appointments: 1 record the batch brought is missing from the destination: "
        f"source id {source_id} (destination id {gone})."
    ]
    assert result.as_dict()["missing"] == [
        {"entity": "individual_appointments", "source_id": source_id, "dest_id": str(gone)}
    ]


def test_more_than_three_missing_are_counted_and_listed_in_full(copy: Copy, source: ClinikoClient) -> None:
    gone = [r[0] for r in copy.sql("SELECT id FROM clinic.medical_alerts ORDER BY id LIMIT 5")]
    copy.sql(f"DELETE FROM clinic.medical_alerts WHERE id IN ({', '.join('?' * len(gone))})", *gone)
    result = check(copy, source)
    assert sorted(int(d) for d in result.missing["dest_id"]) == gone
    (problem,) = result.problems
    assert problem.startswith(
        "medical_alerts: 5 records the batch brought are missing from the destination: "
    )
    assert problem.count("source id ") == 3 and problem.endswith(" and 2 more (see missing).")


def test_a_dropped_invoice_shows_in_the_counts_and_its_patients_balance(
    copy: Copy, source: ClinikoClient
) -> None:
    invoice_id, total, patient = copy.sql(
        "SELECT i.id, i.total_amount, p.source_id FROM clinic.invoices i JOIN clinic.patients p ON p.id = i.patient_id"
        " WHERE i.status = 10 AND EXISTS (SELECT 1 FROM clinic.invoice_items t WHERE t.invoice_id = i.id)"
        " ORDER BY i.id DESC LIMIT 1"
    )[0]
    (items,) = copy.sql("SELECT count(*) FROM clinic.invoice_items WHERE invoice_id = ?", invoice_id)[0]
    copy.sql("DELETE FROM clinic.invoice_items WHERE invoice_id = ?", invoice_id)
    copy.sql("DELETE FROM clinic.invoices WHERE id = ?", invoice_id)
    result = check(copy, source)
    assert nonzero(result.counts, "difference") == {"invoices": -1, "invoice_items": -items}
    assert [(d["patient_id"], d["difference"]) for d in result.balance_diffs.to_dicts()] == [
        (patient, -Decimal(total))
    ]


def test_an_invoice_moved_to_the_wrong_patient_shows_on_both(copy: Copy, source: ClinikoClient) -> None:
    invoice_id, total, owner = copy.sql(
        "SELECT i.id, i.total_amount, p.source_id FROM clinic.invoices i JOIN clinic.patients p ON p.id = i.patient_id"
        " WHERE i.status = 40 ORDER BY i.id LIMIT 1"  # an open credit: its total counts as it stands
    )[0]
    other_id, other = copy.sql(
        "SELECT id, source_id FROM clinic.patients WHERE source_id != ? AND source_id IS NOT NULL ORDER BY id LIMIT 1",
        owner,
    )[0]
    copy.sql("UPDATE clinic.invoices SET patient_id = ? WHERE id = ?", other_id, invoice_id)
    result = check(copy, source)
    moved = Decimal(total)
    assert dict(result.balance_diffs.select("patient_id", "difference").iter_rows()) == {
        owner: -moved,
        other: moved,
    }
    assert nonzero(result.counts, "difference") == {}
    assert result.moved_invoices.select(
        "dest_id", "patient_id", "destination_patient_id", "status"
    ).rows() == [(str(invoice_id), owner, other, 40)]


def test_a_paid_invoice_moved_to_another_patient_is_named_though_no_balance_moves(
    copy: Copy, source: ClinikoClient
) -> None:
    """A walkthrough found a paid or closed invoice given to the wrong patient caught by nothing: it owes 0."""
    moved = copy.sql(
        "SELECT i.id, i.source_id, i.number, i.status, p.source_id FROM clinic.invoices i"
        " JOIN clinic.patients p ON p.id = i.patient_id WHERE i.status IN (20, 30) ORDER BY i.id LIMIT 4"
    )
    other_id, other = copy.sql(
        "SELECT id, source_id FROM clinic.patients WHERE source_id IS NOT NULL ORDER BY id DESC LIMIT 1"
    )[0]
    (stranger_id,) = copy.sql(  # a patient the clinic made by hand in the store
        "INSERT INTO clinic.patients (first_name, last_name) VALUES ('Made', 'By hand') RETURNING id"
    )[0]
    for n, (invoice_id, *_) in enumerate(moved):
        copy.sql(
            "UPDATE clinic.invoices SET patient_id = ? WHERE id = ?",
            other_id if n < 3 else stranger_id,
            invoice_id,
        )
    result = check(copy, source)
    assert result.balance_diffs.height == 0 and nonzero(result.counts, "difference") == {}
    assert result.moved_invoices.rows() == sorted(
        (sid, str(dest), str(number), status, owner, other if n < 3 else None)
        for n, (dest, sid, number, status, owner) in enumerate(moved)
    )
    (problem,) = result.problems
    first = result.moved_invoices.row(0, named=True)
    assert problem.startswith(
        f"invoices: 4 invoices are with another patient in the destination than in Cliniko: number {first['number']} "
        f"(source id {first['source_id']}) is patient {first['patient_id']}'s in Cliniko but here belongs to a patient "
        "no batch brought, "
    )
    assert problem.endswith(" and 1 more (see moved_invoices).")
    assert result.as_dict()["moved_invoices"][0]["source_id"] == first["source_id"]


def test_skipped_rows_and_their_summary(copy: Copy, migrated: Migrated) -> None:
    rows = skipped(copy.ledger, copy.batch_id)
    assert list(rows.columns) == ["entity", "source_id", "reason_code", "reason"]
    assert rows.height > 0 and rows["reason"].null_count() == 0
    summary = skipped_summary(copy.ledger, copy.batch_id)
    assert list(summary.columns) == ["entity", "reason_code", "count"]
    assert summary["count"].sum() == rows.height
    assert set(summary["reason_code"]) == {"practitioner_excluded"}  # what the mapping decided, nothing else
    by_entity = dict(summary.select("entity", "count").iter_rows())
    ledger_counts = copy.ledger.counts(copy.batch_id)
    assert by_entity == {e: c["skipped"] for e, c in ledger_counts.items() if c["skipped"]}
    assert rows.filter(pl.col("entity") == "practitioners")["source_id"].to_list() == [migrated.excluded]


def test_counts_without_a_store_or_a_source_leave_those_columns_empty(copy: Copy) -> None:
    frame = counts(copy.ledger, copy.batch_id)
    for column in (
        "in_destination",
        "difference",
        "in_destination_total",
        "source_count",
        "source_difference",
    ):
        assert frame[column].null_count() == frame.height, column
    assert (
        frame["in_scope"] == frame["created"] + frame["linked"] + frame["already_present"] + frame["skipped"]
    ).all()


def test_a_count_on_one_side_keeps_the_other_sides_last_count(copy: Copy, source: ClinikoClient) -> None:
    at_destination = counts(copy.ledger, copy.batch_id, store=copy.store)
    at_source = counts(copy.ledger, copy.batch_id, source=source)
    both = merged_counts(at_source, at_destination)
    assert both.columns == list(COUNT_SCHEMA) and both["entity"].to_list() == at_source["entity"].to_list()
    for column in ("in_destination", "difference", "in_destination_total"):
        assert both[column].to_list() == at_destination[column].to_list(), column
    for column in ("source_count", "source_difference"):
        assert both[column].to_list() == at_source[column].to_list(), column
    assert both["in_destination"].null_count() == 0 and both["source_count"].null_count() == 0
    # The newer count wins where both have one; nothing to merge with leaves it as it is.
    assert (
        merged_counts(at_destination, both)["source_count"].to_list() == at_source["source_count"].to_list()
    )
    assert merged_counts(at_source, None).equals(at_source)


def test_reconcile_from_the_command_line(demo_sandbox: RunningSandbox, tmp_path: Path) -> None:
    mapping = setup_workspace(demo_sandbox, tmp_path)
    key = demo_sandbox.key("source")
    run = cli(
        demo_sandbox,
        "run", "--to", f"sqlite:{tmp_path / 'clinic.db'}", "--workspace", str(tmp_path), "--mapping", str(mapping),
        "--include", "patients,invoices", "--json", key=key,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    batch_id = json.loads(run.stdout)["batch_id"]

    clean = cli(demo_sandbox, "reconcile", batch_id, "--workspace", str(tmp_path), "--json", key=key)
    assert clean.returncode == 0, clean.stderr
    report = json.loads(clean.stdout)
    keys = {
        "batch_id",
        "reconciled",
        "counts",
        "missing",
        "balances_checked",
        "balance_diffs",
        "moved_invoices",
        "skipped",
        "flagged",
        "updated",
        "problems",
    }
    assert set(report) == keys
    helped = " ".join(cli(demo_sandbox, "reconcile", "--help", key=key).stdout.split())
    assert all(f'"{k}"' in helped for k in keys), helped  # the help names every key
    patients = next(r for r in report["counts"] if r["entity"] == "patients")
    assert report["balances_checked"] == patients["created"] > 0
    assert (
        report["balance_diffs"] == []
        and report["skipped"] == report["flagged"] == report["updated"] == 0
        and report["reconciled"] is True
    )
    assert {r["entity"] for r in report["counts"]} >= {"patients", "invoices", "invoice_items"}
    assert all(r["difference"] == 0 and r["source_difference"] == 0 for r in report["counts"])

    with sqlite3.connect(tmp_path / "clinic.db") as conn:
        invoice_id, patient = conn.execute(
            "SELECT i.id, p.source_id FROM invoices i JOIN patients p ON p.id = i.patient_id WHERE i.status = 10"
            " ORDER BY i.id LIMIT 1"
        ).fetchone()
        conn.execute("UPDATE invoices SET status = 20 WHERE id = ?", (invoice_id,))  # marked paid by mistake
    differs = cli(
        demo_sandbox,
        "reconcile",
        batch_id,
        "--workspace",
        str(tmp_path),
        "--json",
        "--out",
        str(tmp_path / "out"),
        key=key,
    )
    assert differs.returncode == 1, differs.stderr
    report = json.loads(differs.stdout)
    assert [d["patient_id"] for d in report["balance_diffs"]] == [patient]
    assert Decimal(report["balance_diffs"][0]["difference"]) < 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{name}.{ext}"
        for name in (
            "counts",
            "missing",
            "balances",
            "moved_invoices",
            "skipped",
            "skipped_summary",
            "flagged",
            "updated",
        )
        for ext in ("csv", "parquet")
    )
    balances = pl.read_parquet(tmp_path / "out" / "balances.parquet")
    assert isinstance(balances.schema["difference"], pl.Decimal)
    assert balances.filter(pl.col("difference") != 0)["patient_id"].to_list() == [patient]
    told = cli(
        demo_sandbox,
        "reconcile",
        batch_id,
        "--workspace",
        str(tmp_path),
        "--out",
        str(tmp_path / "again"),
        key=key,
    )
    assert told.returncode == 1
    assert "skipped  removed  in dest" in told.stdout.splitlines()[0]
    assert (
        f"Balances: {balances.height:,} patients checked against Cliniko's invoices; 1 differ." in told.stdout
    )
    assert "It does not reconcile:" in told.stdout and f"({patient})" in told.stdout
    assert (
        f"Wrote 16 files to {tmp_path / 'again'}: counts, missing, balances, moved_invoices, skipped, "
        "skipped_summary, flagged, updated (CSV and Parquet)."
    ) in told.stdout

    other = cli(
        demo_sandbox, "reconcile", batch_id, "--workspace", str(tmp_path), key=demo_sandbox.key("destination")
    )
    assert other.returncode == 2 and "was read from Harbourside Physio" in other.stderr
    assert demo_sandbox.key("destination") not in other.stderr
    missing = cli(demo_sandbox, "reconcile", "b20200101-000000-0000", "--workspace", str(tmp_path), key=key)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
