"""The ledger: migrations, batches, items, progress, audit, and transactions across the attached store."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlite_utils
from pydantic import SecretStr

from migrator.destinations import LocalStore
from migrator.errors import ConfigError
from migrator.ledger import (
    CACHE_KIB,
    MIGRATIONS,
    Batch,
    BatchNotFound,
    CommitGroup,
    Item,
    Ledger,
    apply_migrations,
    may_write,
    this_worker,
)
from tests.conftest import ROOT, interrupt_at, without_file_override

ALL_MIGRATIONS = [
    "001_batches_items_audit",
    "002_progress",
    "003_items_by_source_record",
    "004_batch_worker",
    "005_destination_writes",
    "006_audit_tenant_role",
    "007_writes_sent",
    "008_writes_rewritten",
    "009_deletions",
    "010_items_noted",
    "011_progress_finished",
    "012_home",
]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ws")


def _batch(ledger: Ledger, destination: str = "sqlite:/x/clinic.db", account: str = "40117") -> Batch:
    return ledger.create_batch(source_account=account, destination=destination, plan={"scope": "all"})


# --- opening and migrations ------------------------------------------------------------


def test_opening_creates_the_workspace_and_applies_every_migration_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "new" / "ws")
    assert ledger.path == tmp_path / "new" / "ws" / "ledger.db"
    assert ledger.path.exists()
    assert ledger.applied_migrations() == ALL_MIGRATIONS
    first = ledger.conn.execute("SELECT name, applied_at FROM migrations ORDER BY id").fetchall()
    ledger.close()

    again = Ledger(tmp_path / "new" / "ws")
    assert again.conn.execute("SELECT name, applied_at FROM migrations ORDER BY id").fetchall() == first
    assert apply_migrations(again.db, MIGRATIONS) == []
    assert set(again.db.table_names()) >= {"batches", "items", "progress", "audit", "migrations"}


def test_the_workspace_and_its_databases_are_their_owners_alone(tmp_path: Path) -> None:
    """QA: ledger.db and a hosted clinic's clinic.db, patients' records, were readable by every user (0644)."""
    before = os.umask(0o022)  # the usual umask, which leaves new files readable by all
    try:
        with Ledger(tmp_path / "ws") as ledger:
            store = LocalStore(tmp_path / "ws" / "tenants" / "40117" / "clinic.db", ledger)
            _batch(ledger)  # a write: SQLite's journal came and went with the file's own mode
            store.close()
        elsewhere = tmp_path / "shared"
        elsewhere.mkdir(mode=0o755)
        with Ledger(elsewhere) as ledger:  # a folder the user made keeps its mode; the files are private
            LocalStore(elsewhere / "clinic.db", ledger).close()
    finally:
        os.umask(before)
    modes = {
        path.relative_to(tmp_path).as_posix(): stat.S_IMODE(path.stat().st_mode)
        for path in (
            tmp_path / "ws",
            tmp_path / "ws" / "ledger.db",
            tmp_path / "ws" / "tenants" / "40117" / "clinic.db",
        )
    }
    assert modes == {"ws": 0o700, "ws/ledger.db": 0o600, "ws/tenants/40117/clinic.db": 0o600}
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in elsewhere.iterdir()} == {0o600}


def test_an_old_ledger_gets_the_missing_migrations_and_keeps_its_rows(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    old = sqlite_utils.Database(workspace / "ledger.db")
    MIGRATIONS.apply(old, stop_before="002_progress")
    old.table("batches").insert(
        {
            "id": "b20250101-000000-abcd",
            "created_at": "2025-01-01T00:00:00.000000+00:00",
            "updated_at": "2025-01-01T00:00:00.000000+00:00",
            "status": "completed",
            "source_account": "40117",
            "destination": "sqlite:/x",
            "actor": "cli",
        }
    )
    assert "progress" not in old.table_names()
    old.close()

    ledger = Ledger(workspace)
    assert ledger.applied_migrations() == ALL_MIGRATIONS
    assert "progress" in ledger.db.table_names()
    assert ["entity", "source_id"] in [ix.columns for ix in ledger.db.table("items").indexes]
    assert ledger.batch("b20250101-000000-abcd").status == "completed"


def test_an_old_ledger_that_may_not_be_written_is_refused_in_one_sentence_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    """Bringing an old ledger up to date writes it: one that may only be read says so, untouched."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    old = sqlite_utils.Database(workspace / "ledger.db")
    MIGRATIONS.apply(old, stop_before="012_home")
    old.close()
    (workspace / "ledger.db").chmod(0o444)
    before = (workspace / "ledger.db").read_bytes()
    listed = subprocess.run(
        [
            *without_file_override(),
            sys.executable,
            "-m",
            "migrator",
            "batches",
            "--workspace",
            str(workspace),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert listed.returncode == 2
    assert listed.stderr == (
        f"error: Cannot use {workspace / 'ledger.db'} as the ledger: it was last used by an earlier version of the "
        "migrator and must be brought up to date, which writes it, but it or the folder it is in may be read but "
        "not written; let this user write both (or open a writable copy of the workspace).\n"
    )
    assert (workspace / "ledger.db").read_bytes() == before


def test_a_store_that_is_not_there_is_not_said_to_be_read_only(tmp_path: Path) -> None:
    """A batch's store moved away or deleted by hand is another matter than one that may not be written."""
    assert may_write(tmp_path / "absent.db")
    assert may_write(tmp_path / "gone" / "clinic.db")
    with Ledger(tmp_path / "ws") as ledger:
        assert ledger.may_write()


def test_a_copied_ledger_knows_its_original_while_that_is_there_and_a_moved_one_does_not(
    tmp_path: Path,
) -> None:
    original, copy, moved = tmp_path / "original", tmp_path / "copy", tmp_path / "moved"
    with Ledger(original) as ledger:
        _batch(ledger, destination="sqlite:/shared/clinic.db")
        assert ledger.originals() == []
    shutil.copytree(original, copy)
    (tmp_path / "link").symlink_to(original)
    with Ledger(tmp_path / "link") as ledger:  # the same file by another name is no copy
        assert ledger.originals() == []
    with Ledger(copy) as ledger:
        assert ledger.originals() == [(original / "ledger.db").resolve()]
        assert ledger.original_writing_to("sqlite:/shared/clinic.db") == (original / "ledger.db").resolve()
        assert ledger.original_writing_to(f"sqlite:{copy / 'clinic.db'}") is None
    shutil.copytree(copy, tmp_path / "copy of copy")
    with Ledger(tmp_path / "copy of copy") as ledger:
        assert ledger.originals() == [(original / "ledger.db").resolve(), (copy / "ledger.db").resolve()]
    with Ledger(original) as ledger:  # opened again where it always was: the original
        assert ledger.originals() == []

    shutil.move(original, moved)
    with Ledger(moved) as ledger:
        assert ledger.originals() == []
    with Ledger(copy) as ledger:  # the original moved away: nothing left to keep it from
        assert ledger.originals() == []
        assert ledger.original_writing_to("sqlite:/shared/clinic.db") is None

    # A copy first opened while its original is away looks moved; once the original is back, it is known again.
    shutil.copytree(moved, tmp_path / "late copy")
    shutil.move(moved, tmp_path / "away")
    with Ledger(tmp_path / "late copy") as ledger:
        assert ledger.originals() == []
    shutil.move(tmp_path / "away", moved)
    with Ledger(tmp_path / "late copy") as ledger:
        assert ledger.original_writing_to("sqlite:/shared/clinic.db") == (moved / "ledger.db").resolve()


def test_connection_is_rollback_journal_with_foreign_keys_and_a_busy_timeout(ledger: Ledger) -> None:
    assert ledger.conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert ledger.conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert ledger.conn.execute("PRAGMA busy_timeout").fetchone() == (10000,)


# --- batches ---------------------------------------------------------------------------


def test_batch_lifecycle_statuses_finished_at_and_audit_trail(ledger: Ledger) -> None:
    before = datetime.now(UTC)
    batch = _batch(ledger)
    assert re.fullmatch(r"b\d{8}-\d{6}-[0-9a-f]{4}", batch.id)
    assert batch.status == "running"
    assert batch.created_at.tzinfo is not None and before <= batch.created_at <= datetime.now(UTC)
    assert batch.id[1:16] == batch.created_at.strftime("%Y%m%d-%H%M%S")
    assert (batch.source_account, batch.destination, batch.plan, batch.counts, batch.actor) == (
        "40117",
        "sqlite:/x/clinic.db",
        {"scope": "all"},
        {},
        "cli",
    )
    assert batch.finished_at is None

    assert ledger.set_status(batch.id, "stopped", actor="ops").finished_at is None
    assert ledger.set_status(batch.id, "running").status == "running"
    failed = ledger.set_status(batch.id, "failed", detail={"error": "Cliniko was unreachable."})
    assert failed.finished_at is not None
    assert ledger.set_status(batch.id, "running").finished_at is None  # resumed: not finished any more
    done = ledger.set_status(batch.id, "completed")
    assert done.finished_at is not None and done.updated_at == done.finished_at
    assert ledger.set_status(batch.id, "deleting").finished_at == done.finished_at

    log = ledger.audit_log(batch.id)
    assert [e["action"] for e in log] == ["run", "stop", "resume", "fail", "resume", "complete", "delete"]
    assert log[0]["detail"] == {"source_account": "40117", "destination": "sqlite:/x/clinic.db"}
    assert log[1]["actor"] == "ops" and log[1]["detail"] == {"from": "running", "to": "stopped"}
    assert log[3]["detail"] == {"from": "running", "to": "failed", "error": "Cliniko was unreachable."}
    assert all(e["batch_id"] == batch.id for e in log)


def test_batches_are_listed_newest_first_and_unknown_ones_raise(ledger: Ledger) -> None:
    first, second = _batch(ledger), _batch(ledger)
    assert [b.id for b in ledger.batches()] == [second.id, first.id]
    assert first.id != second.id
    with pytest.raises(BatchNotFound, match="no batch b-nope") as caught:
        ledger.batch("b-nope")
    assert isinstance(caught.value, ConfigError)
    with pytest.raises(BatchNotFound):
        ledger.set_status("b-nope", "stopped")
    with pytest.raises(ValueError, match="unknown batch status"):
        ledger.set_status(first.id, "paused")


def test_a_listing_counts_a_killed_run_from_its_items(ledger: Ledger) -> None:
    """A run killed before it saved its counts still shows what it created (what its deletion would take)."""
    killed, ended = _batch(ledger), _batch(ledger)
    for batch in (killed, ended):
        ledger.record_items(
            batch.id, [Item("patients", "1", "10", "created"), Item("patients", "2", "11", "created")]
        )
    ledger.set_status(ended.id, "stopped")  # saved counts are what a finished listing shows
    ledger.save_counts(ended.id)
    assert {b.id: b.counts for b in ledger.batches()}[killed.id] == {}
    listed = {b.id: b.counts for b in ledger.batches(current_counts=True)}
    assert listed[killed.id]["patients"]["created"] == 2 == listed[ended.id]["patients"]["created"]


def test_the_48_hour_window_is_exclusive(ledger: Ledger) -> None:
    batch = ledger.set_status(_batch(ledger).id, "completed")
    at = batch.created_at
    ok, why = batch.deletable(now=at + timedelta(hours=47, minutes=59))
    assert ok and why == f"Batch {batch.id} can be deleted for another 0 h 01 min."
    ok, why = batch.deletable(now=at + timedelta(hours=48))
    assert not ok
    assert why == (
        f"Batch {batch.id} was created 48 hours ago; batches can only be deleted within 48 hours of their import."
    )
    ok, why = batch.deletable(now=at + timedelta(days=3, hours=2))
    assert not ok and f"Batch {batch.id} was created 3 days ago;" in why
    assert batch.deletable()[0]  # just created


def test_deletable_by_status(ledger: Ledger) -> None:
    batch = _batch(ledger)
    late = batch.created_at + timedelta(days=5)
    assert batch.deletable() == (False, f"Batch {batch.id} is still running; stop it before deleting it.")
    assert ledger.set_status(batch.id, "stopped").deletable()[0]
    deleting = ledger.set_status(batch.id, "deleting")
    assert deleting.deletable(now=late)[0]  # an interrupted deletion may always finish
    deleted = ledger.set_status(batch.id, "deleted")
    assert deleted.deletable() == (False, f"Batch {batch.id} has already been deleted.")
    assert deleted.finished_at is not None
    with pytest.raises(ConfigError, match="has been deleted"):
        ledger.set_status(batch.id, "running")
    assert ledger.batch(batch.id).status == "deleted"


def test_plan_must_be_plain_json_so_a_key_cannot_be_stored(ledger: Ledger) -> None:
    with pytest.raises(TypeError):
        ledger.create_batch(source_account="1", destination="d", plan={"key": SecretStr("MS-secret-au1")})
    assert ledger.batches() == []
    assert b"MS-secret-au1" not in ledger.path.read_bytes()


# --- items -----------------------------------------------------------------------------


def test_items_upsert_on_batch_entity_source_and_count(ledger: Ledger) -> None:
    batch = _batch(ledger)
    ledger.record_items(
        batch.id,
        [
            Item("patients", "1", "10", "created"),
            Item("patients", "2", None, "skipped", "no_name", "The patient has no name."),
            Item("patients", "3", "7", "linked"),
            Item("practitioners", "5", "1", "linked"),
        ],
    )
    # A resumed page writes the same source record again: one row, the newest outcome.
    ledger.record_items(batch.id, [Item("patients", "2", "11", "created")])
    rows = ledger.conn.execute(
        "SELECT entity, source_id, dest_id, action, reason_code, reason FROM items ORDER BY rowid"
    ).fetchall()
    assert rows == [
        ("patients", "1", "10", "created", None, None),
        ("patients", "2", "11", "created", None, None),
        ("patients", "3", "7", "linked", None, None),
        ("practitioners", "5", "1", "linked", None, None),
    ]
    assert ledger.item(batch.id, "patients", "2") == Item("patients", "2", "11", "created")
    assert ledger.item(batch.id, "patients", "99") is None
    assert [i.source_id for i in ledger.items(batch.id, entity="patients", action="created")] == ["1", "2"]
    assert ledger.done_source_ids(batch.id, "patients") == {"1", "2", "3"}
    expected = {
        "patients": {"created": 2, "linked": 1, "already_present": 0, "skipped": 0},
        "practitioners": {"created": 0, "linked": 1, "already_present": 0, "skipped": 0},
    }
    assert ledger.counts(batch.id) == expected
    assert ledger.batch(batch.id).counts == {}
    assert ledger.save_counts(batch.id) == expected
    assert ledger.batch(batch.id).counts == expected


def test_many_items_in_one_call_land_in_order_and_a_repeated_record_keeps_its_last_outcome(
    ledger: Ledger,
) -> None:
    # More rows than one statement takes (500), and one source record twice within a statement.
    batch = _batch(ledger)
    items = [Item("patients", str(n), str(1000 + n), "created") for n in range(1, 1202)]
    items.insert(700, Item("patients", "650", None, "skipped", "invalid", "The patient has no name."))
    assert ledger.record_items(batch.id, items) == 1202
    rows = ledger.conn.execute("SELECT source_id, dest_id, action FROM items ORDER BY rowid").fetchall()
    assert len(rows) == 1201
    assert rows[:2] == [("1", "1001", "created"), ("2", "1002", "created")]
    assert rows[649] == ("650", None, "skipped")  # the later of the two, in the first's place
    assert rows[-1] == ("1201", "2201", "created")
    assert ledger.counts(batch.id)["patients"] == {
        "created": 1200,
        "linked": 0,
        "already_present": 0,
        "skipped": 1,
    }


def test_flagged_items_are_the_ones_that_came_across_but_want_a_look(ledger: Ledger) -> None:
    batch = _batch(ledger)
    ledger.record_items(
        batch.id,
        [
            Item("patients", "1", "10", "created"),
            Item("patients", "2", "11", "created", "review_shared_email", "Shares an email with patient 10."),
            Item(
                "patients", "3", "12", "already_present", "updated", "Changed in Cliniko; updated in place."
            ),
            Item("patients", "4", "13", "already_present", "update_refused", "Cliniko refused it."),
            Item(
                "treatment_notes", "5", "14", "already_present", "deleted_at_source_kept", "Kept: added to."
            ),
            Item("patients", "6", None, "skipped", "review_like_but_skipped", "Skipped."),
            Item("patients", "7", "15", "created", "reviewed", "Not a review_ code: no underscore."),
        ],
    )
    other = _batch(ledger)
    ledger.record_items(
        other.id, [Item("patients", "2", "11", "created", "review_ambiguous_match", "Twice.")]
    )
    frame = ledger.flagged_frame(batch.id)
    assert frame.columns == ["entity", "source_id", "dest_id", "action", "reason_code", "reason"]
    assert frame.select("source_id", "reason_code").rows() == [
        ("2", "review_shared_email"),
        ("4", "update_refused"),
        ("5", "deleted_at_source_kept"),
    ]
    assert ledger.flagged_frame(other.id)["reason_code"].to_list() == ["review_ambiguous_match"]


def test_a_destination_record_is_claimed_by_one_record_of_each_source_account(ledger: Ledger) -> None:
    """Twins at one clinic never share a destination patient; the same person at two clinics may.

    Merging two Cliniko accounts into one store, each account's record of the same person
    links to the one destination patient, whether the other account linked it or created it.
    """
    harbourside = _batch(ledger, account="Harbourside")
    ledger.record_items(harbourside.id, [Item("patients", "5", "77", "linked", "same_name_and_birth_date")])
    claimed = ledger.linked_elsewhere
    assert (
        claimed("sqlite:/x/clinic.db", "patients", "77", source_id="5", source_account="Harbourside") is False
    )
    assert (
        claimed("sqlite:/x/clinic.db", "patients", "77", source_id="9", source_account="Harbourside") is True
    )
    # Another account: its own record of that person, whatever its id there.
    assert claimed("sqlite:/x/clinic.db", "patients", "77", source_id="9", source_account="Bayside") is False
    assert claimed("sqlite:/x/clinic.db", "patients", "77", source_id="5", source_account="Bayside") is False
    # Another destination, or a deleted batch, claims nothing.
    assert (
        claimed("sqlite:/y/clinic.db", "patients", "77", source_id="9", source_account="Harbourside") is False
    )
    ledger.set_status(harbourside.id, "deleted")
    assert (
        claimed("sqlite:/x/clinic.db", "patients", "77", source_id="9", source_account="Harbourside") is False
    )


def test_items_are_checked_before_anything_is_written(ledger: Ledger) -> None:
    batch = _batch(ledger)
    with pytest.raises(ValueError, match="unknown item action"):
        ledger.record_items(batch.id, [Item("patients", "1", "1", "made")])
    with pytest.raises(ValueError, match="nothing is skipped silently"):
        ledger.record_items(batch.id, [Item("patients", "1", None, "skipped", "x")])
    with pytest.raises(ValueError, match="no destination id"):
        ledger.record_items(
            batch.id, [Item("patients", "1", "1", "created"), Item("patients", "2", None, "linked")]
        )
    with pytest.raises(sqlite3.IntegrityError):
        ledger.record_items("b-unknown", [Item("patients", "1", "1", "created")])
    assert ledger.conn.execute("SELECT count(*) FROM items").fetchone() == (0,)


def test_items_stream_past_one_chunk_in_order(ledger: Ledger) -> None:
    batch = _batch(ledger)
    ledger.record_items(batch.id, (Item("patients", str(n), str(n), "created") for n in range(2500)))
    assert [i.source_id for i in ledger.items(batch.id)] == [str(n) for n in range(2500)]


@contextmanager
def sqlite_work(conn: sqlite3.Connection) -> Iterator[Callable[[], int]]:
    """How much SQLite works on ``conn`` inside the block: ``work()``, in hundreds of VM instructions."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 100)  # called every 100 virtual machine instructions
    try:
        yield lambda: steps
    finally:
        conn.set_progress_handler(None, 0)


def test_streaming_items_costs_sqlite_work_in_proportion_to_their_number(ledger: Ledger) -> None:
    """Each chunk used to sort the entity's every item again: a large clinic's appointments took minutes."""
    batch = _batch(ledger)

    def steps_to_read(entity: str, n: int) -> int:
        ledger.record_items(batch.id, (Item(entity, str(k), str(k), "created") for k in range(n)))
        with sqlite_work(ledger.conn) as work:
            assert sum(1 for _ in ledger.items(batch.id, entity)) == n
        return work()

    small, large = steps_to_read("patients", 3_000), steps_to_read("treatment_notes", 12_000)
    # Four times the items: about four times the work (a sort's log factor aside), not sixteen.
    assert large < 6 * small, (small, large)


def test_skipped_and_flagged_records_are_found_without_reading_every_item(ledger: Ledger) -> None:
    """The Review page lists them on every visit: a large clinic's million items took 0.7 s per list."""
    batch = _batch(ledger)
    noted = [
        Item("patients", "s", None, "skipped", "invalid", "Failed validation on field email."),
        Item("patients", "f", "9", "created", "review_shared_email", "Shares an email with patient 8."),
    ]

    def steps_to_list(created: int) -> int:
        ledger.record_items(
            batch.id, (Item("invoices", f"{created}-{k}", str(k), "created") for k in range(created))
        )
        with sqlite_work(ledger.conn) as work:
            assert ledger.skipped_frame(batch.id)["source_id"].to_list() == ["s"]
            assert ledger.flagged_frame(batch.id)["source_id"].to_list() == ["f"]
        return work()

    ledger.record_items(batch.id, noted)
    few, many = steps_to_list(100), steps_to_list(20_000)
    # 200 times the items that came across plainly: next to no more work, as there is no more to list.
    assert many < 3 * few + 10, (few, many)


def test_latest_counts_count_each_record_once_by_its_newest_item(ledger: Ledger) -> None:
    older, newer = _batch(ledger), _batch(ledger)
    ledger.record_items(
        older.id,
        [
            Item("patients", "1", "10", "created"),
            Item("patients", "2", "20", "created"),
            Item("invoices", "5", None, "skipped", "invalid", "Failed validation on field total."),
        ],
    )
    ledger.record_items(
        newer.id,
        [
            Item("patients", "2", None, "skipped", "deleted_at_source", "Deleted in Cliniko since."),
            Item("patients", "3", "30", "created"),
        ],
    )
    both = [older.id, newer.id]
    assert ledger.latest_counts(both) == {"patients": 3, "invoices": 1}
    # Patient 2's newest word is that Cliniko deleted it; a skip for another reason still counts.
    assert ledger.latest_counts(both, leave_out_skipped="deleted_at_source") == {"patients": 2, "invoices": 1}
    assert ledger.latest_counts([older.id], leave_out_skipped="deleted_at_source") == {
        "patients": 2,
        "invoices": 1,
    }
    # One batch alone (counted without looking for newer items): the same rule.
    assert ledger.latest_counts([newer.id]) == {"patients": 2}
    assert ledger.latest_counts([newer.id], leave_out_skipped="deleted_at_source") == {"patients": 1}
    assert ledger.latest_counts([]) == {}


def test_dest_ids_of_a_batchs_items_with_some_actions(ledger: Ledger) -> None:
    batch, other = _batch(ledger), _batch(ledger)
    ledger.record_items(
        batch.id,
        [
            Item("patients", "1", "10", "created"),
            Item("patients", "2", "20", "already_present", "earlier_batch"),
            Item("patients", "3", None, "skipped", "invalid", "Failed validation on field email."),
            Item("invoices", "4", "40", "created"),
        ],
    )
    ledger.record_items(other.id, [Item("patients", "5", "50", "created")])
    assert ledger.dest_ids_of(batch.id, "patients", ["created", "already_present"]) == {"1": "10", "2": "20"}
    assert ledger.dest_ids_of(batch.id, "patients", ["skipped"]) == {"3": None}
    assert ledger.dest_ids_of(batch.id, "contacts", ["created"]) == {}


def test_dest_id_for_ignores_deleted_batches_other_destinations_and_accounts(ledger: Ledger) -> None:
    older = _batch(ledger)
    other_dest = _batch(ledger, destination="sqlite:/elsewhere.db")
    other_account = _batch(ledger, account="99999")
    ledger.record_items(
        older.id, [Item("patients", "1", "10", "created"), Item("patients", "2", "20", "linked")]
    )
    ledger.record_items(
        other_dest.id, [Item("patients", "1", "31", "created"), Item("patients", "3", "33", "created")]
    )
    ledger.record_items(other_account.id, [Item("patients", "3", "43", "created")])
    top_up = _batch(ledger)
    ledger.record_items(
        top_up.id,
        [
            Item("patients", "1", "10", "already_present"),  # not where it was created
            Item("patients", "4", None, "skipped", "x", "Skipped."),
        ],
    )

    def find(source_id: str, destination: str = "sqlite:/x/clinic.db", account: str = "40117") -> object:
        return ledger.dest_id_for(destination, "patients", source_id, source_account=account)

    assert find("1") == (older.id, "10")
    assert find("2") == (older.id, "20")
    assert find("3") is None  # only another destination and another account have it
    assert find("4") is None  # skipped is not a destination record
    assert find("1", destination="sqlite:/elsewhere.db") == (other_dest.id, "31")
    assert find("3", account="99999") == (other_account.id, "43")
    assert ledger.dest_id_for("sqlite:/x/clinic.db", "practitioners", "1", source_account="40117") is None
    assert ledger.dest_ids_for(
        "sqlite:/x/clinic.db", "patients", ["1", "2", "3"], source_account="40117"
    ) == {
        "1": (older.id, "10"),
        "2": (older.id, "20"),
    }

    ledger.set_status(older.id, "deleting")
    assert find("1") is None
    ledger.set_status(older.id, "deleted")
    assert find("2") is None

    newer = _batch(ledger)
    ledger.record_items(newer.id, [Item("patients", "1", "50", "created")])
    assert find("1") == (newer.id, "50")


# --- transactions ------------------------------------------------------------------------


def _on_disk(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(sql).fetchone()[0])


def test_a_failed_transaction_leaves_neither_store_rows_nor_ledger_rows(
    ledger: Ledger, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "clinic.db", ledger)
    batch = _batch(ledger, destination=store.describe())
    rows = [{"source_id": "1", "first_name": "Ann", "last_name": "Lee"}]

    with pytest.raises(RuntimeError), ledger.transaction():
        ids = store.insert("patients", rows, batch_id=batch.id, source_account="40117")
        ledger.record_items(batch.id, [Item("patients", "1", ids[0], "created")])
        ledger.update_progress(
            batch.id, "patients", done=1, total=1, created=1, linked=0, already_present=0, skipped=0
        )
        raise RuntimeError("the network went away mid-page")

    assert store.count("patients") == 0
    assert list(ledger.items(batch.id)) == []
    assert ledger.progress(batch.id) == []
    assert _on_disk(tmp_path / "clinic.db", "SELECT count(*) FROM patients") == 0

    with ledger.transaction():
        ids = store.insert("patients", rows, batch_id=batch.id, source_account="40117")
        ledger.record_items(batch.id, [Item("patients", "1", ids[0], "created")])
    # Committed in both files, as another process sees them.
    assert _on_disk(tmp_path / "clinic.db", "SELECT count(*) FROM patients") == 1
    assert _on_disk(ledger.path, "SELECT count(*) FROM items") == 1


def test_nested_transactions_are_savepoints_of_the_outer_one(ledger: Ledger) -> None:
    batch = _batch(ledger)
    with ledger.transaction():
        ledger.record_items(batch.id, [Item("patients", "1", "1", "created")])
        with pytest.raises(KeyError), ledger.transaction():
            ledger.record_items(batch.id, [Item("patients", "2", "2", "created")])
            raise KeyError("inner")
        with ledger.transaction():
            ledger.record_items(batch.id, [Item("patients", "3", "3", "created")])
        assert ledger.conn.in_transaction
    assert not ledger.conn.in_transaction
    assert ledger.done_source_ids(batch.id, "patients") == {"1", "3"}


def test_savepoints_nest_deeply_and_repeat_at_each_depth(ledger: Ledger) -> None:
    batch = _batch(ledger)
    with ledger.transaction():
        for n in ("1", "2"):  # sibling blocks reuse their depth's savepoint name
            with ledger.transaction(), ledger.transaction():
                ledger.record_items(batch.id, [Item("patients", n, n, "created")])
        with ledger.transaction():
            ledger.record_items(batch.id, [Item("patients", "3", "3", "created")])
            with pytest.raises(KeyError), ledger.transaction():
                ledger.record_items(batch.id, [Item("patients", "4", "4", "created")])
                raise KeyError("the innermost block only")
            ledger.record_items(batch.id, [Item("patients", "5", "5", "created")])
    assert ledger.done_source_ids(batch.id, "patients") == {"1", "2", "3", "5"}
    with ledger.transaction(), ledger.transaction():  # a new transaction starts from the first depth again
        ledger.record_items(batch.id, [Item("patients", "6", "6", "created")])
    assert len(ledger.done_source_ids(batch.id, "patients")) == 5


def test_both_databases_cache_a_commit_group_s_pages(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "clinic.db", ledger)
    for schema in ("main", "clinic"):  # large enough that a group never spills mid-transaction
        assert ledger.conn.execute(f"PRAGMA {schema}.cache_size").fetchone()[0] == -CACHE_KIB
    store.close()


def test_a_commit_group_keeps_savepoint_journals_in_memory_only_while_open(ledger: Ledger) -> None:
    batch = _batch(ledger)

    def temp_store() -> int:
        return int(ledger.conn.execute("PRAGMA temp_store").fetchone()[0])

    with ledger.commit_group(3600) as group:
        group.open()
        with ledger.transaction():
            ledger.record_items(batch.id, [Item("patients", "1", "1", "created")])
            assert temp_store() == 2  # memory
        group.commit()
        assert temp_store() == 0  # the default: files
        with pytest.raises(KeyError):
            group.open()
            raise KeyError("a failure inside the group")
    assert not ledger.conn.in_transaction and temp_store() == 0
    with ledger.transaction(), pytest.raises(sqlite3.OperationalError):
        ledger.commit_group(0).open()  # never inside another transaction
    assert temp_store() == 0
    assert ledger.done_source_ids(batch.id, "patients") == {"1"}


def test_a_commit_group_commits_whole_blocks_together_and_on_the_way_out(ledger: Ledger) -> None:
    batch = _batch(ledger)
    other = Ledger(ledger.workspace)  # another connection: sees only what is committed
    with pytest.raises(KeyError), ledger.commit_group(3600) as group:
        for n in ("1", "2"):
            group.open()
            with ledger.transaction():
                ledger.record_items(batch.id, [Item("patients", n, n, "created")])
            group.commit_if_due()  # not due: an hour has not passed
        assert other.done_source_ids(batch.id, "patients") == set()
        group.open()
        with ledger.transaction():  # a block that fails undoes only itself
            ledger.record_items(batch.id, [Item("patients", "3", "3", "created")])
            raise KeyError("page 3 failed")
    assert group.commits == 1
    assert not ledger.conn.in_transaction
    assert other.done_source_ids(batch.id, "patients") == {"1", "2"}


def test_a_commit_group_commits_when_due(ledger: Ledger) -> None:
    batch = _batch(ledger)
    with ledger.commit_group(0) as group:
        for n in ("1", "2", "3"):
            group.open()
            with ledger.transaction():
                ledger.record_items(batch.id, [Item("patients", n, n, "created")])
            group.commit_if_due()
        assert not ledger.conn.in_transaction
    assert group.commits == 3


# --- progress, audit, frames ----------------------------------------------------------------


def test_progress_rows_are_replaced_per_stage_in_first_report_order(ledger: Ledger) -> None:
    batch = _batch(ledger)
    ledger.update_progress(
        batch.id, "patients", done=0, total=40, created=0, linked=0, already_present=0, skipped=0
    )
    ledger.update_progress(
        batch.id, "practitioners", done=3, total=3, created=1, linked=2, already_present=0, skipped=0
    )
    ledger.update_progress(
        batch.id, "patients", done=30, total=40, created=25, linked=1, already_present=3, skipped=1
    )
    stages = ledger.progress(batch.id)
    assert [
        (s.stage, s.done, s.total, s.created, s.linked, s.already_present, s.skipped) for s in stages
    ] == [
        ("patients", 30, 40, 25, 1, 3, 1),
        ("practitioners", 3, 3, 1, 2, 0, 0),
    ]
    assert stages[0].fraction == 0.75 and stages[1].fraction == 1.0
    assert stages[0].updated_at.tzinfo is not None
    assert ledger.batch(batch.id).updated_at == stages[0].updated_at  # a heartbeat for the batch list


def test_audit_rows_without_a_batch(ledger: Ledger) -> None:
    ledger.audit("connect", actor="console", detail={"account": "Harbourside Physio"})
    batch = _batch(ledger)
    log = ledger.audit_log()
    assert [(e["action"], e["actor"], e["batch_id"]) for e in log] == [
        ("connect", "console", None),
        ("run", "cli", batch.id),
    ]
    assert log[0]["detail"] == {"account": "Harbourside Physio"}
    assert ledger.audit_log(batch.id) == log[1:]


def test_review_frames(ledger: Ledger) -> None:
    batch = _batch(ledger)
    empty = ledger.items_frame(batch.id)
    assert empty.columns == ["entity", "source_id", "dest_id", "action", "reason_code", "reason", "at"]
    assert empty.height == 0 and set(empty.dtypes) == {pl.String}
    ledger.record_items(
        batch.id,
        [
            Item("patients", "1", "10", "created"),
            Item(
                "individual_appointments",
                "5",
                None,
                "skipped",
                "practitioner_excluded",
                "Dr Old was excluded.",
            ),
        ],
    )
    items = ledger.items_frame(batch.id)
    assert items.select("source_id", "dest_id", "action").rows() == [
        ("1", "10", "created"),
        ("5", None, "skipped"),
    ]
    skipped = ledger.skipped_frame(batch.id)
    assert skipped.columns == ["entity", "source_id", "reason_code", "reason"]
    assert skipped.rows() == [
        ("individual_appointments", "5", "practitioner_excluded", "Dr Old was excluded.")
    ]


def test_progress_can_be_followed_from_another_thread(ledger: Ledger) -> None:
    batch = _batch(ledger)
    seen: list[int] = []
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            for _ in range(200):
                seen.extend(s.done for s in ledger.progress(batch.id))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    reader = threading.Thread(target=follow)
    reader.start()
    for n in range(200):
        with ledger.transaction():
            ledger.record_items(batch.id, [Item("patients", str(n), str(n), "created")])
            ledger.update_progress(
                batch.id,
                "patients",
                done=n + 1,
                total=200,
                created=n + 1,
                linked=0,
                already_present=0,
                skipped=0,
            )
    reader.join()
    assert errors == []
    assert seen == sorted(seen)  # never a half-written page, never going backwards
    assert ledger.progress(batch.id)[0].done == 200


def test_a_running_batch_records_its_process_and_only_a_live_other_process_counts(ledger: Ledger) -> None:
    import socket
    import subprocess
    import sys

    batch = _batch(ledger)
    assert batch.worker == this_worker()
    assert not batch.running_elsewhere()  # this process: its own callers know
    assert batch.state == "running"
    host = socket.gethostname()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    still = (False, f"Batch {batch.id} is still running; stop it before deleting it.")
    assert batch.deletable() == still
    try:
        ledger.conn.execute("UPDATE batches SET worker = ? WHERE id = ?", (f"{host}:{child.pid}", batch.id))
        assert ledger.batch(batch.id).running_elsewhere()
        assert ledger.batch(batch.id).deletable() == still
        assert ledger.batch(batch.id).state == "running"
    finally:
        child.kill()
        child.wait()
    assert not ledger.batch(batch.id).running_elsewhere()  # killed: resumable
    assert (ledger.batch(batch.id).status, ledger.batch(batch.id).state) == ("running", "interrupted")
    ok, why = ledger.batch(batch.id).deletable()  # ... and deletable, without resuming it first
    assert ok and why.startswith(
        f"Batch {batch.id} was interrupted (its run is no longer running); it can be"
    )
    old = ledger.batch(batch.id).deletable(now=batch.created_at + timedelta(hours=49))
    assert old == (
        False,
        f"Batch {batch.id} was created 49 hours ago; batches can only be deleted within 48 hours of their import.",
    )
    assert ledger.set_status(batch.id, "stopped").worker is None
    assert not ledger.batch(batch.id).running_elsewhere()


_GROUP_CODE = [
    CommitGroup.open.__code__,
    CommitGroup._begin.__code__,
    CommitGroup.commit.__code__,
    CommitGroup.commit_if_due.__code__,
    CommitGroup._ended.__code__,
    CommitGroup.__exit__.__code__,
    Ledger.transaction.__wrapped__.__code__,  # type: ignore[attr-defined]
]


@pytest.mark.parametrize("interval", [0, 3600])
def test_ctrl_c_at_any_line_of_a_commit_group_leaves_no_transaction_open(
    tmp_path: Path, interval: float
) -> None:
    """A Ctrl+C once landed just after ``BEGIN`` and left it open: the run's ``stopped`` was never committed.

    Here an interrupt lands before each line of the group's and the transaction's code in
    turn, the first or the second time it runs; the run then records its status, as the engine
    does. The status must reach the database, and the pages must be there whole or not at all.
    """
    landed = 0
    lines = [
        (code, line)
        for code in _GROUP_CODE
        for line in sorted({n for _, _, n in code.co_lines() if n is not None and n > code.co_firstlineno})
    ]
    for (code, line), hit in itertools.product(lines, (1, 2)):
        ledger = Ledger(tmp_path / f"ws-{code.co_name}-{line}-{hit}")
        batch = _batch(ledger)
        sys.settrace(interrupt_at(code, line, hit))
        try:
            with ledger.commit_group(interval) as group:
                for page in ("1", "2", "3"):
                    group.open()
                    with ledger.transaction():
                        items = [
                            Item("patients", f"{page}{half}", f"{page}{half}", "created") for half in "ab"
                        ]
                        ledger.record_items(batch.id, items)
                    group.commit_if_due()
        except KeyboardInterrupt:
            landed += 1
            group.commit()  # the engine's second chance, as it stops
        finally:
            sys.settrace(None)
        ledger.set_status(batch.id, "stopped", actor="cli")
        assert not ledger.conn.in_transaction, (code.co_name, line, hit)
        ledger.close()
        with Ledger(ledger.workspace) as other:
            assert other.batch(batch.id).status == "stopped", (code.co_name, line, hit)
            done = other.done_source_ids(batch.id, "patients")
            pages = {page for page in "123" if f"{page}a" in done}
            assert done == {f"{page}{half}" for page in pages for half in "ab"}, (code.co_name, line, hit)
    assert landed > len(lines) // 2  # the hook did interrupt, at most places
