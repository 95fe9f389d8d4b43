"""The local clinic store: the embedded destination, one SQLite database (``sqlite:PATH``).

One table per entity, named after the Cliniko resource (``patients``, ``invoices``, ...);
each keeps its own ``id`` (the destination id), the record's ``source_id``,
``source_account`` and the ``batch_id`` that created it (all NULL for records the clinic
set up itself), real columns for what an analyst queries, foreign keys as destination
ids, and the full original record in ``data`` (JSON). ``written_by`` keeps the id of every
batch that created records there, deleted ones included: the store is its ledger's. The
tables and their rules are in :mod:`migrator.destinations._schema`. Imported appointments,
group appointments, attendees and unavailable blocks carry ``imported = 1`` and
``notifications_suppressed = 1``: nothing in the store ever messages a patient.

The store's database is ATTACHed to the ledger's connection as schema ``clinic``, so a
page of records and its ledger items commit in one transaction::

    ledger = Ledger("workspace")
    store = LocalStore(LocalStore.parse_target("sqlite:workspace/clinic.db"), ledger)
    with ledger.transaction():
        ids = store.insert("patients", rows, batch_id=batch.id, source_account="40117")
        ledger.record_items(batch.id, items)

**Invoice balances: one rule.** Each invoice keeps Cliniko's ``number``, ``issue_date``,
``status``, ``status_description`` and ``total_amount``, and the store sets
``outstanding`` (what the patient still owes on it) from its status:

==========================  =========================================================
status                      ``outstanding``
==========================  =========================================================
10 Open                     ``total_amount``
20 Paid, 30 Closed          ``0`` (at ``total_amount``'s precision, ``0.00``)
40 Open (credit)            ``total_amount`` as it stands, i.e. negative: a credit the
                            clinic owes the patient *reduces* the patient's balance
anything else, or no total  NULL (unknown, never guessed)
==========================  =========================================================

A patient's balance is the sum of ``outstanding`` over their invoices. Deleted invoices
never come across: inserting one (``data.deleted_at`` set) raises ``ValueError``.

Patient matching (:meth:`LocalStore.find_patients`) compares names case-, accent-form-
and space-insensitively (NFKC, casefold, runs of spaces collapsed) *and* an equal, known
date of birth, and only against patients not from the same source account: records of
the same source account are found through the ledger instead, and two source patients
must never be merged with each other.
"""

from __future__ import annotations

import json
import sqlite3
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
import sqlite_utils

from migrator.destinations._schema import (
    DELETE_ORDER,
    INSERT_ORDER,
    TABLES,
    Column,
    Table,
    json_text,
    row_from_record,
    table,
    utc_text,
)
from migrator.errors import ConfigError, MigratorError
from migrator.ledger import (
    CACHE_KIB,
    Ledger,
    SchemaMigrations,
    apply_migrations,
    insert_rows,
    opening_database,
)
from migrator.workspace import make_private_database

__all__ = [
    "CLINIC_MIGRATIONS",
    "DELETE_ORDER",
    "INSERT_ORDER",
    "REFERENCE_SCHEMA",
    "KeptLink",
    "LocalStore",
    "name_key",
    "outstanding_amount",
    "row_from_record",
]

SCHEMA = "clinic"

#: The store's schema migrations, recorded in ``migrations`` inside the store's database.
CLINIC_MIGRATIONS = SchemaMigrations("clinic")


@CLINIC_MIGRATIONS(name="001_clinic_tables")
def _clinic_tables(db: sqlite_utils.Database) -> None:
    for spec in TABLES.values():
        for statement in spec.ddl(since=1):
            db.execute(statement)


@CLINIC_MIGRATIONS(name="002_written_by")
def _written_by(db: sqlite_utils.Database) -> None:
    """``written_by``: every batch that created records in the store, kept after the batch is deleted.

    The batches whose records a store holds say whose ledger it belongs to; once a batch's
    records are deleted this table still says so, so another workspace cannot take a store
    its own ledger still knows. Filled here from the records already there.
    """
    db.execute("CREATE TABLE written_by (batch_id TEXT PRIMARY KEY) WITHOUT ROWID")
    for spec in TABLES.values():
        if db[spec.name].exists():
            db.execute(
                f"INSERT OR IGNORE INTO written_by (batch_id) "
                f"SELECT DISTINCT batch_id FROM {spec.name} WHERE batch_id IS NOT NULL"
            )


def outstanding_amount(status: int | None, total_amount: str | Decimal | None) -> str | None:
    """What is still owed on an invoice, by the module's one rule (see the table above).

    >>> outstanding_amount(10, "120.00"), outstanding_amount(20, "120.00"), outstanding_amount(40, "-15.00")
    ('120.00', '0.00', '-15.00')
    """
    if total_amount is None or total_amount == "":
        return None
    total = Decimal(str(total_amount))
    if status in (10, 40):
        return str(total)
    if status in (20, 30):
        return str(total - total)  # zero with the total's exponent: "0.00"
    return None


def _fold(text: str | None) -> str:
    return " ".join(unicodedata.normalize("NFKC", text or "").casefold().split())


def name_key(first_name: str | None, last_name: str | None) -> str | None:
    """The key patients are matched on: both names folded, or ``None`` if either is blank."""
    first, last = _fold(first_name), _fold(last_name)
    return f"{first}\x1f{last}" if first and last else None


class KeptLink(NamedTuple):
    """``records`` rows of ``entity``, created by ``batch_id`` (``None``: the clinic's own), whose
    ``column`` points at a record a deletion would remove (:meth:`LocalStore.links_into`)."""

    entity: str
    column: str
    batch_id: str | None
    records: int


#: The columns of :meth:`LocalStore.reference`: a mapping table's destination side.
REFERENCE_SCHEMA: dict[str, Any] = {
    "id": pl.String,
    "name": pl.String,
    "active": pl.Boolean,
    "source_id": pl.String,
}

# name, active: how reference() reads each mapping table.
_REFERENCE = {
    "practitioners": ("trim(coalesce(first_name, '') || ' ' || coalesce(last_name, ''))", "active"),
    "businesses": ("business_name", "1"),
    "appointment_types": ("name", "archived_at IS NULL"),
}
_FRAME_TYPES: dict[str, Any] = {
    "text": pl.String,
    "int": pl.Int64,
    "fk": pl.Int64,
    "bool": pl.Int64,
    "decimal": pl.String,
    "date": pl.String,
    "datetime": pl.String,
}


def _migrate(path: Path) -> None:
    """Apply the store's migrations on a connection of its own (before it is attached)."""
    with opening_database(path, "the clinic store"):
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = DELETE")
            apply_migrations(sqlite_utils.Database(conn), CLINIC_MIGRATIONS)
        finally:
            conn.close()


#: The ids of the batches that created records in the store, deleted ones included.
_BATCHES_WRITTEN = f"SELECT batch_id FROM {SCHEMA}.written_by"


class LocalStore:
    """The local clinic store, written through the ledger's connection.

    Args:
        path: the store's database file (created, with its directory, if missing).
        ledger: the workspace's ledger; the store is ATTACHed to ``ledger.conn`` as
            ``clinic``, and every write happens in ``ledger.transaction()``.

    Raises:
        ConfigError: the path is the ledger's own file, a folder or a file that is not a
            SQLite database, the ledger already has another store attached, or batches this
            ledger does not know created records in the store (another workspace's store:
            this ledger could not tell what is already there, nor delete them), even if
            those records have since been deleted; or records of a batch the ledger does
            not record (a store copied later than its ledger).

    A store holding batches the ledger recorded as going into another path was moved or
    copied with its workspace (to another folder, or a copy to try things on): the
    ledger's batches are pointed at it, audit-logged as ``store_moved`` (``copy`` when
    the other path still holds a store), so re-runs still find what is already there.
    One ledger switched between two copies of a store follows whichever it opened last.

    A store outside the workspace is not copied with it: a copied ledger (see
    :meth:`Ledger.originals`) is refused a store its original's batches went into while that
    original is still there, so trying things in the copy cannot delete or add to the
    original's records behind its ledger's back.
    """

    INSERT_ORDER = INSERT_ORDER
    DELETE_ORDER = DELETE_ORDER

    def __init__(self, path: str | Path, ledger: Ledger) -> None:
        self.path = Path(path).resolve()
        self.ledger = ledger
        if self.path == ledger.path.resolve():
            raise ConfigError("The clinic store needs a database file of its own, not the ledger's.")
        if shared := self.shared_with_original(self.path, ledger):
            raise ConfigError(shared)
        make_private_database(self.path)
        _migrate(self.path)
        with ledger.lock:
            attached = {row[1]: row[2] for row in ledger.conn.execute("PRAGMA database_list")}
            if SCHEMA not in attached:
                ledger.conn.execute(f"ATTACH DATABASE ? AS {SCHEMA}", (str(self.path),))
            elif Path(attached[SCHEMA]).resolve() != self.path:
                raise ConfigError(f"This ledger already writes to the clinic store at {attached[SCHEMA]}.")
            # Atomic commits across attached databases need a rollback journal on both.
            ledger.conn.execute(f"PRAGMA {SCHEMA}.journal_mode = DELETE")
            ledger.conn.execute(f"PRAGMA {SCHEMA}.cache_size = -{CACHE_KIB}")
            stranger = self._unknown_batch()
            revived = self._deleted_batch_still_here() if stranger is None else None
            ahead = self._batch_ahead_of_ledger() if stranger is None and revived is None else None
            recorded = (
                self._recorded_elsewhere() if stranger is None and revived is None and ahead is None else None
            )
        if ahead is not None:
            self.close()
            raise ConfigError(
                f"The clinic store at {self.path} holds records batch {ahead} created that the ledger at "
                f"{ledger.path} does not record: the store was copied later than the ledger "
                "(after another workspace went on with that batch?), and the ledger cannot tell what in it is "
                "already there. Copy the workspace again with the store as they are now, or use another store."
            )
        if revived is not None:
            self.close()
            raise ConfigError(
                f"The clinic store at {self.path} still holds records of batch {revived}, which the ledger at "
                f"{ledger.path} says was deleted: a copy of the store from before that deletion (a backup put "
                "back?). The ledger cannot tell what in it is still wanted; use the store as it was after the "
                "deletion, or another store."
            )
        if stranger is not None:
            self.close()
            raise ConfigError(
                f"The clinic store at {self.path} was written by batch {stranger}, which the ledger at "
                f"{ledger.path} does not know: it belongs to another workspace. Use that workspace "
                "(--workspace; workspace= in a notebook), or another store."
            )
        if recorded is not None:  # moved or copied, with its workspace or on its own
            ledger.store_moved(recorded, self.describe(), copy=self.parse_target(recorded).exists())

    @staticmethod
    def shared_with_original(path: Path, ledger: Ledger) -> str | None:
        """Why ``ledger``, a copy, may not use the store at ``path``, if it may not; ``None`` if it may.

        A store outside the workspace is not copied with it: while the original workspace
        (:meth:`Ledger.originals`) records a batch into that store, a run or deletion from
        the copy would change the original's records behind its ledger's back.
        """
        path = path.resolve()
        if path.is_relative_to(ledger.workspace.resolve()):
            return None
        original = ledger.original_writing_to(f"sqlite:{path}")
        if original is None:
            return None
        own = ledger.workspace / "clinic.db"
        remedy = (
            f"This workspace has a store of its own, {own} (used when --to is left out); the batches into that "
            "other store are the other workspace's to run or delete."
            if own.exists()
            else f"Copy that store to {own} and it is this workspace's own; or work in the other workspace."
        )
        return (
            f"The workspace {ledger.workspace} is a copy of {original.parent} (or that one of this), and both record "
            f"batches into the clinic store at {path}, which lies outside this workspace and so was not copied "
            "with it: a run or deletion here would change the other workspace's records behind its ledger's back. "
            + remedy
        )

    def _recorded_elsewhere(self) -> str | None:
        """The destination the ledger recorded for batches that wrote into this store, when not this store."""
        row = self.ledger.conn.execute(
            f"SELECT b.destination FROM ({_BATCHES_WRITTEN}) w JOIN main.batches b ON b.id = w.batch_id"
            " WHERE b.destination != ? LIMIT 1",
            (self.describe(),),
        ).fetchone()
        return None if row is None else str(row[0])

    def _deleted_batch_still_here(self) -> str | None:
        """A batch the ledger says was deleted whose records this store still holds, if any.

        A store put back from before a deletion (or one of two copies, the other emptied):
        a run would trip over records it believes gone, and a listing would call them deleted.
        """
        gone = [
            batch_id
            for (batch_id,) in self.ledger.conn.execute(
                f"SELECT w.batch_id FROM ({_BATCHES_WRITTEN}) w JOIN main.batches b ON b.id = w.batch_id"
                " WHERE b.status = 'deleted'"
            )
        ]
        for batch_id in gone:
            for entity in INSERT_ORDER:  # each table's batch_id index: a lookup apiece
                if self.ledger.conn.execute(
                    f"SELECT 1 FROM {SCHEMA}.{entity} WHERE batch_id = ? LIMIT 1", (batch_id,)
                ).fetchone():
                    return str(batch_id)
        return None

    def _batch_ahead_of_ledger(self) -> str | None:
        """A batch left to resume whose newest record in some table the ledger has no item for, if any.

        Rows and their items are written in one transaction, so this happens only when the
        store was taken from a later moment than the ledger: a copied workspace whose
        original then went on with a stopped batch, and whose store was copied in after. A
        run would trip over records it does not know (UNIQUE on ``source_id``).

        Only the newest row per table (by id, allocated in order) is looked up, two index
        seeks a table: a store behind nothing has that row's item, whatever else it holds.
        Only a batch left to resume is looked at: one the ledger calls finished could not
        have gone on elsewhere after the ledger was copied.
        """
        resumable = [
            str(batch_id)
            for (batch_id,) in self.ledger.conn.execute(
                f"SELECT w.batch_id FROM ({_BATCHES_WRITTEN}) w JOIN main.batches b ON b.id = w.batch_id"
                " WHERE b.status IN ('running', 'stopped', 'failed')"
            )
        ]
        for batch_id in resumable:
            for entity in INSERT_ORDER:
                newest = self.ledger.conn.execute(
                    f"SELECT source_id FROM {SCHEMA}.{entity} WHERE batch_id = ? AND source_id IS NOT NULL"
                    " ORDER BY id DESC LIMIT 1",
                    (batch_id,),
                ).fetchone()
                if (
                    newest is not None
                    and not self.ledger.conn.execute(
                        "SELECT 1 FROM main.items WHERE batch_id = ? AND entity = ? AND source_id = ?",
                        (batch_id, entity, newest[0]),
                    ).fetchone()
                ):
                    return batch_id
        return None

    def _unknown_batch(self) -> str | None:
        """A batch that created records in the store but that the ledger does not know, if any."""
        row = self.ledger.conn.execute(
            f"SELECT batch_id FROM ({_BATCHES_WRITTEN}) WHERE batch_id NOT IN (SELECT id FROM main.batches) LIMIT 1"
        ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def parse_target(target: str) -> Path:
        """The path in a ``sqlite:PATH`` destination; raises :class:`ConfigError` otherwise.

        The message never repeats the input: a key pasted in the wrong box stays secret.

        >>> LocalStore.parse_target("sqlite:workspace/clinic.db")
        PosixPath('workspace/clinic.db')
        """
        scheme, _, rest = target.strip().partition(":")
        if scheme != "sqlite" or not rest.strip():
            raise ConfigError(
                "A local clinic store is named sqlite:PATH, for example sqlite:workspace/clinic.db."
            )
        return Path(rest.strip())

    def describe(self) -> str:
        """The store as a batch's destination: ``sqlite:/abs/path/clinic.db``."""
        return f"sqlite:{self.path}"

    def close(self) -> None:
        """Detach the store from the ledger's connection."""
        with self.ledger.lock:
            self.ledger.conn.execute(f"DETACH DATABASE {SCHEMA}")

    # --- reads ----------------------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.ledger.lock:
            return self.ledger.conn.execute(sql, tuple(params)).fetchall()

    def _ids(self, sql: str, params: Sequence[Any] = ()) -> list[str]:
        return [str(r[0]) for r in self._rows(sql, params)]

    def dest_id(self, entity: str, source_id: str, *, source_account: str | None = None) -> str | None:
        """The id of the record in the store for this source id, if there is one.

        ``source_account`` narrows it to one source account; two accounts may use the
        same ids (the sandbox's do), so pass it whenever it is known.
        """
        sql = f"SELECT id FROM {SCHEMA}.{table(entity).name} WHERE source_id = ?"
        if source_account is None:
            ids = self._ids(sql + " ORDER BY id LIMIT 1", (str(source_id),))
        else:
            ids = self._ids(sql + " AND source_account = ?", (str(source_id), source_account))
        return ids[0] if ids else None

    def find_patients(
        self,
        first_name: str | None,
        last_name: str | None,
        date_of_birth: date | str | None,
        *,
        exclude_source_account: str,
    ) -> list[str]:
        """Patients with the same names (case and spacing aside) and the same date of birth.

        Only patients set up by hand or from another source account are candidates; a
        blank name or an unknown date of birth matches nobody.
        """
        key = name_key(first_name, last_name)
        dob = TABLES["patients"].column("date_of_birth").adapt(date_of_birth)
        if key is None or dob is None:
            return []
        return self._ids(
            f"SELECT id FROM {SCHEMA}.patients WHERE name_key = ? AND date_of_birth = ?"
            " AND source_account IS NOT ? ORDER BY id",
            (key, dob, exclude_source_account),
        )

    def find_patients_by_email(self, email: str | None, exclude_source_account: str) -> list[str]:
        """Patients with this email (case and surrounding spaces aside): near matches for review."""
        if not email or not email.strip():
            return []
        return self._ids(
            f"SELECT id FROM {SCHEMA}.patients WHERE lower(trim(email)) = lower(?)"
            " AND source_account IS NOT ? ORDER BY id",
            (email.strip(), exclude_source_account),
        )

    def find_individual_appointment(
        self,
        starts_at: datetime | str | None,
        practitioner_id: str | None,
        patient_id: str | None,
        exclude_source_account: str,
    ) -> list[str]:
        """Appointments at the same instant, with the same practitioner and patient (destination ids).

        Only appointments set up by hand or from another source account are candidates;
        without a start, a practitioner or a patient nothing matches.
        """
        if starts_at is None or starts_at == "" or practitioner_id is None or patient_id is None:
            return []
        return self._ids(
            f"SELECT id FROM {SCHEMA}.individual_appointments WHERE practitioner_id = ? AND starts_at = ?"
            " AND patient_id = ? AND source_account IS NOT ? ORDER BY id",
            (int(practitioner_id), utc_text(starts_at), int(patient_id), exclude_source_account),
        )

    def reference(self, entity: str) -> pl.DataFrame:
        """A mapping table's destination side: ``id`` (str), ``name``, ``active`` (bool), ``source_id``.

        For ``practitioners`` (name "First Last"), ``businesses`` (``business_name``, all
        active) and ``appointment_types`` (active unless archived).
        """
        try:
            name, active = _REFERENCE[entity]
        except KeyError:
            raise ValueError(f"reference() covers {', '.join(_REFERENCE)}, not {entity!r}") from None
        rows = self._rows(f"SELECT id, {name}, {active}, source_id FROM {SCHEMA}.{entity} ORDER BY id")
        return pl.DataFrame(
            [(str(i), n, bool(a), s) for i, n, a, s in rows], schema=REFERENCE_SCHEMA, orient="row"
        )

    def created_by(self, batch_id: str, entity: str) -> list[str]:
        """Ids of the records of ``entity`` this batch created, ascending."""
        return self._ids(
            f"SELECT id FROM {SCHEMA}.{table(entity).name} WHERE batch_id = ? ORDER BY id", (batch_id,)
        )

    def created_and_matched(self, batch_id: str, entity: str) -> tuple[list[str], list[str]]:
        """:meth:`created_by`, and nothing found by matching: every row the store holds names its batch."""
        return self.created_by(batch_id, entity), []

    def has_foreign(self, entity: str, *, source_account: str) -> bool:
        """Whether ``entity`` holds any record that did not come from ``source_account``.

        Only such records can be linked to, so when there are none the engine skips its
        per-record look-ups for natural-key matches.
        """
        rows = self._rows(
            f"SELECT 1 FROM {SCHEMA}.{table(entity).name}"
            " WHERE source_account IS NULL OR source_account != ? LIMIT 1",
            (source_account,),
        )
        return bool(rows)

    def count(self, entity: str, batch_id: str | None = None) -> int:
        """How many records ``entity`` has (created by ``batch_id``, if given)."""
        sql = f"SELECT count(*) FROM {SCHEMA}.{table(entity).name}"
        rows = self._rows(sql) if batch_id is None else self._rows(sql + " WHERE batch_id = ?", (batch_id,))
        return int(rows[0][0])

    def dependents_of_patients(self, patient_ids: Iterable[str]) -> dict[str, list[str]]:
        """Every record owned, directly or not, by these patients: what deleting them removes.

        Follows required foreign keys (a patient's appointments, notes, invoices, and
        those invoices' items ...) whoever created the records: a later batch or the
        clinic by hand (seed 000). Returns ``{entity: [ids]}`` for the non-empty
        entities, in :data:`DELETE_ORDER`, the order to delete them in.
        """
        return self.dependents_of("patients", patient_ids)

    def dependents_of(self, entity: str, ids: Iterable[str]) -> dict[str, list[str]]:
        """Every record owned, directly or not, by these records of ``entity`` (see :meth:`dependents_of_patients`).

        An invoice owns its items, a group appointment its attendees, a patient nearly
        everything. Returns ``{entity: [ids]}`` for the non-empty entities other than
        ``entity`` itself, in :data:`DELETE_ORDER`.
        """
        found: dict[str, list[int]] = {entity: [int(i) for i in ids]}
        for child in INSERT_ORDER:  # parents first, so an owner's list is complete when used
            owners = [c for c in TABLES[child].columns if c.required and c.references in found]
            if not owners or child == entity:
                continue
            where = " OR ".join(f"{c.name} IN (SELECT value FROM json_each(?))" for c in owners)
            params = [json.dumps(found[c.references or ""]) for c in owners]
            rows = self._rows(f"SELECT id FROM {SCHEMA}.{child} WHERE {where} ORDER BY id", params)
            if rows:
                found[child] = [r[0] for r in rows]
        return {e: [str(i) for i in found[e]] for e in DELETE_ORDER if e in found and e != entity}

    def links_into(self, removing: Mapping[str, Sequence[str]]) -> list[KeptLink]:
        """Records that would stay while linking to one of ``removing`` (``{entity: [ids]}``).

        Deleting a batch must not leave a record of another batch (or of the clinic)
        pointing at nothing: a later batch's appointments that use a practitioner or an
        appointment type this batch created would lose them. One :class:`KeptLink` per
        entity, link column and batch that created the staying records (``None``: the
        clinic's own), in table order.
        """
        gone = {e: json.dumps([int(i) for i in ids]) for e, ids in removing.items() if ids}
        links: list[KeptLink] = []
        for name, spec in TABLES.items():
            for column in spec.foreign_keys:
                if column.references not in gone:
                    continue
                rows = self._rows(
                    f"SELECT batch_id, count(*) FROM {SCHEMA}.{name} WHERE {column.name} IN "
                    "(SELECT value FROM json_each(?)) AND id NOT IN (SELECT value FROM json_each(?)) "
                    "GROUP BY batch_id ORDER BY batch_id",
                    (gone[column.references or ""], gone.get(name, "[]")),
                )
                links += [KeptLink(name, column.name, batch_id, count) for batch_id, count in rows]
        return links

    def provenance(self, entity: str, ids: Iterable[str]) -> dict[str, tuple[str | None, str | None]]:
        """Where records came from: ``{id: (source_id, source_account)}``, both ``None`` for the clinic's own.

        Ids with no record are absent from the result.
        """
        rows = self._rows(
            f"SELECT id, source_id, source_account FROM {SCHEMA}.{table(entity).name}"
            " WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps([int(i) for i in ids]),),
        )
        return {str(i): (s, a) for i, s, a in rows}

    def existing_ids(self, entity: str, ids: Iterable[str]) -> set[str]:
        """Which of these destination ids have a record (reconciliation checks a batch's claims)."""
        rows = self._rows(
            f"SELECT id FROM {SCHEMA}.{table(entity).name} WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps([int(i) for i in ids]),),
        )
        return {str(i) for (i,) in rows}

    def invoice_patients(self, ids: Iterable[str]) -> dict[str, str | None]:
        """Each of these invoices' patient: ``{invoice id: patient id}``; ids with no invoice are absent."""
        rows = self._rows(
            f"SELECT id, patient_id FROM {SCHEMA}.invoices WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps([int(i) for i in ids]),),
        )
        return {str(i): None if patient is None else str(patient) for i, patient in rows}

    def stored_rows(
        self, entity: str, ids: Iterable[str], *, source_account: str, batch_id: str | None = None
    ) -> dict[str, dict[str, Any] | None]:
        """The stored form (:meth:`stored_form`) of records, to compare with a fresh copy of their source.

        Returns ``{id: stored form}`` for records imported from ``source_account``,
        ``{id: None}`` for records that exist but are not that account's (set up by the
        clinic, or from another account: linked to, never rewritten); ids with no
        record are absent. ``batch_id`` (the rewriting batch) is not needed here: a
        rewrite commits in the same transaction as its items.
        """
        spec = table(entity)
        own = [c.name for c in spec.columns if not c.computed]
        rows = self._rows(
            f"SELECT id, source_account, {', '.join([*own, 'data'])} FROM {SCHEMA}.{spec.name}"
            " WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps([int(i) for i in ids]),),
        )
        return {
            str(r[0]): dict(zip([*own, "data"], r[2:], strict=True)) if r[1] == source_account else None
            for r in rows
        }

    def stored_form(self, entity: str, row: Mapping[str, Any]) -> dict[str, Any]:
        """A destination-form row as :meth:`stored_rows` reads it back: own columns and ``data`` text."""
        _, values, data = self._prepare(table(entity), row, imported=True)
        values = {k: v for k, v in values.items() if not table(entity).column(k).computed}
        return {**values, "data": json_text(data)}

    def outstanding_by_patient(
        self, patient_ids: Iterable[str], *, leave_out: Iterable[str] = ()
    ) -> dict[str, tuple[str, Decimal]]:
        """What each patient owes by the store's own invoices: ``{id: (name, balance)}``.

        The module's one rule applied in SQL to each invoice's ``status`` and
        ``total_amount`` as the store holds them (not to the ``outstanding`` column, and
        not through :func:`outstanding_amount`), summed exactly as decimals: reconciliation
        compares it with the same rule applied to the source's invoices. Every invoice
        of the patient counts, whoever created it, but those in ``leave_out`` (destination
        ids); an invoice of unknown status counts 0.

        Raises:
            MigratorError: an open invoice's ``total_amount`` is not an amount (edited by hand).
        """
        rows = self._rows(
            f"SELECT p.id, trim(coalesce(p.first_name, '') || ' ' || coalesce(p.last_name, '')),"
            " CASE WHEN i.status IN (10, 40) THEN i.total_amount WHEN i.status IN (20, 30) THEN '0' END, i.id"
            f" FROM {SCHEMA}.patients p LEFT JOIN {SCHEMA}.invoices i ON i.patient_id = p.id"
            " AND i.id NOT IN (SELECT value FROM json_each(?))"
            " WHERE p.id IN (SELECT value FROM json_each(?))",
            (json.dumps([int(i) for i in leave_out]), json.dumps([int(i) for i in patient_ids])),
        )
        out: dict[str, tuple[str, Decimal]] = {}
        for patient_id, name, owed, invoice in rows:
            key = str(patient_id)
            before = out.get(key, (name, Decimal(0)))[1]
            try:
                amount = Decimal(owed) if owed else Decimal(0)
            except (InvalidOperation, TypeError):
                raise MigratorError(
                    f"Invoice {invoice} in the local clinic store {self.path} has total_amount {owed!r}, which is "
                    "not an amount; correct it there (as digits with a point, e.g. 12.50) to compare balances."
                ) from None
            out[key] = (name, before + amount)
        return out

    def frame(self, entity: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """A table as a Polars frame (all columns, or ``columns``).

        Ids and integers are ``Int64``, booleans ``Boolean``, dates ``Date``, datetimes
        UTC ``Datetime``; money stays exact decimal strings (cast with ``pl.Decimal``).
        """
        spec = table(entity)
        kinds: dict[str, Column | None] = {c: None for c in spec.column_names}
        kinds.update({c.name: c for c in spec.columns})
        wanted = list(columns or spec.column_names)
        unknown = [c for c in wanted if c not in kinds]
        if unknown:
            raise ValueError(f"{entity} has no columns {unknown}")
        schema = {
            c: (pl.Int64 if c == "id" else _FRAME_TYPES[k.kind] if (k := kinds[c]) else pl.String)
            for c in wanted
        }
        rows = self._rows(f"SELECT {', '.join(wanted)} FROM {SCHEMA}.{spec.name} ORDER BY id")
        frame = pl.DataFrame(rows, schema=schema, orient="row")
        casts = []
        for name in wanted:
            column = kinds[name]
            if column is None:
                continue
            if column.kind == "bool":
                casts.append(pl.col(name).cast(pl.Boolean))
            elif column.kind == "date":
                casts.append(pl.col(name).str.to_date("%Y-%m-%d"))
            elif column.kind == "datetime":
                casts.append(
                    pl.col(name).str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_unit="us", time_zone="UTC")
                )
        return frame.with_columns(casts) if casts else frame

    # --- writes ---------------------------------------------------------------------------

    def insert(
        self, entity: str, rows: list[dict[str, Any]], *, batch_id: str, source_account: str
    ) -> list[str]:
        """Insert imported records; return their new ids as strings, in order.

        Args:
            entity: the table (``"patients"``).
            rows: destination-form dicts: ``source_id``, real column values (foreign
                keys already destination ids), and ``data`` (the original record).
                :func:`row_from_record` builds one from a source record.
            batch_id: the batch creating them.
            source_account: the account they come from.

        Raises:
            ValueError: an unknown or computed column, a row without ``source_id``, a
                value of the wrong kind, a deleted invoice.
            sqlite3.IntegrityError: a foreign key pointing at no record, a missing
                owner, or a source id already in the store for this account.
        """
        if not batch_id or not source_account:
            raise ValueError("imported records need their batch_id and source_account")
        return self._insert(entity, rows, batch_id=batch_id, source_account=source_account)

    def setup_reference(self, entity: str, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        """Insert records the clinic set up itself (no source, no batch); return their ids.

        The demo uses it to create the destination clinic's practitioners and businesses
        before a migration, so that mapping has something to map to.
        """
        return self._insert(entity, list(rows), batch_id=None, source_account=None)

    def seed_from_sandbox_destination(
        self, records: Iterable[tuple[str, Mapping[str, Any]]]
    ) -> dict[str, list[str]]:
        """Set up the store like a sandbox destination account (``AccountSeed.records()``).

        Records of entities the store has no table for (users) and deleted ones are
        passed over; the records' own links are translated to the new ids. Seeding a
        store that already has records set up by hand does nothing (so the demo can
        call it every time). Returns the new ids per entity.
        """
        if any(self.count_set_up(e) for e in TABLES):
            return {}
        new_ids: dict[tuple[str, str], str] = {}
        out: dict[str, list[str]] = {}
        with self.ledger.transaction():
            for entity, record in records:
                if entity not in TABLES or record.get("deleted_at"):
                    continue
                fks = {
                    c.name: new_ids.get((c.references or "", str(record[c.name])))
                    for c in TABLES[entity].foreign_keys
                    if record.get(c.name) is not None
                }
                row = row_from_record(entity, record, fks)
                del row["source_id"]
                (new_id,) = self.setup_reference(entity, [row])
                new_ids[(entity, str(record["id"]))] = new_id
                out.setdefault(entity, []).append(new_id)
        return out

    def count_set_up(self, entity: str) -> int:
        """How many records of ``entity`` the clinic set up itself (no source)."""
        return int(
            self._rows(f"SELECT count(*) FROM {SCHEMA}.{table(entity).name} WHERE source_id IS NULL")[0][0]
        )

    def delete(self, entity: str, ids: Iterable[str]) -> int:
        """Hard-delete records by destination id; return how many went.

        Optional links to them are cleared (``ON DELETE SET NULL``). Raises
        ``sqlite3.IntegrityError`` while records they own remain: delete those first
        (:meth:`dependents_of_patients`, :data:`DELETE_ORDER`).
        """
        id_list = json.dumps([int(i) for i in ids])
        with self.ledger.transaction():
            cursor = self.ledger.conn.execute(
                f"DELETE FROM {SCHEMA}.{table(entity).name} WHERE id IN (SELECT value FROM json_each(?))",
                (id_list,),
            )
        return cursor.rowcount

    def _insert(
        self,
        entity: str,
        rows: Sequence[Mapping[str, Any]],
        *,
        batch_id: str | None,
        source_account: str | None,
    ) -> list[str]:
        spec = table(entity)
        if not rows:
            return []
        imported = batch_id is not None
        params = []
        for row in rows:
            sid, values, data = self._prepare(spec, row, imported=imported)
            params.append((sid, source_account, batch_id, *values.values(), json_text(data)))
        names = spec.column_names
        head = f"INSERT INTO {SCHEMA}.{spec.name} ({', '.join(names)})"
        with self.ledger.transaction():
            # Ids are allocated here, under the write lock, so they can be returned in order
            # from insert_rows; they continue AUTOINCREMENT's sequence, never reusing one.
            (start,) = self.ledger.conn.execute(
                f"SELECT max(coalesce((SELECT seq FROM {SCHEMA}.sqlite_sequence WHERE name = ?), 0),"
                f" coalesce((SELECT max(id) FROM {SCHEMA}.{spec.name}), 0)) + 1",
                (spec.name,),
            ).fetchone()
            insert_rows(self.ledger.conn, head, [(start + n, *p) for n, p in enumerate(params)])
            if imported:
                self.ledger.conn.execute(
                    f"INSERT OR IGNORE INTO {SCHEMA}.written_by (batch_id) VALUES (?)", (batch_id,)
                )
        return [str(start + n) for n in range(len(params))]

    @staticmethod
    def _prepare(
        spec: Table, row: Mapping[str, Any], *, imported: bool
    ) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
        """A row's source id, its column values as stored (computed ones filled in) and its ``data``."""
        entity = spec.name
        if not spec.settable.issuperset(row):
            unknown = row.keys() - spec.settable
            raise ValueError(f"{entity} rows have no columns {sorted(unknown)} a caller may set")
        source_id = row.get("source_id")
        if imported and source_id in (None, ""):
            raise ValueError(f"an imported {entity} row needs its source_id")
        if not imported and source_id is not None:
            raise ValueError(f"{entity} set up by the clinic have no source_id")
        data = row.get("data") or {}
        if type(data) is not dict:
            data = dict(data)
        values = spec.adapt(row)
        if entity == "patients":
            values["name_key"] = name_key(values["first_name"], values["last_name"])
        elif entity == "invoices":
            if data.get("deleted_at"):
                raise ValueError(f"invoice {source_id} is deleted; deleted invoices never come across")
            values["outstanding"] = outstanding_amount(values["status"], values["total_amount"])
        return (None if source_id is None else str(source_id)), values, data

    def update(
        self,
        entity: str,
        rows: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        source_account: str,
        batch_id: str | None = None,
    ) -> list[MigratorError | None]:
        """Rewrite imported records in place from a fresh copy of their source (a top-up's changes).

        Args:
            rows: ``(id, row)`` pairs; ``row`` as for :meth:`insert`, with the same
                ``source_id`` as the stored record.
            source_account: only records imported from this account are touched: a
                record the clinic set up itself, or one from another account, is never rewritten.
            batch_id: the rewriting batch; unused, as in :meth:`stored_rows`.

        The record keeps its id, source id and the batch that created it (so deleting that
        batch still removes it); computed columns (``outstanding``, ``name_key``) are
        recomputed. Returns, per row, ``None`` (rewritten) or why not (the record is no
        longer in the store, or not that account's). Raises as :meth:`insert`.
        """
        spec = table(entity)
        params = []
        for dest_id, row in rows:
            sid, values, data = self._prepare(spec, row, imported=True)
            params.append((*values.values(), json_text(data), int(dest_id), sid, source_account))
        sets = ", ".join(f"{c.name} = ?" for c in spec.columns)
        sql = (
            f"UPDATE {SCHEMA}.{spec.name} SET {sets}, data = ?"
            " WHERE id = ? AND source_id = ? AND source_account = ?"
        )
        gone = MigratorError(
            f"It is no longer in the clinic store as a record imported from {source_account}."
        )
        with self.ledger.transaction():
            return [None if self.ledger.conn.execute(sql, p).rowcount else gone for p in params]
