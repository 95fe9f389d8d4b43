"""The local clinic store's tables as data: columns, kinds, foreign keys, and their DDL.

One :class:`Table` per entity, named after the Cliniko resource. Every table has::

    id             INTEGER PRIMARY KEY AUTOINCREMENT   the destination id (never reused)
    source_id      TEXT      the Cliniko id; NULL for records the clinic set up itself
    source_account TEXT      the source account it came from; unique with source_id
    batch_id       TEXT      the batch that created it; NULL if set up by hand
    ...                      the table's own columns (below)
    data           TEXT      the full original record as JSON

Column kinds and how values are stored: ``text``; ``int`` and ``fk`` (a destination id)
as INTEGER; ``bool`` as INTEGER 0/1; ``decimal`` (money) as TEXT decimal strings,
never a float; ``date`` as ``YYYY-MM-DD``; ``datetime`` as UTC ``YYYY-MM-DDTHH:MM:SSZ``
(``.ffffff`` before the ``Z`` when there are microseconds), so equal instants are equal
strings, and whole seconds (all Cliniko sends) sort in time order.

Foreign keys follow one rule. A **required** (NOT NULL) key names the record's owner
(a patient, an invoice, a group appointment): the owner cannot be deleted while such
records exist, so a caller deletes them first (``dependents_of_patients`` lists them, as
seed 000 warns). An **optional** key is a link and is ``ON DELETE SET NULL``: deleting a
billable item clears it from appointment types and invoice items but keeps them (seed 000).

The spec is the *current* schema. Migration ``001`` creates the columns with
``since=1``; a later schema change adds a migration of its own and columns with
``since=2`` (the spec keeps describing the latest shape, old migrations never change).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any, Literal

import orjson

__all__ = [
    "DELETE_ORDER",
    "INSERT_ORDER",
    "STANDARD_COLUMNS",
    "TABLES",
    "Column",
    "Table",
    "row_from_record",
    "table",
]

Kind = Literal["text", "int", "bool", "decimal", "date", "datetime", "fk"]

_SQL_TYPE = {
    "text": "TEXT",
    "int": "INTEGER",
    "bool": "INTEGER",
    "decimal": "TEXT",
    "date": "TEXT",
    "datetime": "TEXT",
    "fk": "INTEGER",
}

#: Columns every table has besides its own (``data`` comes last).
STANDARD_COLUMNS = ("id", "source_id", "source_account", "batch_id")


@dataclass(frozen=True)
class Column:
    """One of a table's own columns.

    Attributes:
        name: the column, usually the Cliniko field of the same name.
        kind: how values are stored (see the module docstring).
        references: for ``fk`` columns, the parent table.
        required: NOT NULL (for a foreign key: the parent owns the record).
        default: the value when a row leaves it out (also the SQL DEFAULT).
        computed: filled by the store, never by a caller (``outstanding``, ``name_key``).
        since: the schema migration that created the column.
    """

    name: str
    kind: Kind = "text"
    references: str | None = None
    required: bool = False
    default: int | str | None = None
    computed: bool = False
    since: int = 1

    def ddl(self) -> str:
        sql = f"{self.name} {_SQL_TYPE[self.kind]}"
        if self.required:
            sql += " NOT NULL"
        if self.default is not None:
            sql += (
                f" DEFAULT {self.default!r}" if isinstance(self.default, str) else f" DEFAULT {self.default}"
            )
        if self.references:
            sql += f" REFERENCES {self.references}(id)"
            if not self.required:
                sql += " ON DELETE SET NULL"
        return sql

    def adapt(self, value: Any) -> Any:
        """A Python value as this column stores it; raises ``ValueError`` for a wrong one."""
        if value is None or (isinstance(value, str) and not value):
            return self.default
        try:
            return _ADAPTERS[self.kind](value)
        except (ValueError, TypeError, InvalidOperation) as exc:
            raise self._refusal(value, exc) from None

    def _refusal(self, value: Any, exc: Exception) -> ValueError:
        return ValueError(f"{self.name}: cannot store {value!r} as {self.kind} ({exc})")


@dataclass(frozen=True)
class Table:
    """One entity's table: its own columns and extra indexes (``(name, "expr, expr")``)."""

    name: str
    columns: tuple[Column, ...]
    indexes: tuple[tuple[str, str], ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        """Every column, in table order."""
        return (*STANDARD_COLUMNS, *(c.name for c in self.columns), "data")

    def column(self, name: str) -> Column:
        """One of the table's own columns by name (``KeyError`` if it has none)."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    @property
    def foreign_keys(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.references)

    @cached_property
    def settable(self) -> frozenset[str]:
        """What a caller's row may hold: ``source_id``, ``data`` and every column not computed."""
        return frozenset({"source_id", "data", *(c.name for c in self.columns if not c.computed)})

    @cached_property
    def record_columns(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The foreign-key columns, and the other columns a source record fills (not computed ones)."""
        keys = tuple(c.name for c in self.columns if c.references)
        plain = tuple(c.name for c in self.columns if not c.references and not c.computed)
        return keys, plain

    @cached_property
    def _adapters(self) -> tuple[tuple[str, Callable[[Any], Any], Any, Column], ...]:
        return tuple((c.name, _ADAPTERS[c.kind], c.default, c) for c in self.columns)

    def adapt(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Every own column's value in ``row`` as stored (:meth:`Column.adapt`), computed ones at their default.

        The same as ``{c.name: c.adapt(row.get(c.name)) for c in self.columns}``, without
        a call per column: it runs for every column of every record a run writes.
        Raises ``ValueError`` for a wrong value, as :meth:`Column.adapt` does.
        """
        values: dict[str, Any] = {}
        get = row.get
        for name, convert, default, column in self._adapters:
            value = get(name)
            if value is None or (isinstance(value, str) and not value):  # None or "": the default
                values[name] = default
                continue
            try:
                values[name] = convert(value)
            except (ValueError, TypeError, InvalidOperation) as exc:
                raise column._refusal(value, exc) from None
        return values

    def ddl(self, since: int = 1) -> list[str]:
        """The statements creating this table as migration ``since`` first made it."""
        own = [c.ddl() for c in self.columns if c.since <= since]
        body = ",\n  ".join(
            [
                "id INTEGER PRIMARY KEY AUTOINCREMENT",
                "source_id TEXT",
                "source_account TEXT",
                "batch_id TEXT",
                *own,
                "data TEXT NOT NULL DEFAULT '{}'",
                "UNIQUE (source_id, source_account)",
            ]
        )
        out = [f"CREATE TABLE {self.name} (\n  {body}\n)"]
        indexes = [("batch_id", "batch_id")]
        indexes += [(c.name, c.name) for c in self.foreign_keys if c.since <= since]
        indexes += list(self.indexes)
        out += [f"CREATE INDEX idx_{self.name}_{name} ON {self.name} ({expr})" for name, expr in indexes]
        return out


def _to_text(value: Any) -> str:
    return value if type(value) is str else str(value)


def _to_int(value: Any) -> int:
    if isinstance(value, float):
        raise TypeError("a float is not an integer here")
    return int(value)


def _to_bool(value: Any) -> int:
    if isinstance(value, bool) or value in (0, 1):
        return int(value)
    raise TypeError("expected true or false")


def _to_decimal(value: Any) -> str:
    if isinstance(value, float):  # money never goes through a float
        raise TypeError("money must be a Decimal or a string, not a float")
    return str(Decimal(value if isinstance(value, Decimal) else str(value)))


def _to_date(value: Any) -> str:
    if type(value) is str and len(value) == 10 and value[4] == "-" == value[7] and value.isascii():
        date.fromisoformat(value)  # only checks it (2026-02-30 raises): the text is kept as it is
        return value
    if isinstance(value, datetime):
        raise TypeError("expected a date, not a datetime")
    return (value if isinstance(value, date) else date.fromisoformat(value)).isoformat()


#: A datetime already in the store's form (``2026-11-21T13:53:01Z``): what the models emit.
_UTC_SECONDS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def _to_datetime(value: Any) -> str:
    if type(value) is str and len(value) == 20 and _UTC_SECONDS.fullmatch(value):
        datetime.fromisoformat(value)  # only checks it (25:00 raises): the common case, kept as it is
        return value
    return utc_text(value)


def utc_text(value: datetime | str) -> str:
    """A datetime (or ISO string; naive means UTC) as the store writes it: ``...THH:MM:SSZ``."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{moment.microsecond:06d}Z" if moment.microsecond else f"{text}Z"


_ADAPTERS: dict[str, Any] = {
    "text": _to_text,
    "int": _to_int,
    "fk": _to_int,
    "bool": _to_bool,
    "decimal": _to_decimal,
    "date": _to_date,
    "datetime": _to_datetime,
}


def _json_default(v: Any) -> str:
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, datetime):
        return utc_text(v)
    if isinstance(v, date):
        return v.isoformat()
    raise TypeError(f"{type(v).__name__} is not JSON")


def json_text(value: Any) -> str:
    """A record as compact JSON; Decimals and dates become strings (no float on the way).

    Written with orjson (this runs once per record stored); integers beyond 64 bits,
    which orjson refuses, go through the standard library instead.
    """
    try:
        return orjson.dumps(
            value, default=_json_default, option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS
        ).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


# --- the tables ------------------------------------------------------------------------


def _c(name: str, kind: Kind = "text") -> Column:
    return Column(name, kind)


def _texts(*names: str) -> tuple[Column, ...]:
    return tuple(Column(n) for n in names)


def _fk(name: str, parent: str, *, required: bool = False) -> Column:
    return Column(name, "fk", references=parent, required=required)


def _flag(name: str) -> Column:
    return Column(name, "bool", required=True, default=1)


_BOOKING_FLAGS = (_flag("imported"), _flag("notifications_suppressed"))
_OWNER_PATIENT = _fk("patient_id", "patients", required=True)
_CALENDAR = (
    _c("starts_at", "datetime"),
    _c("ends_at", "datetime"),
    _fk("practitioner_id", "practitioners"),
    _fk("business_id", "businesses"),
)

#: Every table, in dependency order: a table only refers to tables before it.
TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table("taxes", (_c("name"), _c("rate", "decimal"))),
        Table("concession_types", (_c("name"),)),
        Table(
            "businesses",
            _texts(
                "business_name",
                "display_name",
                "address_1",
                "address_2",
                "city",
                "state",
                "post_code",
                "country",
            ),
        ),
        Table(
            "practitioners",
            (_c("title"), _c("first_name"), _c("last_name"), _c("designation"), _flag("active")),
        ),
        Table(
            "billable_items",
            (_c("item_code"), _c("item_type"), _c("name"), _c("price", "decimal"), _fk("tax_id", "taxes")),
        ),
        Table(
            "products",
            (
                _c("item_code"),
                _c("name"),
                _c("price_ex_tax", "decimal"),
                _c("cost_price", "decimal"),
                _c("stock_level", "int"),
                _fk("tax_id", "taxes"),
            ),
        ),
        Table("treatment_note_templates", (_c("name"),)),
        Table(
            "appointment_types",
            (
                _c("name"),
                _c("category"),
                _c("duration_in_minutes", "int"),
                _c("max_attendees", "int"),
                _c("archived_at", "datetime"),
                _fk("billable_item_id", "billable_items"),
                _fk("product_id", "products"),
                _fk("treatment_note_template_id", "treatment_note_templates"),
            ),
        ),
        Table(
            "contacts",
            _texts(
                "title",
                "first_name",
                "last_name",
                "company_name",
                "email",
                "type",
                "doctor_type",
                "provider_number",
            ),
        ),
        Table(
            "patients",
            (
                _c("title"),
                _c("first_name"),
                _c("last_name"),
                _c("preferred_first_name"),
                _c("date_of_birth", "date"),
                _c("sex"),
                _c("email"),
                _c("city"),
                _c("state"),
                _c("post_code"),
                _c("country"),
                _c("old_reference_id"),
                _c("archived_at", "datetime"),
                _fk("concession_type_id", "concession_types"),
                _fk("referring_doctor_id", "contacts"),
                # casefolded "first<US>last", spaces collapsed: find_patients() matches on it
                Column("name_key", computed=True),
            ),
            indexes=(("name_key", "name_key, date_of_birth"), ("email", "lower(trim(email))")),
        ),
        Table("medical_alerts", (_c("name"), _OWNER_PATIENT)),
        Table(
            "individual_appointments",
            (
                *_CALENDAR,
                _OWNER_PATIENT,
                _fk("appointment_type_id", "appointment_types"),
                _c("patient_arrived", "bool"),
                _c("did_not_arrive", "bool"),
                _c("cancelled_at", "datetime"),
                _c("cancellation_reason", "int"),
                *_BOOKING_FLAGS,
            ),
            indexes=(("diary", "practitioner_id, starts_at"),),
        ),
        Table(
            "group_appointments",
            (
                *_CALENDAR,
                _fk("appointment_type_id", "appointment_types"),
                _c("max_attendees", "int"),
                *_BOOKING_FLAGS,
            ),
        ),
        Table(
            "attendees",
            (
                _fk("booking_id", "group_appointments", required=True),
                _OWNER_PATIENT,
                _c("arrived", "bool"),
                _c("cancelled_at", "datetime"),
                *_BOOKING_FLAGS,
            ),
        ),
        Table("unavailable_blocks", (*_CALENDAR, *_BOOKING_FLAGS)),
        Table(
            "treatment_notes",
            (
                _c("title"),
                _c("draft", "bool"),
                _OWNER_PATIENT,
                _fk("practitioner_id", "practitioners"),
                _fk("treatment_note_template_id", "treatment_note_templates"),
                _fk("booking_id", "individual_appointments"),
            ),
        ),
        Table(
            "patient_attachments",
            (_c("filename"), _c("content_type"), _c("size", "int"), _c("description"), _OWNER_PATIENT),
        ),
        Table(
            "invoices",
            (
                _c("number", "int"),
                _c("issue_date", "date"),
                _c("status", "int"),
                _c("status_description"),
                _c("total_amount", "decimal"),
                _c("tax_amount", "decimal"),
                _c("net_amount", "decimal"),
                Column("outstanding", "decimal", computed=True),
                _c("closed_at", "datetime"),
                _OWNER_PATIENT,
                _fk("practitioner_id", "practitioners"),
                _fk("business_id", "businesses"),
                _fk("appointment_id", "individual_appointments"),
            ),
        ),
        Table(
            "invoice_items",
            (
                _fk("invoice_id", "invoices", required=True),
                _fk("billable_item_id", "billable_items"),
                _fk("product_id", "products"),
                _c("name"),
                _c("code"),
                _c("quantity", "int"),
                _c("unit_price", "decimal"),
                _c("discounted_amount", "decimal"),
                _c("tax_amount", "decimal"),
                _c("total_including_tax", "decimal"),
            ),
        ),
    )
}

#: Tables in dependency order (parents first): the order to insert in.
INSERT_ORDER: tuple[str, ...] = tuple(TABLES)
#: Reverse dependency order (children first): the order to delete in.
DELETE_ORDER: tuple[str, ...] = tuple(reversed(INSERT_ORDER))


def table(entity: str) -> Table:
    """The table of an entity; raises ``ValueError`` naming the known ones."""
    try:
        return TABLES[entity]
    except KeyError:
        raise ValueError(f"the clinic store has no table {entity!r}; known: {', '.join(TABLES)}") from None


def row_from_record(
    entity: str, record: Mapping[str, Any], fks: Mapping[str, str | int | None] | None = None
) -> dict[str, Any]:
    """A destination-form row for :meth:`LocalStore.insert` from a source record.

    Takes the table's own non-key columns from ``record`` (a model's
    ``model_dump(mode="json")`` or a plain dict), ``source_id`` from ``record["id"]``
    and ``data`` = the whole record. Foreign keys come **only** from ``fks``, already
    translated to destination ids (``{"patient_id": "12"}``): a source id must never
    land in a destination key column. Absent keys are NULL.
    """
    keys, plain = table(entity).record_columns
    row: dict[str, Any] = {"source_id": str(record["id"]), "data": dict(record)}
    fks = fks or {}
    for name in keys:
        row[name] = fks.get(name)
    for name in plain:
        if name in record:
            row[name] = record[name]
    return row
