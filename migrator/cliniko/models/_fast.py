"""A faster way to the same dump: :func:`fast_dumper`.

A migration validates every record it reads and then dumps it (``model_dump(mode="json")``)
to store it; for the usual record, one Cliniko sent in the usual shape, the dump holds the
JSON's own values: ids as strings, links read into ``<rel>_id``, navigation links dropped.
Validating with pydantic (its before-validator in Python for the links) and dumping again
costs about 15 µs a record, the largest share of a migration's own CPU.

:func:`fast_dumper` checks a record's field types with msgspec (in C) against a struct made
from the model, then builds the dump from the JSON's values directly. It vouches only for
records whose dump it knows equals pydantic's, value for value and key for key: anything
else (a value pydantic would coerce or reformat, a blank date, a link pydantic refuses, a
model with nested models or validators of its own) gets ``None``,
and the caller validates that record with pydantic as before, which also gives the sentence
for a record that fails. So the fast path changes how long a record takes, never what it
becomes; ``tests/test_fast_dump.py`` holds it to that over the sandbox's records and a battery of
awkward values.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Union

import msgspec
from pydantic import AwareDatetime

from migrator.cliniko.models._base import (
    ClinikoRecord,
    _blank_to_none,
    _blank_to_none_naive_to_utc,
    _link_id,
    _to_id,
)

#: A record's dump: the JSON-mode dict ``model_dump(mode="json")`` gives.
Dumper = Callable[[dict[str, Any]], dict[str, Any] | None]

# A decimal string that Decimal's str() gives back unchanged: no exponent, no leading zero,
# at most six places (from seven, str() switches "0.0000001" to "1E-7").
_PLAIN_DECIMAL = r"^-?(0|[1-9][0-9]*)(\.[0-9]{1,6})?$"


class _SelfLink(msgspec.Struct):
    url: str | None = msgspec.field(name="self")


class _Link(msgspec.Struct):
    """A relationship ``{"links": {"self": URL}}``; other keys beside ``links`` are ignored, as pydantic's reading does."""

    links: _SelfLink


class _OwnLinks(msgspec.Struct):
    url: str | None = msgspec.field(name="self", default=None)


def _is_link_only(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and "links" in value


def _optional_inner(annotation: Any) -> Any:
    """``X`` of ``X | None`` (``None`` if the annotation is not that)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0]
    return None


def _is_id(annotation: Any) -> bool:
    """Whether ``annotation`` is :data:`ClinikoId` (``Annotated[str, BeforeValidator(_to_id)]``)."""
    if typing.get_origin(annotation) is not Annotated:
        return False
    base, *meta = typing.get_args(annotation)
    return base is str and len(meta) == 1 and getattr(meta[0], "func", None) is _to_id


class _Unsupported(Exception):
    """A field the fast path does not vouch for; its model has none."""


def _field_kind(annotation: Any, metadata: list[Any]) -> tuple[str, Any]:
    """What the fast path does with one field: ``(kind, msgspec type)``."""
    validators = [getattr(m, "func", m) for m in metadata]
    if validators == [_to_id] and annotation is str:
        return "id", int | str
    if validators == [_blank_to_none_naive_to_utc] and annotation == (AwareDatetime | None):
        return "datetime", Annotated[datetime, msgspec.Meta(tz=True)] | None
    if validators == [_blank_to_none] and annotation == (date | None):
        return "plain", date | None
    if validators:
        raise _Unsupported(f"validators {validators}")
    if annotation is Any:
        return "any", None
    inner = _optional_inner(annotation)
    if inner is None:
        raise _Unsupported(repr(annotation))
    if _is_id(inner):
        return "id", int | str | None
    if inner in (str, bool, int):
        return "plain", inner | None
    if inner is Decimal:
        return "plain", Annotated[str, msgspec.Meta(pattern=_PLAIN_DECIMAL)] | None
    if inner == dict[str, Any]:
        return "any", dict[str, Any] | None
    if (
        typing.get_origin(inner) is list
        and len(typing.get_args(inner)) == 1
        and _is_id(typing.get_args(inner)[0])
    ):
        return "ids", list[int | str] | None
    raise _Unsupported(repr(annotation))


@functools.cache
def fast_dumper(model: type[ClinikoRecord]) -> Dumper | None:
    """``raw -> model.model_validate(raw).model_dump(mode="json")``, or ``None`` for "ask pydantic".

    Returns ``None`` instead of a dumper for a model the fast path cannot serve: one with
    validators of its own, nested models, link fields kept as URLs, or aliases.
    """
    decorators = model.__pydantic_decorators__
    if (
        not model.resource_name
        or model.url_fields
        or decorators.model_validators.keys() != {"_read_links"}
        or decorators.field_validators
    ):
        return None
    relations = model.relation_fields
    relation_ids = {id_field for _, id_field in relations}
    kinds: dict[str, str] = {}
    checked: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    try:
        for name, info in model.model_fields.items():
            if info.alias not in (None, name) or (info.default is not None and name != "id"):
                raise _Unsupported(name)
            kind, spec = _field_kind(info.annotation, info.metadata)
            kinds[name] = kind
            if name not in relation_ids and name != "links_self" and spec is not None:
                checked.append((name, spec) if name == "id" else (name, spec, None))
    except _Unsupported:
        return None
    checked += [(rel, _Link | None, None) for rel, _ in relations]
    checked.append(("links", _OwnLinks | None, None))
    shape = msgspec.defstruct(f"_{model.__name__}Shape", checked, kw_only=True)

    # Every field in the model's order, None where the record lacks it: pydantic's defaults.
    template = dict.fromkeys(model.model_fields)
    fields = frozenset(template)
    # Read, then dropped from the dump: relationship links (their ids are fields) and the own link.
    read_not_kept = frozenset(rel for rel, _ in relations) | {"links"}
    # Written over the values taken as they are: a relation id is read from its link.
    ids = tuple(n for n, k in kinds.items() if k == "id" and n not in relation_ids)
    id_lists = tuple(n for n, k in kinds.items() if k == "ids")
    datetimes = tuple(n for n, k in kinds.items() if k == "datetime")
    anys = tuple(n for n, k in kinds.items() if k == "any")
    taken_from_links = relation_ids | {"links_self"}
    convert, invalid = msgspec.convert, msgspec.ValidationError

    def dump(raw: dict[str, Any]) -> dict[str, Any] | None:
        try:
            convert(raw, shape)
        except invalid:
            return None
        if not taken_from_links.isdisjoint(raw):
            return None  # an explicit <rel>_id or links_self: pydantic's rules, not ours
        # The fields in the model's order, then the record's other keys in its own order: the
        # order of pydantic's dump, whose extras (undeclared fields, kept) follow the fields.
        out = template.copy()
        out.update(raw)
        for key in raw.keys() - fields:
            if key in read_not_kept or _is_link_only(raw[key]):
                del out[key]  # navigation to nested collections is dropped, as by pydantic
        for name in datetimes:
            value = out[name]
            # A valid datetime (checked above) in exactly Cliniko's "2023-11-02T01:35:00Z".
            if value is not None and (len(value) != 20 or value[10] != "T" or value[19] != "Z"):
                return None
        for name in anys:
            if _is_link_only(out[name]):
                return None  # dropped as navigation by pydantic's reading
        try:
            for name in ids:
                value = out[name]
                if value is not None:
                    out[name] = _to_id(value)
            for name in id_lists:
                value = out[name]
                if value is not None:
                    out[name] = [_to_id(v) for v in value]
        except ValueError:
            return None
        try:
            for rel, id_field in relations:
                link = raw.get(rel)
                if link is not None:
                    # pydantic's own reading of a link, then its ClinikoId rule.
                    target = _link_id(rel, link)
                    out[id_field] = None if target is None else _to_id(target)
        except ValueError:
            return None
        links = raw.get("links")
        if links is not None:
            out["links_self"] = links.get("self")
        return out

    return dump
