"""The ledger: what every migration batch did, record by record, in ``workspace/ledger.db``.

A *batch* is one run of a plan (and its resumptions, and its deletion). For every source
record in scope the batch writes one *item*: ``created`` (a new destination record),
``linked`` (an existing destination record, e.g. a practitioner set up by hand),
``already_present`` (created by an earlier batch of the same source and destination) or
``skipped`` (with a reason code and a sentence). Items are how a run resumes, how a
top-up finds what an earlier batch brought over, and how a batch is deleted: only the
records it *created* are ever removed.

Tables (SQLite through sqlite-utils; schema changes are registered migrations, see
:data:`MIGRATIONS`)::

    batches(id PK, created_at, updated_at, finished_at, status, source_account,
            destination, plan JSON, counts JSON, actor)
    items(batch_id -> batches, entity, source_id, dest_id, action, reason_code, reason, at)
        unique (batch_id, entity, source_id); indexed (entity, source_id)
    progress(batch_id -> batches, stage, done, total, created, linked, already_present,
             skipped, updated_at, finished_at)  PK (batch_id, stage): finished_at once every
             list of the stage was read, so a resumed batch passes over the stage
    audit(id PK, at, actor, action, batch_id -> batches, detail JSON, tenant, role)
    writes(batch_id -> batches, entity, source_id, state, dest_id, intended_at, completed_at,
           probe JSON, sent JSON, sent_before JSON, rewritten_by)  PK (batch_id, entity, source_id),
           indexed (entity, dest_id): creates in a Cliniko destination, intended -> created ->
           completed (or refused), what the record last received from us, and the batch that
           last rewrote it with what it held before; see migrator.destinations.cliniko
    patient_preferences(batch_id -> batches, dest_id, source_id, reminder_type,
           receives_confirmation_emails, restored_at)  PK (batch_id, dest_id): what go-live restores
    deletions(batch_id -> batches, entity, dest_id, deleted_at)  PK (batch_id, entity, dest_id),
           indexed (entity, dest_id): what deleting a batch has removed so far
    home(id PK = 1, path)  where the ledger file was last opened
    copied_from(path PK, noticed_at)  where the ledger file was opened before (copied or moved
           from): the ones holding a ledger again are its originals (see Ledger.originals)
    migrations(id PK, migration_set, name, applied_at)

Timestamps are ISO-8601 UTC strings (``2026-11-21T13:53:01.123456+00:00``).

**Tenants** (hosted instances, :mod:`migrator.hosted`): a batch belongs to its source
account (``source_account``) and, when it writes into a Cliniko account
(``destination = "cliniko:<account id>"``), to that account too (:func:`batch_tenants`).
``batches(tenant=...)``, ``batch(id, tenant=...)`` and ``audit_log(tenant=...)`` return
only what that tenant may see; another tenant's batch id raises the same
:class:`BatchNotFound` as an unknown one. Audit rows carry the ``tenant`` and the ``role``
(``clinic``, ``operator``) of whoever acted.

**No API key is ever written here.** No method takes a key, and ``plan`` and ``detail``
must be plain JSON (a ``SecretStr`` is not JSON and is refused by ``json.dumps``): the
caller stores the plan without its keys, e.g. ``plan.model_dump(mode="json",
exclude={"source_key"})``.

The connection is in rollback-journal mode (``journal_mode=DELETE``), not WAL: the local
clinic store ATTACHes its database to this same connection, and SQLite only commits
across attached databases atomically in rollback-journal mode. So one
``with ledger.transaction():`` covers a page of destination records and their items::

    ledger = Ledger("workspace")
    batch = ledger.create_batch(source_account="40117", destination="sqlite:/w/clinic.db", plan={})
    with ledger.transaction():
        ids = store.insert("patients", rows, batch_id=batch.id, source_account="40117")
        ledger.record_items(batch.id, [Item("patients", r["source_id"], i, "created") for r, i in zip(rows, ids)])
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import sqlite_utils
from sqlite_utils.migrations import Migrations as _SqliteUtilsMigrations

from migrator.errors import ConfigError, MigratorError, database_refused
from migrator.workspace import make_private_database, read_only

__all__ = [
    "ACTIONS",
    "CACHE_KIB",
    "DELETE_WINDOW",
    "MIGRATIONS",
    "STALE_AFTER",
    "STATUSES",
    "Batch",
    "BatchNotFound",
    "CommitGroup",
    "Item",
    "Ledger",
    "SchemaMigrations",
    "StageProgress",
    "apply_migrations",
    "batch_tenants",
    "ledger_records",
    "this_worker",
]

#: A batch's life: ``running`` -> ``stopped`` / ``failed`` / ``completed`` (a stopped or
#: failed batch may be resumed: ``running`` again) -> ``deleting`` -> ``deleted``.
STATUSES = ("running", "stopped", "failed", "completed", "deleting", "deleted")
#: What became of a source record.
ACTIONS = ("created", "linked", "already_present", "skipped")
#: How long after its creation a batch may be deleted (seed 000).
DELETE_WINDOW = timedelta(hours=48)

_FINISHED = ("completed", "failed", "deleted")
# The audit action recorded when a batch enters each status.
_STATUS_AUDIT = {
    "running": "resume",
    "stopped": "stop",
    "failed": "fail",
    "completed": "complete",
    "deleting": "delete",
    "deleted": "deleted",
}
_CHUNK = 1000  # rows per read when streaming items
#: Each database's page cache on the ledger's connection, in KiB (SQLite's default is 2 MiB).
#: A commit group's pages must fit: a transaction that outgrows the cache spills dirty pages
#: into the database file mid-transaction, which first syncs the rollback journal.
CACHE_KIB = 16 * 1024


class BatchNotFound(ConfigError):
    """No batch with this id in the workspace's ledger."""


# --- migrations --------------------------------------------------------------------


class SchemaMigrations(_SqliteUtilsMigrations):
    """sqlite-utils' registered migrations, recorded in a table named ``migrations``.

    Register a migration with ``@MIGRATIONS(name="004_...")``; a migration is a small
    function of a ``sqlite_utils.Database`` and is never edited once released (a new
    change is a new migration). :func:`apply_migrations` applies the missing ones.
    """

    migrations_table = "migrations"


def apply_migrations(db: sqlite_utils.Database, migrations: SchemaMigrations) -> list[str]:
    """Apply the pending migrations in one ``BEGIN IMMEDIATE`` transaction; return their names.

    Opening an up-to-date database only reads. The write lock is taken before the
    pending list is read again, so two processes opening the same old database at once
    apply each migration once. ``db.conn`` must be in autocommit mode
    (``isolation_level=None``) and outside a transaction.
    """
    if not migrations.pending(db):
        return []
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        names = [m.name for m in migrations.pending(db)]
        migrations.apply(db)  # each migration runs in a savepoint inside this transaction
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")
    return names


MIGRATIONS = SchemaMigrations("ledger")


@MIGRATIONS(name="001_batches_items_audit")
def _batches_items_audit(db: sqlite_utils.Database) -> None:
    db.table("batches").create(
        {
            "id": str,
            "created_at": str,
            "updated_at": str,
            "finished_at": str,
            "status": str,
            "source_account": str,
            "destination": str,
            "plan": str,
            "counts": str,
            "actor": str,
        },
        pk="id",
        not_null={"created_at", "updated_at", "status", "source_account", "destination", "actor"},
        defaults={"plan": "{}", "counts": "{}"},
    )
    db.table("items").create(
        {
            "batch_id": str,
            "entity": str,
            "source_id": str,
            "dest_id": str,
            "action": str,
            "reason_code": str,
            "reason": str,
            "at": str,
        },
        foreign_keys=[("batch_id", "batches", "id")],
        not_null={"batch_id", "entity", "source_id", "action", "at"},
    )
    db.table("items").create_index(["batch_id", "entity", "source_id"], unique=True)
    db.table("audit").create(
        {"id": int, "at": str, "actor": str, "action": str, "batch_id": str, "detail": str},
        pk="id",
        foreign_keys=[("batch_id", "batches", "id")],
        not_null={"at", "actor", "action"},
        defaults={"detail": "{}"},
    )
    db.table("audit").create_index(["batch_id"])


@MIGRATIONS(name="002_progress")
def _progress(db: sqlite_utils.Database) -> None:
    counters = ("done", "total", "created", "linked", "already_present", "skipped")
    db.table("progress").create(
        {"batch_id": str, "stage": str, **dict.fromkeys(counters, int), "updated_at": str},
        pk=("batch_id", "stage"),
        foreign_keys=[("batch_id", "batches", "id")],
        not_null={"updated_at", *counters},
        defaults=dict.fromkeys(counters, 0),
    )


@MIGRATIONS(name="003_items_by_source_record")
def _items_by_source_record(db: sqlite_utils.Database) -> None:
    # dest_id_for() looks a source record up across batches.
    db.table("items").create_index(["entity", "source_id"])


@MIGRATIONS(name="004_batch_worker")
def _batch_worker(db: sqlite_utils.Database) -> None:
    # Which process is running a batch ("host:pid"), so a second process never runs it too.
    db.table("batches").add_column("worker", str)


@MIGRATIONS(name="005_destination_writes")
def _destination_writes(db: sqlite_utils.Database) -> None:
    # Writes into a Cliniko destination: recorded as intended before the request and
    # completed after, so a crash between the two is looked up, never re-sent blindly.
    db.table("writes").create(
        {
            "batch_id": str,
            "entity": str,
            "source_id": str,
            "state": str,
            "dest_id": str,
            "intended_at": str,
            "completed_at": str,
            "probe": str,
        },
        pk=("batch_id", "entity", "source_id"),
        foreign_keys=[("batch_id", "batches", "id")],
        not_null={"state", "intended_at"},
        defaults={"probe": "{}"},
    )
    # Patients are created with reminders and confirmations off; "go live" restores these.
    db.table("patient_preferences").create(
        {
            "batch_id": str,
            "dest_id": str,
            "source_id": str,
            "reminder_type": str,
            "receives_confirmation_emails": int,
            "restored_at": str,
        },
        pk=("batch_id", "dest_id"),
        foreign_keys=[("batch_id", "batches", "id")],
    )


@MIGRATIONS(name="006_audit_tenant_role")
def _audit_tenant_role(db: sqlite_utils.Database) -> None:
    # Hosted instances: whose account an audited action concerns, and in which role it was taken.
    db.table("audit").add_column("tenant", str)
    db.table("audit").add_column("role", str)
    db.table("audit").create_index(["tenant"])
    db.table("batches").create_index(["source_account"])


@MIGRATIONS(name="007_writes_sent")
def _writes_sent(db: sqlite_utils.Database) -> None:
    # What a record created in a Cliniko destination last received from us (its fields and
    # its cancelled or archived state), so a later run rewrites only what changed at the source.
    db.table("writes").add_column("sent", str)
    db.table("writes").create_index(["entity", "dest_id"])


@MIGRATIONS(name="008_writes_rewritten")
def _writes_rewritten(db: sqlite_utils.Database) -> None:
    # The batch that last rewrote a record (``rewritten_by``) and what the record held
    # before that batch's rewrite (``sent_before``), so a batch killed after a rewrite but
    # before its items were written still reports the record as updated when resumed.
    db.table("writes").add_column("sent_before", str)
    db.table("writes").add_column("rewritten_by", str)


@MIGRATIONS(name="009_deletions")
def _deletions(db: sqlite_utils.Database) -> None:
    # What deleting a batch has removed (patients in a Cliniko account: archived), chunk by
    # chunk, so a resumed deletion's plan lists only what is left, and reconciliation counts a
    # later batch's records that went with it as removed rather than missing.
    db.table("deletions").create(
        {"batch_id": str, "entity": str, "dest_id": str, "deleted_at": str},
        pk=("batch_id", "entity", "dest_id"),
        foreign_keys=[("batch_id", "batches", "id")],
        not_null={"deleted_at"},
    )
    db.table("deletions").create_index(["entity", "dest_id"])


@MIGRATIONS(name="010_items_noted")
def _items_noted(db: sqlite_utils.Database) -> None:
    # A batch's skipped records, and those with a reason to look at them, found without
    # reading its every item: a large clinic's million took 0.7 s per list on each review.
    db.execute("CREATE INDEX idx_items_skipped ON items (batch_id) WHERE action = 'skipped'")
    db.execute("CREATE INDEX idx_items_noted ON items (batch_id) WHERE reason_code IS NOT NULL")


@MIGRATIONS(name="011_progress_finished")
def _progress_finished(db: sqlite_utils.Database) -> None:
    # When a batch finished reading a stage's lists: a resumed run passes over such stages
    # instead of reading them again (a large clinic's re-read costs the better part of an hour).
    db.table("progress").add_column("finished_at", str)


@MIGRATIONS(name="012_home")
def _home(db: sqlite_utils.Database) -> None:
    # Where the ledger was last opened, and where before (a copy keeps its original's place): a
    # copy shares a store outside its folder with the original, and must not change it.
    db.execute("CREATE TABLE home (id INTEGER PRIMARY KEY CHECK (id = 1), path TEXT NOT NULL)")
    db.table("copied_from").create({"path": str, "noticed_at": str}, pk="path", not_null={"noticed_at"})


#: Reason codes of records that came across but want a person's look, besides every
#: ``review_*`` code (near-matches created, not linked: see :mod:`migrator.engine`): a
#: change at the source the destination could not take, a record deleted at the source
#: but kept because the clinic has added to it (:mod:`migrator.topup`), and a patient
#: created or rewritten in a Cliniko account without the custom fields some of their answers need.
FLAGGED_REASONS = ("update_refused", "deleted_at_source_kept", "custom_fields_left")

#: Reason codes of records an earlier batch brought that a later one rewrote in place
#: (``already_present``, see :mod:`migrator.engine`): changed in Cliniko since, cancelled
#: there since, or a destination copy that differed from an unchanged Cliniko record.
UPDATED_REASONS = ("updated", "cancelled", "review_rewritten")
#: Columns of :meth:`Ledger.updated_frame`.
UPDATED_SCHEMA: dict[str, Any] = dict.fromkeys(
    ("entity", "source_id", "dest_id", "reason_code", "reason"), pl.String
)
# The items of one batch (the parameter before the reasons) that it rewrote in place.
_UPDATED_ITEMS = (
    "FROM items WHERE batch_id = ? AND reason_code IS NOT NULL AND action = 'already_present'"
    f" AND reason_code IN ({', '.join('?' * len(UPDATED_REASONS))})"
)

#: The flag of a record a batch skipped that an earlier batch of the same source had created in
#: the same destination (before a practitioner was excluded, say): that copy is still there.
#: Found when the flags are read, not stored, so it goes once the earlier batch is deleted.
KEPT_FROM_EARLIER = "kept_from_earlier_batch"

#: A Cliniko destination names its account: ``cliniko:<account id>``.
CLINIKO_DESTINATION = "cliniko:"
# The batches a tenant may see, as SQL over ``batches`` (one parameter, twice: the tenant).
_TENANT_BATCHES = "(source_account = ? OR destination = 'cliniko:' || ?)"


@contextmanager
def opening_database(path: Path, what: str) -> Iterator[None]:
    """Turn SQLite's refusal to open or use ``path`` as a database into one sentence.

    A folder, a file of another kind or a place no file can be made (``/proc``) would
    otherwise surface as ``sqlite3`` errors with no path in them. Other database errors (a
    lock held too long, a full disk) pass through unchanged.

    Raises:
        ConfigError: ``Cannot use PATH as WHAT: why.``
    """
    try:
        yield
    except sqlite3.DatabaseError as exc:
        message = str(exc)
        if path.is_dir():
            why = "it is a folder, not a database file"
        elif "file is not a database" in message:
            why = "it is a file of another kind, not a SQLite database"
        elif "unable to open database file" in message:
            why = "no database file can be opened or made there"
        elif "readonly database" in message:
            why = "it, or the folder it is in, may be read but not written; let this user write both"
        else:
            raise
        raise ConfigError(f"Cannot use {path} as {what}: {why}.") from None


def batch_tenants(source_account: str, destination: str) -> tuple[str, ...]:
    """The tenants (account ids) a batch belongs to: its source, and a Cliniko destination's account.

    >>> batch_tenants("40117", "cliniko:90233")
    ('40117', '90233')
    >>> batch_tenants("40117", "sqlite:/w/tenants/40117/clinic.db")
    ('40117',)
    """
    if destination.startswith(CLINIKO_DESTINATION) and destination != CLINIKO_DESTINATION:
        return (source_account, destination.removeprefix(CLINIKO_DESTINATION))
    return (source_account,)


#: The last audit line (rowid) this process wrote in each ledger file (resolved), ``store_moved``
#: aside: what tells a command's own lines from those another process wrote meanwhile (Ctrl+C's
#: "part-way" or "nothing was changed").
_AUDITED_HERE: dict[Path, int] = {}


def audited_here(ledger_file: Path) -> int:
    """The last audit line this process wrote in ``ledger_file`` (0: none), ``store_moved`` aside.

    A line of a transaction rolled back afterwards still counts: the caller errs on the side
    of saying a command changed something.
    """
    return _AUDITED_HERE.get(ledger_file.resolve(), 0)


def may_write(database: Path) -> bool:
    """Whether this process may write the database file ``database`` and the folder it is in (its journal goes there).

    A file that is not there is not refused here: its absence is another matter.
    """
    return all(os.access(place, os.W_OK) for place in (database, database.parent) if place.exists())


def this_worker() -> str:
    """This process, as a batch's ``worker`` records it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


#: A batch running on another host counts as abandoned once its progress is this old.
STALE_AFTER = timedelta(minutes=5)


# --- values --------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _another_ledger_file(path: Path, mine: Path) -> bool:
    """Whether ``path`` is a file other than ``mine`` (the same file under another name is not)."""
    try:
        return path.is_file() and not os.path.samefile(path, mine)
    except OSError:
        return False


def ledger_records(
    ledger_file: Path, *, batch_ids: Iterable[str] | None = None, destination: str | None = None
) -> bool:
    """Whether the ledger at ``ledger_file`` (read only, if there is one) records a batch with
    one of ``batch_ids`` or into ``destination``: another workspace's, such as the original of a copy."""
    ids = list(batch_ids or ())
    if not ledger_file.is_file() or not (ids or destination):
        return False
    where = " OR ".join(
        ([f"id IN ({', '.join('?' * len(ids))})"] if ids else [])
        + (["destination = ?"] if destination else [])
    )
    try:
        with read_only(ledger_file) as conn:
            row = conn.execute(
                f"SELECT 1 FROM batches WHERE {where} LIMIT 1",
                [*ids, *([destination] if destination else [])],
            )
            return row.fetchone() is not None
    except sqlite3.Error:
        return False


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _ago(age: timedelta) -> str:
    hours = int(age.total_seconds() // 3600)
    return f"{hours // 24} days ago" if hours >= 72 else f"{hours} hours ago"


def _span(left: timedelta) -> str:
    minutes = int(left.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass(frozen=True)
class Batch:
    """One batch as the ledger holds it.

    ``plan`` is the JSON the run was started with, ``counts`` the per-entity, per-action
    counts saved by :meth:`Ledger.save_counts` (``{"patients": {"created": 10, ...}}``).
    """

    id: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    status: str
    source_account: str
    destination: str
    plan: dict[str, Any]
    counts: dict[str, dict[str, int]]
    actor: str
    worker: str | None = None

    @property
    def tenants(self) -> tuple[str, ...]:
        """The accounts this batch belongs to (:func:`batch_tenants`)."""
        return batch_tenants(self.source_account, self.destination)

    def running_elsewhere(self) -> bool:
        """Whether another live process is running this batch right now.

        A ``running`` batch records its process as ``host:pid``. On this host the pid is
        checked; a batch whose process died (killed, crashed) is not running anywhere and
        may be resumed. On another host (a shared workspace) a batch counts as running
        while its progress moved within the last :data:`STALE_AFTER`.
        """
        if self.status != "running" or not self.worker:
            return False
        if self.worker == this_worker():
            return False  # this process: its own callers know whether it runs
        host, _, pid = self.worker.rpartition(":")
        if host != socket.gethostname():
            return _now() - self.updated_at < STALE_AFTER
        try:
            os.kill(int(pid), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True  # alive, owned by another user
        return True

    @property
    def state(self) -> str:
        """The status as a person should read it: ``interrupted`` for a ``running`` batch whose run is gone."""
        if (
            self.status == "running"
            and self.worker not in (None, this_worker())
            and not self.running_elsewhere()
        ):
            return "interrupted"
        return self.status

    @property
    def age(self) -> timedelta:
        """How long ago the batch was created."""
        return _now() - self.created_at

    def deletable(self, now: datetime | None = None) -> tuple[bool, str]:
        """Whether the batch may be deleted now, and a sentence saying why (or why not).

        A batch may be deleted while it is younger than :data:`DELETE_WINDOW` (48 hours,
        exclusive) and not running (stop it first). A ``running`` batch whose process is
        gone (killed, crashed: not :meth:`running_elsewhere`) is interrupted, not running,
        and may be deleted as a stopped one may; one this process runs counts as running.
        A ``deleting`` batch, whose deletion was interrupted, may always be deleted again
        so that the deletion finishes, even past 48 hours: half a deletion is worse than
        either outcome. A ``deleted`` one may not.

        >>> batch.deletable()   # doctest: +SKIP
        (False, 'Batch b20261121-135301-3f9a was created 3 days ago; batches can only be deleted within 48 hours of their import.')
        """
        if self.status == "deleted":
            return False, f"Batch {self.id} has already been deleted."
        if self.status == "deleting":
            return True, f"Batch {self.id} is part-way through its deletion; deleting it again finishes it."
        age = (now or _now()) - self.created_at
        if age >= DELETE_WINDOW:
            return (
                False,
                f"Batch {self.id} was created {_ago(age)}; batches can only be deleted within 48 hours of their import.",
            )
        left = f"can be deleted for another {_span(DELETE_WINDOW - age)}"
        if self.status == "running":
            if self.state == "running":
                return False, f"Batch {self.id} is still running; stop it before deleting it."
            return True, f"Batch {self.id} was interrupted (its run is no longer running); it {left}."
        return True, f"Batch {self.id} {left}."


@dataclass(frozen=True, slots=True)
class Item:
    """What became of one source record in a batch.

    ``dest_id`` is the destination record's id (``None`` only for ``skipped``);
    a skipped item carries a ``reason`` sentence and usually a short ``reason_code``
    (``"practitioner_excluded"``) to group by.
    """

    entity: str
    source_id: str
    dest_id: str | None
    action: str
    reason_code: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class StageProgress:
    """Where one stage of a batch stands."""

    stage: str
    done: int
    total: int
    created: int
    linked: int
    already_present: int
    skipped: int
    updated_at: datetime
    #: Every list of the stage has been read and its records handled (a resume passes it over).
    finished: bool = False

    @property
    def fraction(self) -> float:
        """``done / total``, 1.0 for an empty stage."""
        return min(1.0, self.done / self.total) if self.total else 1.0


#: Rows per multi-row ``INSERT`` (:func:`insert_rows`): a page is usually 100.
_ROWS_PER_STATEMENT = 500


def insert_rows(conn: sqlite3.Connection, head: str, rows: list[tuple[Any, ...]], tail: str = "") -> None:
    """``head VALUES (...), (...), ... tail`` over ``rows``: one statement per up to 500 rows.

    One statement per row (``executemany``) costs SQLite a statement's start and end per
    row (with ``AUTOINCREMENT``, a read and a write of ``sqlite_sequence`` each time), and
    the interpreter is given away and taken back around every one of them, so a reader
    thread can hold the writer up at each row. Rows go in order, as ``executemany`` would
    send them; a later row conflicting with an earlier one of the same statement meets
    ``tail``'s ``ON CONFLICT`` as it would in its own.
    """
    if not rows:
        return
    one = "(" + ", ".join("?" * len(rows[0])) + ")"
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start : start + _ROWS_PER_STATEMENT]
        sql = f"{head} VALUES {', '.join([one] * len(chunk))}{tail}"
        conn.execute(sql, [value for row in chunk for value in row])


def _check_item(item: Item) -> None:
    if item.action not in ACTIONS:
        raise ValueError(f"unknown item action {item.action!r}; expected one of {', '.join(ACTIONS)}")
    if item.action == "skipped":
        if not item.reason:
            raise ValueError(
                f"skipped {item.entity} {item.source_id} has no reason: nothing is skipped silently"
            )
    elif item.dest_id is None:
        raise ValueError(f"{item.action} {item.entity} {item.source_id} has no destination id")


# --- the ledger ----------------------------------------------------------------------


class CommitGroup:
    """One write transaction kept open across many ``transaction()`` blocks, committed every ``interval`` s.

    A commit on this connection costs several fsyncs (a rollback journal per attached
    database and a master journal). The engine writes a page every few milliseconds when
    the API answers fast, so it groups them: each page still goes in whole (its block is a
    savepoint inside the group), and a crash loses at most the last ``interval`` seconds of
    whole pages, which a resumed run simply reads again::

        with ledger.commit_group(0.5) as group:
            for page in pages:
                group.open()
                with ledger.transaction():
                    ...                     # the page's rows and items
                group.commit_if_due()

    Leaving the ``with`` commits what the group holds, even when an exception ends it:
    everything inside is whole blocks, as a failed block has rolled back its own savepoint.
    The ledger's lock is held while the group is open, so other threads using the same
    ``Ledger`` wait at most ``interval`` seconds; other processes keep reading.
    """

    def __init__(self, ledger: Ledger, interval: float) -> None:
        self.ledger = ledger
        self.interval = interval
        self.commits = 0
        self._opened: float | None = None

    def open(self) -> None:
        """Begin the group's transaction unless it is already open.

        A Ctrl+C (``KeyboardInterrupt``) can land between any two lines. Once ``BEGIN``
        has run, either :attr:`_opened` is set, so that :meth:`commit` ends the transaction,
        or the empty transaction is rolled back here: an interrupted run must never leave
        one open, or the ``stopped`` status written after it would be lost with it.
        (Landing just after the lock is taken leaves this thread holding it once more; the
        lock is re-entrant, and the ledger is closed with the interrupted run.)
        """
        if self._opened is not None:
            return
        conn = self.ledger.conn
        self.ledger.lock.acquire()
        if conn.in_transaction:  # another block's: neither ours to commit nor to roll back
            self.ledger.lock.release()
            raise sqlite3.OperationalError("cannot start a commit group within a transaction")
        try:
            self._begin()
            self._opened = time.monotonic()
        except BaseException:
            if conn.in_transaction:  # begun, then interrupted before it was noted: it holds nothing
                conn.execute("ROLLBACK")
            self._ended()
            self.ledger.lock.release()
            raise

    def commit_if_due(self) -> None:
        """Commit when the transaction has been open for ``interval`` seconds or more."""
        if self._opened is not None and time.monotonic() - self._opened >= self.interval:
            self.commit()

    def commit(self) -> None:
        """Commit now (nothing happens when the group holds no transaction).

        Calling it again after an interrupt cut it short is safe, and finishes it.
        """
        if self._opened is None:
            return
        conn = self.ledger.conn
        try:
            if conn.in_transaction:
                conn.execute("COMMIT")
                self.commits += 1
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            self._opened = None
            try:
                self._ended()
            finally:
                self.ledger.lock.release()

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE``, with SQLite's temporary storage in memory until :meth:`_ended`.

        Each block's savepoint journals the pages it changes that earlier blocks of the group
        changed too, and SQLite moves that journal to a temporary file once it passes 64 KiB,
        block after block, unless temporary storage is in memory. Outside a group it stays on
        disk, where a large sort (counting a million items) belongs.
        """
        conn = self.ledger.conn
        conn.execute("PRAGMA temp_store = MEMORY")  # refused inside a transaction: nothing to undo
        conn.execute("BEGIN IMMEDIATE")

    def _ended(self) -> None:
        """Temporary storage back on disk, once the transaction is over (a failed rollback's is not)."""
        if not self.ledger.conn.in_transaction:
            self.ledger.conn.execute("PRAGMA temp_store = DEFAULT")

    def __enter__(self) -> CommitGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.commit()


class Ledger:
    """The workspace's ledger database.

    Args:
        workspace: the workspace directory (created if missing); the ledger is
            ``<workspace>/ledger.db``.

    Attributes:
        conn: the ``sqlite3`` connection (autocommit mode; :meth:`transaction` opens
            transactions), shared with an attached local clinic store.
        db: a ``sqlite_utils.Database`` on ``conn``.
        lock: the re-entrant lock every use of ``conn`` takes; the console reads
            progress from another thread. Other processes (or readers wanting their own
            connection) open their own ``Ledger`` on the same workspace.
        path, workspace: where it lives.

    Raises:
        ConfigError: ``ledger.db`` is a folder or a file that is not a SQLite database.
        MigratorError: the database cannot be put in rollback-journal mode.
    """

    #: The role written on audit rows whose caller names none (a hosted run's ledger says
    #: who started it: ``clinic`` or ``operator``); ``None`` outside hosted instances.
    audit_role: str | None = None

    def __init__(self, workspace: str | Path = "workspace") -> None:
        self.workspace = Path(workspace)
        self.path = self.file_in(self.workspace)
        make_private_database(self.path)
        self.lock = threading.RLock()
        self._savepoints = 0  # savepoints open inside the current transaction
        with opening_database(self.path, "the ledger"):
            self.conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            try:
                self.conn.execute("PRAGMA busy_timeout = 10000")
                self.conn.execute("PRAGMA foreign_keys = ON")
                self.conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
                (mode,) = self.conn.execute("PRAGMA journal_mode = DELETE").fetchone()
                if mode != "delete":
                    raise MigratorError(
                        f"The ledger {self.path} could not leave {mode} journal mode; close the other programs "
                        "using it."
                    )
                self.db = sqlite_utils.Database(self.conn)
                with self.lock:
                    self._migrate()
                    self._settle_home()
            except BaseException:
                self.conn.close()
                raise

    def _migrate(self) -> None:
        """Bring the ledger's schema up to this version's (:data:`MIGRATIONS`); up to date, it only reads.

        Raises:
            ConfigError: migrations are pending and the file, or its folder, may not be written.
        """
        try:
            apply_migrations(self.db, MIGRATIONS)
        except sqlite3.Error as exc:
            if database_refused(exc) is None:
                raise
            raise ConfigError(
                f"Cannot use {self.path} as the ledger: it was last used by an earlier version of the migrator "
                "and must be brought up to date, which writes it, but it or the folder it is in may be read but "
                "not written; let this user write both (or open a writable copy of the workspace)."
            ) from exc

    def _settle_home(self) -> None:
        """Record where this ledger file is, and where it was last opened before, if elsewhere.

        A copy (``cp -a workspace try``) keeps the original's ``home``. First opened while the
        original is away (moved off and back, say), a copy looks moved; so every former place
        is kept, and :meth:`originals` are those that hold a ledger again. A ledger from before
        this was recorded (migration 012) takes its place as it is first opened, so a copy
        made before then is not told apart.

        A ledger this process may read but not write (a copy kept read-only to be looked
        at) is left as it is: what only reads it (listing its batches) goes on, and what
        would write it is refused by :meth:`require_writable` before it records anything,
        so no copy can act unaware that it is one.
        """
        here = str(self.path.resolve())
        row = self.conn.execute("SELECT path FROM home WHERE id = 1").fetchone()
        if row is not None and row[0] == here:
            return
        try:
            with self.transaction():
                if row is not None:  # copied, or moved: kept either way (see originals)
                    self.conn.execute(
                        "INSERT OR IGNORE INTO copied_from (path, noticed_at) VALUES (?, ?)",
                        (row[0], _iso(_now())),
                    )
                self.conn.execute(
                    "INSERT INTO home (id, path) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET path = excluded.path",
                    (here,),
                )
        except sqlite3.Error as exc:
            if database_refused(exc) is None:
                raise

    def originals(self) -> list[Path]:
        """Other ledger files at the places this one was opened before: the workspaces it was copied from.

        Oldest first; a copy of a copy names both. An original moved away since is no longer
        found. A workspace restored from a copy of it names that copy, which names it back:
        each is the other's original, and neither may change a store outside it they share.
        """
        with self.lock:
            rows = self.conn.execute("SELECT path FROM copied_from ORDER BY noticed_at, path").fetchall()
        return [Path(path) for (path,) in rows if _another_ledger_file(Path(path), self.path)]

    def original_writing_to(self, destination: str) -> Path | None:
        """The first of :meth:`originals` (read only) with a batch into ``destination``, if any.

        A store outside the workspace is not copied with it: such an original and this
        copy would both change it, each unaware of the other's deletions and writes.
        """
        return next((o for o in self.originals() if ledger_records(o, destination=destination)), None)

    @staticmethod
    def file_in(workspace: str | Path) -> Path:
        """Where a workspace keeps its ledger (``ledger.db``), whether or not it exists yet."""
        return Path(workspace) / "ledger.db"

    def close(self) -> None:
        """Close the connection (and with it any attached clinic store)."""
        with self.lock:
            self.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def applied_migrations(self) -> list[str]:
        """The names of the migrations applied to this ledger, in order."""
        with self.lock:
            return [m.name for m in MIGRATIONS.applied(self.db)]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back if the block raises.

        Re-entrant: inside an open transaction a block becomes a savepoint, so an inner
        failure that the caller catches undoes only the inner block, and nothing commits
        until the outermost block ends. The lock is held throughout, so another thread's
        writes wait rather than land in this transaction.
        """
        with self.lock:
            if self.conn.in_transaction:
                # Named by depth, so each level's statements keep one text that sqlite3 prepares once.
                self._savepoints += 1
                name = f"ledger_{self._savepoints}"
                try:
                    self.conn.execute(f"SAVEPOINT {name}")
                    try:
                        yield
                    except BaseException:
                        if self.conn.in_transaction:
                            self.conn.execute(f"ROLLBACK TO {name}")
                            self.conn.execute(f"RELEASE {name}")
                        raise
                    self.conn.execute(f"RELEASE {name}")
                finally:
                    self._savepoints -= 1
                return
            try:  # BEGIN inside: an interrupt just after it still rolls the transaction back
                self.conn.execute("BEGIN IMMEDIATE")
                yield
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def require_writable(self) -> None:
        """Refuse, before anything is recorded, a ledger or attached store this process may read but not write.

        Each file is written once and rolled back (its ``user_version`` set to what it is),
        which makes SQLite take the write lock and its journal beside the file: a file, or a
        folder, that may not be written is found here rather than at a run's first page,
        after its batch was recorded (``failed``), or in the middle of a deletion (``deleting``).

        Raises:
            ConfigError: naming the file, and what to give.
        """
        with self.lock:
            if self.conn.in_transaction:  # a caller's write under way: it holds the write lock already
                return
            for _, name, file in self.conn.execute("PRAGMA database_list").fetchall():
                if not file:  # a temporary database
                    continue
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                    try:
                        (version,) = self.conn.execute(f"PRAGMA {name}.user_version").fetchone()
                        self.conn.execute(f"PRAGMA {name}.user_version = {int(version)}")
                    finally:
                        self.conn.execute("ROLLBACK")
                except sqlite3.Error as exc:
                    if database_refused(exc) is None:
                        raise
                    what = "the ledger" if name == "main" else "the clinic store"
                    raise ConfigError(
                        f"Cannot write {what} {file}: the file or the folder it is in may be read but not written "
                        f"({str(exc).rstrip('.')}); let this user write both, then try again. Nothing was changed."
                    ) from exc

    def may_write(self) -> bool:
        """Whether this process may write the ledger, any attached store, and the folders they are in.

        Asked of the file system (:func:`may_write`), not by a write as :meth:`require_writable`
        does: what lists batches asks it, while another process's run may hold the write lock.
        """
        with self.lock:
            files = [
                Path(file) for _, _, file in self.conn.execute("PRAGMA database_list").fetchall() if file
            ]
        return all(may_write(file) for file in files)

    def commit_group(self, interval: float) -> CommitGroup:
        """A :class:`CommitGroup` on this ledger: ``transaction()`` blocks committed together."""
        return CommitGroup(self, interval)

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self.lock:
            cursor = self.conn.execute(sql, tuple(params))
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    # --- batches ------------------------------------------------------------------------

    def create_batch(
        self, *, source_account: str, destination: str, plan: dict[str, Any], actor: str = "cli"
    ) -> Batch:
        """Start a batch (status ``running``) and audit it as ``run``.

        Args:
            source_account: which source account is read (an id or name, never a key).
            destination: where records go, e.g. ``LocalStore.describe()``.
            plan: the plan as plain JSON (without keys).
            actor: who started it (``"cli"``, ``"console"``, a user name).

        Returns:
            The new batch; its id (``b20261121-135301-3f9a``) sorts by creation time.
        """
        plan_json = json.dumps(plan)
        for _ in range(10):
            moment = _now()
            batch_id = f"b{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
            try:
                with self.transaction():
                    self.conn.execute(
                        "INSERT INTO batches (id, created_at, updated_at, status, source_account, destination,"
                        " plan, counts, actor, worker) VALUES (?, ?, ?, 'running', ?, ?, ?, '{}', ?, ?)",
                        (
                            batch_id,
                            _iso(moment),
                            _iso(moment),
                            source_account,
                            destination,
                            plan_json,
                            actor,
                            this_worker(),
                        ),
                    )
                    self.audit(
                        "run",
                        actor=actor,
                        batch_id=batch_id,
                        detail={"source_account": source_account, "destination": destination},
                    )
            except sqlite3.IntegrityError:
                continue  # the same second and the same 16 random bits: draw again
            return self.batch(batch_id)
        raise MigratorError("Could not allocate a unique batch id; try again.")

    @staticmethod
    def _batch(row: sqlite3.Row) -> Batch:
        return Batch(
            id=row["id"],
            created_at=datetime.fromisoformat(row["created_at"]),
            updated_at=datetime.fromisoformat(row["updated_at"]),
            finished_at=_when(row["finished_at"]),
            status=row["status"],
            source_account=row["source_account"],
            destination=row["destination"],
            plan=json.loads(row["plan"] or "{}"),
            counts=json.loads(row["counts"] or "{}"),
            actor=row["actor"],
            worker=row["worker"],
        )

    def batch(self, batch_id: str, *, tenant: str | None = None) -> Batch:
        """The batch with this id; with ``tenant``, only if it is one of that tenant's batches.

        Raises:
            BatchNotFound: no such batch, or (the same sentence) another tenant's batch,
                so that guessing ids tells nothing.
        """
        if tenant is None:
            rows = self._rows("SELECT * FROM batches WHERE id = ?", (batch_id,))
        else:
            rows = self._rows(
                f"SELECT * FROM batches WHERE id = ? AND {_TENANT_BATCHES}", (batch_id, tenant, tenant)
            )
        if not rows:
            shown = batch_id if batch_id.strip() else "with an empty id"
            raise BatchNotFound(f"There is no batch {shown} in the ledger at {self.path}.")
        return self._batch(rows[0])

    def batches(self, *, tenant: str | None = None, current_counts: bool = False) -> list[Batch]:
        """Every batch, newest first; with ``tenant``, only that tenant's (:func:`batch_tenants`).

        ``counts`` are those saved when a run last ended; with ``current_counts``, a
        ``running`` batch's (one going now, or one whose process was killed) are counted
        from its items instead, as listings show them.
        """
        order = " ORDER BY created_at DESC, id DESC"
        if tenant is None:
            rows = self._rows("SELECT * FROM batches" + order)
        else:
            rows = self._rows(f"SELECT * FROM batches WHERE {_TENANT_BATCHES}" + order, (tenant, tenant))
        batches = [self._batch(r) for r in rows]
        if current_counts:
            batches = [
                dataclasses.replace(b, counts=self.counts(b.id)) if b.status == "running" else b
                for b in batches
            ]
        return batches

    def set_status(
        self, batch_id: str, status: str, *, actor: str = "cli", detail: dict[str, Any] | None = None
    ) -> Batch:
        """Move a batch to ``status`` and audit it (``stop``, ``resume``, ``complete``, ``delete`` ...).

        ``finished_at`` is set for ``completed``, ``failed`` and ``deleted`` and cleared
        when a batch runs again. A deleted batch stays deleted. Raises
        :class:`BatchNotFound`, :class:`~migrator.errors.ConfigError` for a deleted batch,
        or ``ValueError`` for a status not in :data:`STATUSES`.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown batch status {status!r}; expected one of {', '.join(STATUSES)}")
        with self.transaction():
            before = self.batch(batch_id)
            if before.status == "deleted" and status != "deleted":
                # Its items would count again in dest_id_for(), pointing at records that are gone.
                raise ConfigError(f"Batch {batch_id} has been deleted; it cannot become {status} again.")
            now = _iso(_now())
            if status in _FINISHED:
                finished: str | None = now
            elif status == "running":
                finished = None
            else:  # stopping or starting a deletion keeps when the run finished
                finished = None if before.finished_at is None else _iso(before.finished_at)
            self.conn.execute(
                "UPDATE batches SET status = ?, updated_at = ?, finished_at = ?, worker = ? WHERE id = ?",
                (
                    status,
                    now,
                    finished,
                    this_worker() if status in ("running", "deleting") else None,
                    batch_id,
                ),
            )
            self.audit(
                _STATUS_AUDIT[status],
                actor=actor,
                batch_id=batch_id,
                detail={"from": before.status, "to": status, **(detail or {})},
            )
        return self.batch(batch_id)

    # --- items --------------------------------------------------------------------------

    def record_items(self, batch_id: str, rows: Iterable[Item]) -> int:
        """Write items, replacing any earlier item of the same (batch, entity, source id).

        Call it inside the :meth:`transaction` that writes the destination records, so
        both commit together. Returns how many items were written. Raises ``ValueError``
        for an unknown action, a skip without a reason, or a non-skip without a
        destination id, and ``sqlite3.IntegrityError`` for an unknown batch.
        """
        at = _iso(_now())
        params = []
        for item in rows:
            _check_item(item)
            params.append(
                (
                    batch_id,
                    item.entity,
                    item.source_id,
                    item.dest_id,
                    item.action,
                    item.reason_code,
                    item.reason,
                    at,
                )
            )
        with self.transaction():
            insert_rows(
                self.conn,
                "INSERT INTO items (batch_id, entity, source_id, dest_id, action, reason_code, reason, at)",
                params,
                " ON CONFLICT (batch_id, entity, source_id) DO UPDATE SET dest_id = excluded.dest_id,"
                " action = excluded.action, reason_code = excluded.reason_code, reason = excluded.reason,"
                " at = excluded.at",
            )
        return len(params)

    # --- deletions ----------------------------------------------------------------------

    def record_deletions(self, batch_id: str, entity: str, dest_ids: Iterable[str]) -> None:
        """Note that deleting ``batch_id`` removed these destination records (again: no change).

        Call it inside the :meth:`transaction` that deletes them from a local store, so both
        commit together; after the requests, for a destination that cannot join it.
        """
        at = _iso(_now())
        with self.transaction():
            insert_rows(
                self.conn,
                "INSERT INTO deletions (batch_id, entity, dest_id, deleted_at)",
                [(batch_id, entity, str(d), at) for d in dest_ids],
                " ON CONFLICT (batch_id, entity, dest_id) DO NOTHING",
            )

    def deleted_by(self, batch_id: str) -> dict[str, set[str]]:
        """What deleting ``batch_id`` has removed so far: ``{entity: destination ids}``."""
        removed: dict[str, set[str]] = {}
        for entity, dest_id in self._rows(
            "SELECT entity, dest_id FROM deletions WHERE batch_id = ?", (batch_id,)
        ):
            removed.setdefault(entity, set()).add(dest_id)
        return removed

    def removed_by_deletion(self, destination: str, entity: str, dest_ids: Iterable[str]) -> dict[str, str]:
        """Which of these records of ``destination`` deleting a batch removed: ``{dest_id: that batch's id}``.

        Deleting a batch also removes what later batches found already present or made
        for its patients since (seed 000); those later batches' reconciliation counts such
        records as removed, not missing.
        """
        rows = self._rows(
            "SELECT d.dest_id, d.batch_id FROM deletions d JOIN batches b ON b.id = d.batch_id"
            " WHERE d.entity = ? AND d.dest_id IN (SELECT value FROM json_each(?)) AND b.destination = ?",
            (entity, json.dumps([str(d) for d in dest_ids]), destination),
        )
        return {r[0]: r[1] for r in rows}

    def item(self, batch_id: str, entity: str, source_id: str) -> Item | None:
        """The item of one source record in a batch, if there is one."""
        rows = self._rows(
            "SELECT entity, source_id, dest_id, action, reason_code, reason FROM items"
            " WHERE batch_id = ? AND entity = ? AND source_id = ?",
            (batch_id, entity, source_id),
        )
        return Item(*rows[0]) if rows else None

    def items(self, batch_id: str, entity: str | None = None, action: str | None = None) -> Iterator[Item]:
        """A batch's items in the order they were first written, optionally one entity or action.

        Streams in chunks, so a million items never sit in memory at once: the matching
        rows' ids come first (8 bytes each, from one sorted read of the index), then the
        items a thousand at a time by id. (Asking for "the next thousand after the last one
        read" instead makes SQLite sort the entity's every item again for each chunk.)
        Items written after the call began are not included.
        """
        where, params = "batch_id = ?", [batch_id]
        if entity is not None:
            where, params = where + " AND entity = ?", [*params, entity]
        if action is not None:
            where, params = where + " AND action = ?", [*params, action]
        with self.lock:
            cursor = self.conn.execute(f"SELECT rowid FROM items WHERE {where} ORDER BY rowid", params)
            rowids = array("q", (rowid for (rowid,) in cursor))
        for start in range(0, len(rowids), _CHUNK):
            rows = self._rows(
                "SELECT batch_id, entity, source_id, dest_id, action, reason_code, reason FROM items"
                " WHERE rowid IN (SELECT value FROM json_each(?)) ORDER BY rowid",
                (json.dumps(rowids[start : start + _CHUNK].tolist()),),
            )
            for row in rows:
                # A row deleted since the ids were read may have left its id to another.
                if row[0] == batch_id and entity in (None, row[1]) and action in (None, row[4]):
                    yield Item(*tuple(row)[1:])

    def dest_ids_of(self, batch_id: str, entity: str, actions: Iterable[str]) -> dict[str, str | None]:
        """``{source_id: dest_id}`` of a batch's items of ``entity`` with one of ``actions``.

        Two strings per item rather than an :class:`Item`: what reconciliation needs of
        every record a batch brought (for a large clinic, about a million).
        """
        wanted = list(actions)
        rows = self._rows(
            "SELECT source_id, dest_id FROM items WHERE batch_id = ? AND entity = ?"
            f" AND action IN ({', '.join('?' * len(wanted))})",
            (batch_id, entity, *wanted),
        )
        return dict(map(tuple, rows))

    def items_for(self, batch_id: str, entity: str, source_ids: Iterable[str]) -> dict[str, Item]:
        """This batch's items for many source records at once: ``{source_id: item}``.

        Source ids the batch has not dealt with yet are absent from the result.
        """
        rows = self._rows(
            "SELECT entity, source_id, dest_id, action, reason_code, reason FROM items"
            " WHERE batch_id = ? AND entity = ? AND source_id IN (SELECT value FROM json_each(?))",
            (batch_id, entity, json.dumps(list(source_ids))),
        )
        return {r["source_id"]: Item(*tuple(r)) for r in rows}

    def linked_elsewhere(
        self, destination: str, entity: str, dest_id: str, *, source_id: str, source_account: str
    ) -> bool:
        """Whether a destination record is already linked to another record of ``source_account``.

        Two records of one source must never end as one destination record (twins at one
        clinic), so the engine links a record only when this is false. Another account's
        link does not count: merging two clinics, each one's record of the same person
        links to the one destination patient, as it would to one the other had created.
        Deleted batches do not count.
        """
        rows = self._rows(
            "SELECT 1 FROM items i JOIN batches b ON b.id = i.batch_id"
            " WHERE i.entity = ? AND i.dest_id = ? AND i.action = 'linked' AND i.source_id != ?"
            " AND b.destination = ? AND b.source_account = ? AND b.status != 'deleted' LIMIT 1",
            (entity, dest_id, source_id, destination, source_account),
        )
        return bool(rows)

    def done_source_ids(self, batch_id: str, entity: str) -> set[str]:
        """Source ids of ``entity`` this batch already dealt with (any action): what a resume skips."""
        rows = self._rows("SELECT source_id FROM items WHERE batch_id = ? AND entity = ?", (batch_id, entity))
        return {r[0] for r in rows}

    def dest_ids_for(
        self, destination: str, entity: str, source_ids: Iterable[str], *, source_account: str
    ) -> dict[str, tuple[str, str]]:
        """:meth:`dest_id_for` for many source ids at once: ``{source_id: (batch_id, dest_id)}``.

        Source ids no earlier batch created or linked are absent from the result.
        """
        rows = self._rows(
            "SELECT i.source_id, i.batch_id, i.dest_id FROM items i JOIN batches b ON b.id = i.batch_id"
            " WHERE i.entity = ? AND i.source_id IN (SELECT value FROM json_each(?))"
            " AND i.action IN ('created', 'linked') AND b.destination = ? AND b.source_account = ?"
            " AND b.status NOT IN ('deleting', 'deleted')"
            " ORDER BY b.created_at, b.id",
            (entity, json.dumps(list(source_ids)), destination, source_account),
        )
        return {r[0]: (r[1], r[2]) for r in rows}  # ordered oldest first: the newest batch wins

    def has_earlier_batch(self, destination: str, *, source_account: str, before: str) -> bool:
        """Whether any other batch (not being deleted) moved ``source_account`` into ``destination``.

        When none did, no record can be *already present*, and the engine skips the look-ups.
        """
        rows = self._rows(
            "SELECT 1 FROM batches WHERE destination = ? AND source_account = ? AND id != ?"
            " AND status NOT IN ('deleting', 'deleted') LIMIT 1",
            (destination, source_account, before),
        )
        return bool(rows)

    def dest_id_for(
        self, destination: str, entity: str, source_id: str, *, source_account: str
    ) -> tuple[str, str] | None:
        """Where an earlier batch put this source record: ``(batch_id, dest_id)``, or ``None``.

        Only batches of the same destination and source account count, and only items
        ``created`` or ``linked`` there; batches being deleted or deleted are ignored.
        This is how a top-up finds a record *already present*. The newest batch wins.
        """
        return self.dest_ids_for(destination, entity, [source_id], source_account=source_account).get(
            source_id
        )

    def counts(self, batch_id: str) -> dict[str, dict[str, int]]:
        """Items per entity per action, every action present: ``{"patients": {"created": 9, ...}}``."""
        out: dict[str, dict[str, int]] = {}
        for entity, action, n in self._rows(
            "SELECT entity, action, count(*) FROM items WHERE batch_id = ? GROUP BY entity, action",
            (batch_id,),
        ):
            out.setdefault(entity, dict.fromkeys(ACTIONS, 0))[action] = n
        return out

    def save_counts(self, batch_id: str) -> dict[str, dict[str, int]]:
        """Store :meth:`counts` in ``batches.counts`` (shown in the batch list) and return it."""
        with self.transaction():
            counts = self.counts(batch_id)
            self.conn.execute(
                "UPDATE batches SET counts = ?, updated_at = ? WHERE id = ?",
                (json.dumps(counts), _iso(_now()), batch_id),
            )
        return counts

    # --- progress -----------------------------------------------------------------------

    def update_progress(
        self,
        batch_id: str,
        stage: str,
        *,
        done: int,
        total: int,
        created: int,
        linked: int,
        already_present: int,
        skipped: int,
        finished: bool = False,
    ) -> StageProgress:
        """Record where a stage stands (replacing the previous figures); touches the batch's ``updated_at``.

        ``finished``: every list of the stage has been read, the records of its last page
        written in this transaction or an earlier one. A stage stays finished once it is
        (a top-up's deletions report on finished stages again).

        Returns the figures as written, so a caller can pass the same object on to a listener.
        """
        at = _now()
        now = _iso(at)
        with self.transaction():
            self.conn.execute(
                "INSERT INTO progress (batch_id, stage, done, total, created, linked, already_present, skipped,"
                " updated_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (batch_id, stage) DO UPDATE SET done = excluded.done, total = excluded.total,"
                " created = excluded.created, linked = excluded.linked,"
                " already_present = excluded.already_present, skipped = excluded.skipped,"
                " updated_at = excluded.updated_at,"
                " finished_at = coalesce(progress.finished_at, excluded.finished_at)",
                (
                    batch_id,
                    stage,
                    done,
                    total,
                    created,
                    linked,
                    already_present,
                    skipped,
                    now,
                    now if finished else None,
                ),
            )
            self.conn.execute("UPDATE batches SET updated_at = ? WHERE id = ?", (now, batch_id))
        return StageProgress(stage, done, total, created, linked, already_present, skipped, at, finished)

    def progress(self, batch_id: str) -> list[StageProgress]:
        """Each stage's progress, in the order the stages first reported."""
        rows = self._rows(
            "SELECT stage, done, total, created, linked, already_present, skipped, updated_at, finished_at"
            " FROM progress WHERE batch_id = ? ORDER BY rowid",
            (batch_id,),
        )
        return [
            StageProgress(
                stage=r["stage"],
                done=r["done"],
                total=r["total"],
                created=r["created"],
                linked=r["linked"],
                already_present=r["already_present"],
                skipped=r["skipped"],
                updated_at=datetime.fromisoformat(r["updated_at"]),
                finished=r["finished_at"] is not None,
            )
            for r in rows
        ]

    # --- audit --------------------------------------------------------------------------

    def audit(
        self,
        action: str,
        *,
        actor: str,
        batch_id: str | None = None,
        detail: dict[str, Any] | None = None,
        tenant: str | None = None,
        role: str | None = None,
    ) -> None:
        """Append one line to the audit trail (``detail`` is plain JSON, never a key).

        Args:
            tenant: the account the action concerns; by default the batch's source account.
            role: who acted (``clinic``, ``operator``); by default :attr:`audit_role`.
        """
        with self.transaction():
            if tenant is None and batch_id is not None:
                found = self._rows("SELECT source_account FROM batches WHERE id = ?", (batch_id,))
                tenant = found[0][0] if found else None
            line = self.conn.execute(
                "INSERT INTO audit (at, actor, action, batch_id, detail, tenant, role) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    _iso(_now()),
                    actor,
                    action,
                    batch_id,
                    json.dumps(detail or {}),
                    tenant,
                    role or self.audit_role,
                ),
            ).lastrowid
            if action != "store_moved" and line is not None:
                _AUDITED_HERE[self.path.resolve()] = line

    def top_ups(self) -> set[str]:
        """The batches started as top-ups (their audit trail has a ``top_up`` line), for listings to say so."""
        return {r[0] for r in self._rows("SELECT DISTINCT batch_id FROM audit WHERE action = 'top_up'")}

    def audit_log(self, batch_id: str | None = None, *, tenant: str | None = None) -> list[dict[str, Any]]:
        """The audit trail, oldest first, optionally of one batch or one tenant; ``detail`` decoded.

        A tenant's trail is what was recorded for it and everything about its batches
        (a Cliniko destination's account sees the batches written into it too).
        """
        sql = "SELECT id, at, actor, action, batch_id, detail, tenant, role FROM audit"
        where, params = [], []
        if batch_id is not None:
            where.append("batch_id = ?")
            params.append(batch_id)
        if tenant is not None:
            where.append(f"(tenant = ? OR batch_id IN (SELECT id FROM batches WHERE {_TENANT_BATCHES}))")
            params += [tenant, tenant, tenant]
        rows = self._rows(sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id", params)
        return [{**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in rows]

    # --- frames for review ----------------------------------------------------------------

    def items_frame(self, batch_id: str) -> pl.DataFrame:
        """A batch's items: entity, source_id, dest_id, action, reason_code, reason, at."""
        rows = self._rows(
            "SELECT entity, source_id, dest_id, action, reason_code, reason, at FROM items"
            " WHERE batch_id = ? ORDER BY rowid",
            (batch_id,),
        )
        schema = dict.fromkeys(
            ("entity", "source_id", "dest_id", "action", "reason_code", "reason", "at"), pl.String
        )
        return pl.DataFrame([tuple(r) for r in rows], schema=schema, orient="row")

    def skipped_frame(self, batch_id: str) -> pl.DataFrame:
        """A batch's skipped records with their reasons: entity, source_id, reason_code, reason."""
        rows = self._rows(
            "SELECT entity, source_id, reason_code, reason FROM items"
            " WHERE batch_id = ? AND action = 'skipped' ORDER BY rowid",
            (batch_id,),
        )
        schema = dict.fromkeys(("entity", "source_id", "reason_code", "reason"), pl.String)
        return pl.DataFrame([tuple(r) for r in rows], schema=schema, orient="row")

    def updated_counts(self, batch_id: str) -> dict[str, int]:
        """Records ``batch_id`` rewrote in place (:data:`UPDATED_REASONS`), per entity, none left out as 0."""
        rows = self._rows(
            f"SELECT entity, count(*) {_UPDATED_ITEMS} GROUP BY entity ORDER BY entity",
            (batch_id, *UPDATED_REASONS),
        )
        return {entity: n for entity, n in rows}

    def updated_frame(self, batch_id: str) -> pl.DataFrame:
        """Records ``batch_id`` rewrote in place (:data:`UPDATED_REASONS`): entity, source_id,
        dest_id, reason_code, reason (what changed)."""
        rows = self._rows(
            f"SELECT entity, source_id, dest_id, reason_code, reason {_UPDATED_ITEMS} ORDER BY rowid",
            (batch_id, *UPDATED_REASONS),
        )
        return pl.DataFrame([tuple(r) for r in rows], schema=UPDATED_SCHEMA, orient="row")

    def flagged_frame(self, batch_id: str) -> pl.DataFrame:
        """A batch's records in the destination that want a person's look (:data:`FLAGGED_REASONS`,
        and :data:`KEPT_FROM_EARLIER`).

        Records that deleting a batch into the same destination has removed since (this one, or
        an earlier one whose records this batch found already present) want no look: they are
        left out.

        Columns: entity, source_id, dest_id, action, reason_code, reason.
        """
        marks = ", ".join("?" * len(FLAGGED_REASONS))
        rows = self._rows(
            "SELECT i.entity, i.source_id, i.dest_id, i.action, i.reason_code, i.reason"
            " FROM items i JOIN batches ib ON ib.id = i.batch_id"
            " WHERE i.batch_id = ? AND i.reason_code IS NOT NULL AND i.action != 'skipped'"
            " AND (i.reason_code LIKE 'review\\_%' ESCAPE '\\'"
            f" OR i.reason_code IN ({marks}))"
            " AND NOT EXISTS (SELECT 1 FROM deletions d JOIN batches db ON db.id = d.batch_id"
            " WHERE d.entity = i.entity AND d.dest_id = i.dest_id AND db.destination = ib.destination)"
            " ORDER BY i.rowid",
            (batch_id, *FLAGGED_REASONS),
        )
        found = [tuple(r) for r in rows] + self._kept_from_earlier(batch_id)
        schema = dict.fromkeys(
            ("entity", "source_id", "dest_id", "action", "reason_code", "reason"), pl.String
        )
        return pl.DataFrame(found, schema=schema, orient="row")

    def _kept_from_earlier(self, batch_id: str) -> list[tuple[str, ...]]:
        """Records ``batch_id`` skipped whose copy an earlier live batch created is still expected
        in the destination (:data:`KEPT_FROM_EARLIER`), as rows of :meth:`flagged_frame`.

        Say a failed batch brought a practitioner's appointments under "Former practitioner"
        and a new plan excludes that practitioner: the new batch skips them, as asked, but
        the failed batch's copies stay until it is deleted. Only *created* copies count (a
        record an earlier batch linked to was the clinic's own), of batches (not being)
        deleted, that started before this one, from the same source into the same destination;
        a top-up's ``deleted_at_source`` skip is not one (it removed the copy).
        """
        rows = self._rows(
            "SELECT s.entity, s.source_id, e.dest_id, s.reason_code, e.batch_id"
            " FROM items s JOIN batches sb ON sb.id = s.batch_id"
            " JOIN items e ON e.entity = s.entity AND e.source_id = s.source_id AND e.batch_id != s.batch_id"
            " JOIN batches eb ON eb.id = e.batch_id"
            # A top-up's deleted_at_source (migrator.topup) removed the copy with the skip.
            " WHERE s.batch_id = ? AND s.action = 'skipped' AND s.reason_code IS NOT 'deleted_at_source'"
            " AND e.action = 'created'"
            " AND eb.destination = sb.destination AND eb.source_account = sb.source_account"
            " AND eb.status NOT IN ('deleting', 'deleted')"
            " AND (eb.created_at < sb.created_at OR (eb.created_at = sb.created_at AND eb.id < sb.id))"
            " ORDER BY s.rowid, eb.created_at DESC, eb.id DESC",
            (batch_id,),
        )
        out: list[tuple[str, ...]] = []
        seen: set[tuple[str, str]] = set()
        for entity, source_id, dest_id, code, earlier in rows:
            if (entity, source_id) in seen:  # more than one earlier copy: the newest batch's is named
                continue
            seen.add((entity, source_id))
            why = (
                f"This batch skipped it ({code}), but the earlier batch {earlier} brought it as "
                f"destination record {dest_id}, and that copy is still there: remove it by hand, or delete batch "
                f"{earlier} (within 48 hours of its start; every record it brought goes, this batch's already "
                "present ones too) and run this plan again to bring the rest anew."
            )
            out.append((entity, source_id, dest_id, "skipped", KEPT_FROM_EARLIER, why))
        return out

    def found_present_by_later(
        self, batch_id: str, created: Mapping[str, Iterable[str]]
    ) -> dict[str, dict[str, int]]:
        """How many of ``created`` (destination ids by entity: what ``batch_id`` created and deleting it
        has not yet removed) each later live batch found already present: ``{batch id: {entity: n}}``,
        oldest batch first, entities in stage order (the reverse of ``created``'s order of deletion).

        Deleting ``batch_id`` takes those records too (they are its creates), so the later
        batch is left short of them: a re-run of its plan brings them anew. Say a batch brought
        a practitioner's appointments under "Former practitioner" and a new plan excludes that
        practitioner: the new batch found the rest already present, and created nothing.

        Nothing is read when no other live batch shares the destination and source. A large
        clinic's full re-run found about a million records present: reading them takes about a
        second (an SQL join with ``batch_id``'s own items took nearly three).
        """
        batch = self.batch(batch_id)
        later = [
            b.id
            for b in reversed(self.live_batches(batch.destination, source_account=batch.source_account))
            if b.id != batch_id
        ]
        if not later:
            return {}
        mine = {entity: set(ids) for entity, ids in created.items() if ids}
        found: dict[str, dict[str, int]] = {}
        for later_id in later:
            counts: dict[str, int] = {}
            with self.lock:
                for entity, dest_id in self.conn.execute(
                    "SELECT entity, dest_id FROM items WHERE batch_id = ? AND action = 'already_present'",
                    (later_id,),
                ):
                    if dest_id in mine.get(entity, ()):
                        counts[entity] = counts.get(entity, 0) + 1
            if counts:
                found[later_id] = {e: counts[e] for e in reversed(list(created)) if e in counts}
        return found

    # --- across batches: top-ups and reconciliation ------------------------------------------

    def store_moved(self, before: str, after: str, *, copy: bool = False, actor: str = "cli") -> None:
        """Point every batch recorded as going into destination ``before`` at ``after`` (the store, moved or copied)."""
        with self.transaction():
            self.conn.execute(
                "UPDATE batches SET destination = ?, plan = json_set(plan, '$.destination', ?)"
                " WHERE destination = ?",
                (after, after, before),
            )
            self.audit("store_moved", actor=actor, detail={"from": before, "to": after, "copy": copy})

    def live_batches(self, destination: str, *, source_account: str) -> list[Batch]:
        """Batches (not being deleted or deleted) that moved ``source_account`` into ``destination``, newest first."""
        return [
            b
            for b in self.batches()
            if b.destination == destination
            and b.source_account == source_account
            and b.status not in ("deleting", "deleted")
        ]

    def latest_items(
        self, batch_ids: Iterable[str], entity: str, source_ids: Iterable[str] | None = None
    ) -> dict[str, Item]:
        """Each source record's item in the newest of these batches that has one: ``{source_id: item}``.

        What a top-up knows of records it did not read again (their patient, their
        invoice), and how reconciliation sees a plan's batches as one: a later batch's
        item (``updated``, or skipped as ``deleted_at_source``) replaces an earlier one.
        Pass ``source_ids`` to look up only those.
        """
        where, params = "i.entity = ?", [json.dumps(list(batch_ids)), entity]
        if source_ids is not None:
            where += " AND i.source_id IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(list(source_ids)))
        rows = self._rows(
            "SELECT entity, source_id, dest_id, action, reason_code, reason FROM ("
            " SELECT i.entity, i.source_id, i.dest_id, i.action, i.reason_code, i.reason, row_number()"
            "  OVER (PARTITION BY i.source_id ORDER BY b.created_at DESC, b.id DESC) AS newest"
            " FROM items i JOIN batches b ON b.id = i.batch_id"
            f" WHERE i.batch_id IN (SELECT value FROM json_each(?)) AND {where}"
            ") WHERE newest = 1",
            params,
        )
        return {r["source_id"]: Item(*tuple(r)) for r in rows}

    def latest_counts(
        self, batch_ids: Iterable[str], *, leave_out_skipped: str | None = None
    ) -> dict[str, int]:
        """How many source records of each entity these batches have items for: ``{entity: n}``.

        Each record counts once, by its item in the newest of the batches (as
        :meth:`latest_items`); with ``leave_out_skipped``, records whose newest item is
        skipped with that reason code are left out. Counted by SQLite, so a large clinic's
        million items are never read into memory.
        """
        batches = list(batch_ids)
        kept, params = "", []
        if leave_out_skipped is not None:
            kept, params = " AND NOT (action = 'skipped' AND reason_code IS ?)", [leave_out_skipped]
        if len(batches) == 1:  # one item per record: no newest to find, so no sort of them all
            rows = self._rows(
                f"SELECT entity, count(*) FROM items WHERE batch_id = ?{kept} GROUP BY entity",
                (batches[0], *params),
            )
        else:
            rows = self._rows(
                "SELECT entity, count(*) FROM ("
                " SELECT i.entity, i.action, i.reason_code, row_number()"
                "  OVER (PARTITION BY i.entity, i.source_id ORDER BY b.created_at DESC, b.id DESC) AS newest"
                " FROM items i JOIN batches b ON b.id = i.batch_id"
                " WHERE i.batch_id IN (SELECT value FROM json_each(?))"
                f") WHERE newest = 1{kept} GROUP BY entity",
                (json.dumps(batches), *params),
            )
        return {entity: n for entity, n in rows}

    def batch_requests(self, batch_id: str) -> int | None:
        """Requests the batch's runs spent reading the source (its resumptions added up), if recorded."""
        spent = [
            entry["detail"]["requests"]
            for entry in self.audit_log(batch_id)
            if isinstance(entry["detail"].get("requests"), int)
        ]
        return sum(spent) if spent else None
