"""The sandbox's storage: one SQLite database per account.

Each account lives in a *private temporary* SQLite database (``sqlite3.connect("")``):
SQLite keeps it in a file in the temp directory that is deleted when the connection
closes (even if the process dies), so a ``large`` clinic of about a million records
costs disk, not RSS.

Schema, per resource one table::

    id INTEGER PRIMARY KEY,        -- signed 64-bit: ids above 2**53 fit exactly
    <each filterable field>,       -- from the registry (patient_id, updated_at, email...)
    deleted_at, archived_at,       -- lifecycle, on every table (NULL when live)
    cancelled_at,                  -- where the resource can be cancelled
    active,                        -- practitioners only (1 / 0)
    body TEXT                      -- JSON of every other field

Array-of-id fields (``patient_ids``, and any ``<x>_ids`` list a generator adds, such
as ``business_ids`` on practitioners) are kept in the body *and* in one side table
``_members(res, id, field, value)`` so that nested routes such as
``/businesses/:id/practitioners`` can be answered with an indexed lookup.

Indexes (built after the bulk load): ``created_at`` and ``updated_at``, every
id-reference column (``patient_id``...) and every date-time filter column, each
followed by the default sort keys (``created_at, id``) and then the lifecycle
columns. A page is then found by walking one index in order without touching the
wide rows (pages are read in two steps: ids through the index, then those rows),
and the ``COUNT(*)`` behind ``total_entries`` is a covering-index scan, cached
until the next write. Measured on the ``large`` clinic (~290k appointments): a
count 10-18 ms uncached, page 2,000 of the appointments ~13 ms.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from migrator.cliniko.resources import RESOURCES, Resource

__all__ = ["AccountStore", "Table", "resource_for"]

_CHUNK = 5000
# One encoder for every row: json.dumps would build a new one per call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_LIFECYCLE = ("deleted_at", "archived_at", "cancelled_at", "active")


def resource_for(name: str) -> Resource:
    """The registry entry for ``name``, or a minimal read-only one for resources the
    registry does not know (a generator may yield extra resources; they are served
    with timestamp and id filters only, ids as numbers)."""
    found = RESOURCES.get(name)
    if found is not None:
        return found
    return Resource(name, "int", {"created_at": "dt", "updated_at": "dt", "id": "int"})


@dataclass(frozen=True)
class Table:
    """The SQL shape of one resource's table."""

    resource: Resource
    columns: tuple[str, ...]  # every column but id and body, in table order
    lifecycle: tuple[str, ...]  # the lifecycle columns this table has

    @classmethod
    def for_resource(cls, res: Resource) -> Table:
        lifecycle = ["deleted_at", "archived_at"]
        if "cancelled" in res.list_routes or "cancelled_at" in res.filters:
            lifecycle.append("cancelled_at")
        if "inactive" in res.list_routes:
            lifecycle.append("active")
        fields = [f for f in res.filters if f != "id" and f not in lifecycle]
        return cls(res, tuple(fields + lifecycle), tuple(lifecycle))

    @property
    def name(self) -> str:
        return self.resource.name

    def ddl(self) -> list[str]:
        cols = ", ".join(f'"{c}"' for c in self.columns)
        stmts = [f'CREATE TABLE "{self.name}" (id INTEGER PRIMARY KEY, {cols}, body TEXT NOT NULL)']
        return stmts

    def index_ddl(self) -> list[str]:
        """Indexes, built after the bulk load (faster than maintaining them row by row).

        Each index carries the sort keys a list needs after its filter column
        (``created_at, id``: the default order) and then the lifecycle columns, so
        a page is found by walking one index, in order, without touching the wide
        rows, and counts are covering scans. No index *leads* with a lifecycle
        column: the planner would take ``deleted_at IS NULL`` for a selective
        lookup and then sort the whole table.
        """
        kinds = self.resource.filters
        specs: list[tuple[str, ...]] = [
            ("created_at", "id", "updated_at"),
            ("updated_at", "id", "created_at"),
        ]
        for column in self.columns:
            if column in self.lifecycle or column in ("created_at", "updated_at"):
                continue
            if column.endswith("_id"):
                specs.append((column, "created_at", "id"))
            elif kinds.get(column) == "dt":
                specs.append((column, "id"))
        stmts = []
        for spec in specs:
            cols = ", ".join(f'"{c}"' for c in (*spec, *self.lifecycle))
            stmts.append(f'CREATE INDEX "ix_{self.name}_{spec[0]}" ON "{self.name}" ({cols})')
        return stmts

    def row(self, record: dict[str, Any]) -> tuple[Any, ...]:
        """The SQL row of an internal record: id, the columns, then the JSON body."""
        body = record.copy()
        record_id = body.pop("id")
        values = [body.pop(c, None) for c in self.columns]
        if "active" in self.lifecycle and values[-1] is None:
            values[-1] = True  # a practitioner without the flag is active
        return (record_id, *values, _encode(body))

    def record(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """The internal record of an SQL row (the inverse of :meth:`row`)."""
        rec: dict[str, Any] = json.loads(row[-1])
        rec["id"] = row[0]
        rec.update(zip(self.columns, row[1:-1], strict=True))
        if "active" in self.lifecycle:
            rec["active"] = bool(rec["active"])
        return rec

    def select_list(self) -> str:
        return "id, " + ", ".join(f'"{c}"' for c in self.columns) + ", body"


class AccountStore:
    """One account's records in a private temporary SQLite database.

    The store is synchronous and not thread-safe: the server calls it from its
    event-loop thread only (queries are index lookups taking well under a
    millisecond, so running them inline is cheaper than a thread hop).
    """

    def __init__(self) -> None:
        # "" = a private temporary on-disk database, removed when the connection closes.
        self.conn = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA cache_size=-32768")  # 32 MiB page cache per account
        self.tables: dict[str, Table] = {}
        self.conn.execute(
            "CREATE TABLE _members (res TEXT NOT NULL, id INTEGER NOT NULL, field TEXT NOT NULL, "
            "value INTEGER NOT NULL)"
        )
        self._max_id: dict[str, int] = {}
        self._version = 0  # bumped by every write; keys the count cache
        self._counts: dict[tuple[Any, ...], int] = {}

    # -- schema -------------------------------------------------------------

    def table(self, name: str) -> Table | None:
        return self.tables.get(name)

    def _ensure_table(self, name: str) -> Table:
        table = self.tables.get(name)
        if table is None:
            table = Table.for_resource(resource_for(name))
            for stmt in table.ddl():
                self.conn.execute(stmt)
            self.tables[name] = table
        return table

    # -- bulk load ----------------------------------------------------------

    def load(self, records: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, int]:
        """Bulk-load a stream of ``(resource, record)``; returns rows loaded per resource.

        One transaction, ``executemany`` in chunks, journal and fsync off: if the
        load dies half-way the temporary database is thrown away anyway.
        """
        conn = self.conn
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        for name in RESOURCES:  # every registry table exists, even if empty
            self._ensure_table(name)
        counts: dict[str, int] = {}
        pending: dict[str, list[tuple[Any, ...]]] = {}
        members: list[tuple[str, int, str, int]] = []
        # the <x>_ids list fields of each resource, read off its first record
        arrays: dict[str, list[str]] = {}
        conn.execute("BEGIN")
        try:
            for name, rec in records:
                fields = arrays.get(name)
                if fields is None:
                    fields = arrays[name] = [k for k in rec if k.endswith("_ids")]
                    self._ensure_table(name)
                rows = pending.setdefault(name, [])
                rows.append(self.tables[name].row(rec))
                for key in fields:
                    value = rec.get(key)
                    if value:
                        members.extend((name, rec["id"], key, v) for v in value)
                if len(rows) >= _CHUNK:
                    self._flush(self.tables[name], rows)
                    counts[name] = counts.get(name, 0) + len(rows)
                    rows.clear()
                if len(members) >= _CHUNK:
                    conn.executemany("INSERT INTO _members VALUES (?, ?, ?, ?)", members)
                    members.clear()
            for name, rows in pending.items():
                if rows:
                    self._flush(self.tables[name], rows)
                    counts[name] = counts.get(name, 0) + len(rows)
            conn.executemany("INSERT INTO _members VALUES (?, ?, ?, ?)", members)
            for table in self.tables.values():
                for stmt in table.index_ddl():
                    conn.execute(stmt)
            conn.execute("CREATE INDEX ix__members_value ON _members (res, field, value)")
            conn.execute("CREATE INDEX ix__members_id ON _members (res, id, field)")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        # After the load, writes are rare and small: keep a rollback journal in memory.
        conn.execute("PRAGMA journal_mode=MEMORY")
        # Statistics let the planner pick the selective index (patient_id over
        # created_at...); sampling keeps ANALYZE cheap on big tables.
        conn.execute("PRAGMA analysis_limit=1000")
        conn.execute("ANALYZE")
        return counts

    def _flush(self, table: Table, rows: list[tuple[Any, ...]]) -> None:
        marks = ", ".join("?" * (len(table.columns) + 2))
        self.conn.executemany(f'INSERT INTO "{table.name}" VALUES ({marks})', rows)

    # -- reads --------------------------------------------------------------

    def get(self, name: str, record_id: int) -> dict[str, Any] | None:
        """The record with this id (deleted ones included), or ``None``."""
        table = self.tables.get(name)
        if table is None:
            return None
        row = self.conn.execute(
            f'SELECT {table.select_list()} FROM "{name}" WHERE id = ?', (record_id,)
        ).fetchone()
        return table.record(row) if row else None

    def count(self, name: str, where: str, params: list[Any]) -> int:
        """``COUNT(*)`` of a list, cached until the next write to this account.

        A client paging through 3,000 pages asks the same count 3,000 times; on a
        300k-row table each costs ~10 ms, the cache makes the repeats free.
        """
        key = (self._version, name, where, tuple(params))
        total = self._counts.get(key)
        if total is None:
            sql = f'SELECT COUNT(*) FROM "{name}"' + (f" WHERE {where}" if where else "")
            total = int(self.conn.execute(sql, params).fetchone()[0])
            if len(self._counts) >= 4096:
                self._counts.clear()
            self._counts[key] = total
        return total

    def select(
        self, name: str, where: str, params: list[Any], order: str, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """One page of records; ``where`` and ``order`` come from :mod:`.query`, which only
        ever emits quoted column names and ``?`` placeholders."""
        table = self.tables[name]
        # Two steps: find the page's ids through the indexes alone (a deep OFFSET
        # then walks index entries, never rows), then read just those rows.
        sql = f'SELECT id FROM "{name}"'
        if where:
            sql += f" WHERE {where}"
        sql += f" ORDER BY {order} LIMIT ? OFFSET ?"
        ids = [r[0] for r in self.conn.execute(sql, [*params, limit, offset])]
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        rows = self.conn.execute(f'SELECT {table.select_list()} FROM "{name}" WHERE id IN ({marks})', ids)
        by_id = {r[0]: r for r in rows}
        return [table.record(by_id[i]) for i in ids]

    def find(self, name: str, column: str, value: Any) -> Iterator[dict[str, Any]]:
        """Records whose ``column`` equals ``value`` (``column`` must be a table column)."""
        table = self.tables[name]
        if column not in table.columns and column != "id":
            raise KeyError(column)
        sql = f'SELECT {table.select_list()} FROM "{name}" WHERE "{column}" = ? ORDER BY id'
        for row in self.conn.execute(sql, (value,)):
            yield table.record(row)

    def has_members(self, res: str, field: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM _members WHERE res = ? AND field = ? LIMIT 1", (res, field)
        ).fetchone()
        return row is not None

    # -- writes -------------------------------------------------------------

    def next_id(self, name: str, shared: tuple[str, ...] = ()) -> int:
        """A fresh id for ``name``: one above the highest id of it (and of ``shared``
        tables: bookings share one id space across appointment kinds)."""
        names = (name, *shared)
        top = max(self._top(n) for n in names)
        new = top + 1
        for n in names:
            self._max_id[n] = new
        return new

    def _top(self, name: str) -> int:
        if name not in self._max_id:
            table = self.tables.get(name)
            if table is None:
                return 0
            row = self.conn.execute(f'SELECT MAX(id) FROM "{name}"').fetchone()
            self._max_id[name] = int(row[0] or 0)
        return self._max_id[name]

    def insert(self, name: str, record: dict[str, Any]) -> None:
        table = self._ensure_table(name)
        row = table.row(record)
        marks = ", ".join("?" * len(row))
        self.conn.execute(f'INSERT INTO "{name}" VALUES ({marks})', row)
        self._sync_members(name, record)

    def replace(self, name: str, record: dict[str, Any]) -> None:
        """Write back a whole record (updates are read-modify-write; rows are small)."""
        table = self.tables[name]
        row = table.row(record)
        sets = ", ".join(f'"{c}" = ?' for c in table.columns)
        self.conn.execute(f'UPDATE "{name}" SET {sets}, body = ? WHERE id = ?', (*row[1:], row[0]))
        self._sync_members(name, record)

    def _sync_members(self, name: str, record: dict[str, Any]) -> None:
        self._version += 1
        fields = [k for k, v in record.items() if k.endswith("_ids") and isinstance(v, list)]
        for key in fields:
            self.conn.execute(
                "DELETE FROM _members WHERE res = ? AND id = ? AND field = ?", (name, record["id"], key)
            )
            self.conn.executemany(
                "INSERT INTO _members VALUES (?, ?, ?, ?)",
                [(name, record["id"], key, v) for v in record[key]],
            )

    def close(self) -> None:
        self.conn.close()
