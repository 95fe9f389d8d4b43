"""List queries: ``q[]`` filters, sorting, pagination and list routes, as SQL.

Everything here turns request text into SQL fragments over a :class:`~.store.Table`.
Column names come only from the registry (quoted, never from the request as-is)
and every value goes through a ``?`` placeholder.

Choices where the docs are silent (``CLINIKO_API.md`` §1.4, §6):

- Several filters combine with **AND** (§7).
- A filter on a field the resource does not list, an operator its type does not
  have, or a malformed value answers **400** ``{"message": ...}``: the request is
  wrong, not the record, so 422 (kept for failed creates and updates) would mislead.
- DateTime values must be UTC with ``Z``; fractional seconds are accepted and
  compared exactly against the stored whole-second times.
- String ``~`` and ``~~`` use SQLite ``LIKE``: case-insensitive for ASCII letters
  (Cliniko's search is case-insensitive in practice); only ``%`` is a wildcard in
  ``~~`` (``_`` is literal). ``!=`` and the comparison operators never match a
  NULL (unset) field, as in SQL.
- Integer ``=`` takes a comma list (``practitioner_id:=1,2,3``, any of); ``!=``
  takes one too (none of). Id values may be quoted (``"123"``).
- ``sort`` takes table columns, or any other top-level field name (sorted by its
  JSON value); the record id always breaks ties, in the overall ``order``.
- ``per_page`` above 100 is clamped to 100 and below 1 to 1; ``page`` below 1 or
  not a number is a 400.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from migrator.sandbox.store import Table

__all__ = ["QueryError", "list_condition", "parse_filters", "parse_paging", "parse_sort"]

_MAX_IN = 1000
_DT = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?Z$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_WILD = re.compile(r"^[\d*]{4}-[\d*]{2}-[\d*]{2}$")
_INT = re.compile(r"^-?\d{1,19}$")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
# Longest operators first, so ">=" is not read as ">" followed by "=value".
_OPS = (">=", "<=", "!=", "~~", "=", ">", "<", "~")
_OPERATORS = {
    "dt": (">=", ">", "<=", "<"),
    "date": ("=", ">=", ">", "<=", "<"),
    "int": ("=", "!=", ">=", ">", "<=", "<"),
    "str": ("=", "!=", "~", "~~"),
}
_DT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class QueryError(Exception):
    """A malformed list request; the server answers ``status`` with ``{"message": str(self)}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def list_condition(table: Table, route: str | None) -> list[str]:
    """The lifecycle condition of a list route (``None`` for the plain list).

    The plain list hides deleted records, archived ones where the resource has an
    ``/archived`` list, and inactive practitioners. Cancelled appointments stay in
    the plain list (with ``cancelled_at`` set), as in Cliniko.
    """
    res = table.resource
    if route is None:
        conds = ["deleted_at IS NULL"]
        if "archived" in res.list_routes:
            conds.append("archived_at IS NULL")
        if "inactive" in res.list_routes:
            conds.append("active = 1")
        return conds
    if route == "deleted":
        return ["deleted_at IS NOT NULL"]
    if route == "archived":
        return ["archived_at IS NOT NULL", "deleted_at IS NULL"]
    if route == "cancelled":
        return ["cancelled_at IS NOT NULL", "deleted_at IS NULL"]
    if route == "inactive":
        return ["active = 0", "deleted_at IS NULL"]
    raise QueryError(f"unknown list route {route!r}", status=404)


def parse_filters(table: Table, raw: list[str]) -> tuple[list[str], list[Any]]:
    """Turn ``q[]`` values into SQL conditions (AND-combined) and their parameters."""
    conds: list[str] = []
    params: list[Any] = []
    filters = table.resource.filters
    for text in raw:
        field, sep, rest = text.partition(":")
        field = field.strip()
        if not sep or not field:
            raise QueryError(f"Invalid filter {text!r}: expected field:OPERATORvalue.")
        kind = filters.get(field)
        if kind is None:
            allowed = ", ".join(sorted(filters))
            raise QueryError(f"Cannot filter {table.name} by {field!r}; filterable fields: {allowed}.")
        op = next((o for o in _OPS if rest.startswith(o)), None)
        if op is None or op not in _OPERATORS[kind]:
            ops = " ".join(_OPERATORS[kind])
            raise QueryError(f"Invalid operator in filter on {field!r}; this field takes: {ops}.")
        value = rest[len(op) :]
        column = "id" if field == "id" else f'"{field}"'
        cond, values = _condition(kind, column, field, op, value)
        conds.append(cond)
        params.extend(values)
    return conds, params


def _condition(kind: str, column: str, field: str, op: str, value: str) -> tuple[str, list[Any]]:
    if kind == "int":
        items = [_int(field, v) for v in value.split(",")]
        if len(items) > _MAX_IN:
            raise QueryError(f"Too many values in the filter on {field!r} (at most {_MAX_IN}).")
        if len(items) > 1:
            if op not in ("=", "!="):
                raise QueryError(f"A list of values only works with = or != (filter on {field!r}).")
            marks = ", ".join("?" * len(items))
            return f"{column} {'IN' if op == '=' else 'NOT IN'} ({marks})", items
        return f"{column} {op} ?", items
    if kind == "dt":
        return _dt_condition(column, field, op, value)
    if kind == "date":
        if op == "=" and "*" in value:
            if not _DATE_WILD.match(value):
                raise QueryError(f"Invalid date {value!r} in the filter on {field!r}: use YYYY-MM-DD.")
            return f"{column} LIKE ?", [value.replace("*", "_")]
        if not _DATE.match(value):
            raise QueryError(f"Invalid date {value!r} in the filter on {field!r}: use YYYY-MM-DD.")
        return f"{column} {op} ?", [value]
    # str
    if op == "~":
        return f"{column} LIKE ? ESCAPE '\\'", [f"%{_escape_like(value)}%"]
    if op == "~~":
        return f"{column} LIKE ? ESCAPE '\\'", [_escape_like(value, keep_percent=True)]
    return f"{column} {op} ?", [value]


def _int(field: str, value: str) -> int:
    text = value.strip().strip('"').strip("'")
    if not _INT.match(text):
        raise QueryError(f"Invalid integer {value!r} in the filter on {field!r}.")
    number = int(text)
    if not -(2**63) <= number < 2**63:
        raise QueryError(f"Integer {value!r} out of range in the filter on {field!r}.")
    return number


def _dt_condition(column: str, field: str, op: str, value: str) -> tuple[str, list[Any]]:
    match = _DT.match(value)
    if not match:
        raise QueryError(
            f"Invalid date-time {value!r} in the filter on {field!r}: "
            "use UTC with a trailing Z, e.g. 2014-08-30T18:00:00Z."
        )
    try:
        whole = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        raise QueryError(f"Invalid date-time {value!r} in the filter on {field!r}.") from None
    fraction = match.group(2)
    if fraction and int(fraction[1:]) > 0:
        # Stored times have whole seconds: t > 12:00:00.5 <=> t >= 12:00:01, and
        # t < 12:00:00.5 <=> t < 12:00:01 (same for >= and <=).
        ceil = (whole + timedelta(seconds=1)).strftime(_DT_FORMAT)
        op = ">=" if op in (">", ">=") else "<"
        return f"{column} {op} ?", [ceil]
    return f"{column} {op} ?", [whole.strftime(_DT_FORMAT)]


def _escape_like(value: str, *, keep_percent: bool = False) -> str:
    out = value.replace("\\", "\\\\").replace("_", "\\_")
    return out if keep_percent else out.replace("%", "\\%")


def parse_sort(table: Table, sort: str | None, order: str | None) -> str:
    """An ``ORDER BY`` clause from ``sort`` and ``order`` (default ``created_at`` ascending)."""
    overall = (order or "asc").lower()
    if overall not in ("asc", "desc"):
        raise QueryError(f"Invalid order {order!r}: use asc or desc.")
    parts: list[str] = []
    for item in (sort or "created_at").split(","):
        name, _, direction = item.strip().partition(":")
        direction = (direction or overall).lower()
        if direction not in ("asc", "desc") or not _IDENT.match(name):
            raise QueryError(f"Invalid sort {item!r}: use field or field:desc.")
        if name == "id":
            expr = "id"
        elif name in table.columns:
            expr = f'"{name}"'
        else:
            # name matched _IDENT above, so it is safe inside the JSON path literal
            expr = f"json_extract(body, '$.{name}')"
        parts.append(f"{expr} {direction.upper()}")
    if not any(p.startswith("id ") for p in parts):
        parts.append(f"id {overall.upper()}")
    return ", ".join(parts)


def parse_paging(page: str | None, per_page: str | None) -> tuple[int, int]:
    """``(page, per_page)``: page is 1-based; per_page defaults to 50, clamped to 1-100."""
    try:
        number = int(page) if page not in (None, "") else 1
        size = int(per_page) if per_page not in (None, "") else 50
    except ValueError:
        raise QueryError("page and per_page must be whole numbers.") from None
    if number < 1:
        raise QueryError("page starts at 1.")
    return number, max(1, min(size, 100))
