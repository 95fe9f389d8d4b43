"""Building ``q[]`` filters that Cliniko will accept.

A filter is ``field:OPvalue``; several are sent as repeated ``q[]`` parameters
and combine with AND. Each resource filters only on its documented fields, and
each field type has its own operators (``migrator.cliniko.resources``). Checking
both here turns a typo into a :class:`ConfigError` instead of a wasted request.

An id list (``patient_id:=1,2,3``) matches any of the ids. Long lists are cut
into chunks (:func:`chunk_ids`) so that URLs stay well under what servers and
proxies accept; each chunk is then one query.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from migrator.cliniko.resources import FILTER_OPERATORS, resource
from migrator.errors import ConfigError

__all__ = ["MAX_IDS_PER_LIST", "MAX_ID_LIST_CHARS", "Filter", "chunk_ids", "ids_in", "query_params"]

#: Characters of ids per ``q[]`` list: 100 ids of 18 digits (Cliniko's long ids)
#: fit, so a query by ids fills exactly one page, and the URL stays near 2.3 KB,
#: far below what servers and proxies refuse (8 KB is the usual floor).
MAX_ID_LIST_CHARS = 1900
#: Ids per list: one page's worth, so each chunk costs one request.
MAX_IDS_PER_LIST = 100

_OPERATORS_LONGEST_FIRST = (">=", "<=", "!=", "~~", "=", ">", "<", "~")


@dataclass(frozen=True)
class Filter:
    """One ``q[]`` condition: ``Filter("starts_at", ">=", datetime(...))``."""

    field: str
    op: str
    value: object

    @classmethod
    def parse(cls, text: str) -> Filter:
        """Read ``"field:OPvalue"`` as typed on a command line."""
        name, sep, rest = text.partition(":")
        if not sep or not name:
            raise ConfigError(
                f"A filter looks like 'field:OPvalue' (for example 'updated_at:>2024-01-01T00:00:00Z'); got {text!r}."
            )
        for op in _OPERATORS_LONGEST_FIRST:
            if rest.startswith(op):
                return cls(name, op, rest[len(op) :])
        raise ConfigError(f"The filter {text!r} has no operator after 'field:' (one of = != >= > <= < ~ ~~).")

    def render(self, resource_name: str) -> str:
        """The ``q[]`` value, after checking the field and operator for the resource."""
        entry = resource(resource_name)
        kind = entry.filters.get(self.field)
        if kind is None:
            raise ConfigError(
                f"Cliniko cannot filter {resource_name} by {self.field!r}; "
                f"it can by: {', '.join(sorted(entry.filters))}."
            )
        allowed = FILTER_OPERATORS[kind]
        if self.op not in allowed:
            raise ConfigError(
                f"The filter on {resource_name}.{self.field} cannot use {self.op!r}; "
                f"this field takes {' '.join(allowed)}."
            )
        return f"{self.field}:{self.op}{_format_value(self.value, kind, self.op)}"


def _format_value(value: object, kind: str, op: str) -> str:
    if isinstance(value, list | tuple | set | frozenset):
        if kind != "int" or op != "=":
            raise ConfigError("A list of values is only allowed with '=' on an id or number field.")
        items = [_format_value(v, kind, op) for v in value]
        if not items:
            raise ConfigError("An id list filter needs at least one id.")
        return ",".join(items)
    if kind == "dt":
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ConfigError("A date-time filter needs a time zone; Cliniko compares in UTC.")
            return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = str(value)
        if not text.endswith("Z"):
            raise ConfigError(
                f"A date-time filter must be in UTC and end in 'Z' (like 2024-08-30T18:00:00Z); got {text!r}."
            )
        return text
    if kind == "date" and isinstance(value, date):
        return value.isoformat()
    if kind == "int":
        if isinstance(value, bool | float):
            raise ConfigError(f"An id or number filter takes whole numbers; got {value!r}.")
        text = str(value).strip()
        if not text.lstrip("-").isdigit():
            raise ConfigError(f"An id or number filter takes whole numbers; got {text!r}.")
        return text
    return str(value)


def query_params(resource_name: str, filters: Iterable[Filter]) -> list[tuple[str, str]]:
    """``[("q[]", "field:OPvalue"), ...]`` for httpx, every filter checked first."""
    return [("q[]", f.render(resource_name)) for f in filters]


def chunk_ids(
    ids: Iterable[str | int], max_chars: int = MAX_ID_LIST_CHARS, max_ids: int = MAX_IDS_PER_LIST
) -> list[list[str]]:
    """Split ids into lists of at most ``max_ids`` whose comma-joined text stays under ``max_chars``.

    Duplicates are dropped and the first-seen order kept, so each id is asked for once.
    """
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for raw in dict.fromkeys(str(i) for i in ids):
        extra = len(raw) + (1 if current else 0)
        if current and (size + extra > max_chars or len(current) >= max_ids):
            chunks.append(current)
            current, size = [], 0
            extra = len(raw)
        current.append(raw)
        size += extra
    if current:
        chunks.append(current)
    return chunks


def ids_in(field: str, ids: Sequence[str | int], max_chars: int = MAX_ID_LIST_CHARS) -> list[Filter]:
    """One ``field:=id,id,...`` filter per chunk of ``ids``: run one query per filter."""
    return [Filter(field, "=", chunk) for chunk in chunk_ids(ids, max_chars)]
