"""Field types and the base class every Cliniko record model derives from.

``ClinikoId``, ``ClinikoDate`` and ``ClinikoDateTime`` carry the per-field rules (ids as
decimal strings, ``""`` as ``None``); :class:`ClinikoRecord`'s one before-validator
carries the per-record rule (relationship links become ``<rel>_id``).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, ClassVar

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, model_validator

from migrator.cliniko.resources import RESOURCES

# --- field types -----------------------------------------------------------------


def _to_id(value: Any) -> str:
    """A Cliniko id as its decimal string; refuses anything that is not an integer."""
    # type() rather than isinstance(): bool is an int subclass and must be refused.
    kind = type(value)
    if kind is str:
        if value.isdigit() and value.isascii():  # isascii: isdigit() also accepts "²" and "١"
            # One canonical spelling, so "007" and 7 compare equal as strings.
            return (value.lstrip("0") or "0") if value[0] == "0" else value
        raise ValueError(f"an id must be a string of decimal digits, got {value!r}")
    if kind is int:
        if value >= 0:
            return str(value)
        raise ValueError(f"an id must not be negative, got {value}")
    if kind is float:
        raise ValueError(
            f"an id must be a JSON integer or a string of digits, got the float {value!r}: "
            "a float may have lost digits above 2**53, so parse the JSON without floats for ids"
        )
    raise ValueError(f"an id must be a JSON integer or a string of digits, got {kind.__name__} {value!r}")


#: A Cliniko id: a JSON integer or a digit string in, a decimal string out.
#: Never a float: ids reach 514810972972521916, beyond a float's 2**53 exact range.
ClinikoId = Annotated[str, BeforeValidator(_to_id)]


def _blank_to_none(value: Any) -> Any:
    # Patients send "" for unset dates where other resources send null (CLINIKO_API.md §7).
    return None if value == "" else value


# A datetime string without an offset: the only kind that needs a "Z" added.
_NAIVE_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?")


def _blank_to_none_naive_to_utc(value: Any) -> Any:
    if type(value) is str:
        if value[-1:] == "Z":  # every datetime Cliniko sends: one comparison and done
            return value
        if value == "":
            return None
        # Cliniko's datetimes are all UTC; a naive one (only from our own code) means UTC too.
        return value + "Z" if _NAIVE_DATETIME.fullmatch(value) else value
    if type(value) is datetime and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


#: A ``YYYY-MM-DD`` date; ``""`` and null are ``None``.
ClinikoDate = Annotated[date | None, BeforeValidator(_blank_to_none)]
#: A timezone-aware datetime (Cliniko sends UTC ``...Z``); ``""`` and null are ``None``, and
#: a naive datetime is read as UTC. ``AwareDatetime`` refuses anything still naive after that
#: (a date alone, for one), rather than let a naive value into comparisons with aware ones.
ClinikoDateTime = Annotated[AwareDatetime | None, BeforeValidator(_blank_to_none_naive_to_utc)]


def id_from_url(url: str) -> str:
    """The id at the end of a Cliniko URL: its last path segment.

    The query string, a fragment and trailing slashes are ignored, and so is the host
    (links come from ``api.au1.cliniko.com``, ``api.cliniko.dev:3000``, ...).
    Raises ``ValueError`` if the last segment is not an id.

    >>> id_from_url("https://api.au1.cliniko.com/v1/patients/123?page=1")
    '123'
    """
    path = url.partition("?")[0].partition("#")[0].rstrip("/")
    return _to_id(path.rpartition("/")[2])


def _link_url(rel: str, link: Any) -> str | None:
    """The URL of a link object ``{"links": {"self": URL}}``; ``None`` for a null one."""
    if link is None:
        return None
    try:
        url = link["links"]["self"]
    except (TypeError, KeyError):
        raise ValueError(
            f"{rel}: expected a link object {{'links': {{'self': URL}}}} or null, got {link!r}"
        ) from None
    if url is None or type(url) is str:
        return url
    raise ValueError(f"{rel}: the link's self is not a URL: {url!r}")


def _link_id(rel: str, link: Any) -> str | None:
    """The id a relationship object points at; ``None`` for a null relation."""
    if link is None:
        return None
    try:
        # _link_url inlined for the usual link (this runs for every relation of every record).
        url = link["links"]["self"]
    except (TypeError, KeyError):
        url = _link_url(rel, link)  # raises the sentence for a malformed link
    if type(url) is not str:
        url = _link_url(rel, link)  # None, or raises for a self that is not a URL
        if url is None:
            return None
    # id_from_url inlined, with a shortcut for a plain ".../patients/123" link.
    segment = url.rpartition("/")[2]
    if segment.isdigit() and segment.isascii() and "?" not in url and "#" not in url:
        return segment  # the field's ClinikoId validator still canonicalises it
    segment = url.partition("?")[0].partition("#")[0].rstrip("/").rpartition("/")[2]
    if segment.isdigit() and segment.isascii():
        return segment
    raise ValueError(f"{rel}: cannot read an id from the link {url!r}")


# --- base ------------------------------------------------------------------------


class ClinikoRecord(BaseModel):
    """One Cliniko record. Subclasses declare a resource's fields; unknown ones are kept.

    Class attributes:
        resource_name: the registry name (``"patients"``), ``""`` on non-resource models.
        relation_fields: ``(link field, id field)`` pairs from the registry, e.g.
            ``("patient", "patient_id")``; computed when the subclass is created.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=False)

    resource_name: ClassVar[str] = ""
    relation_fields: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Link objects kept as a URL field instead of dropped: (link field, URL field).
    url_fields: ClassVar[tuple[tuple[str, str], ...]] = ()

    id: ClinikoId
    created_at: ClinikoDateTime = None
    updated_at: ClinikoDateTime = None
    links_self: str | None = None

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        name = cls.__dict__.get("resource_name")
        if not name:
            return
        entry = RESOURCES[name]
        cls.relation_fields = tuple((rel, f"{rel}_id") for rel in entry.relations)
        # The registry is the source of truth; a model that disagrees fails at import.
        missing = [f for _, f in cls.relation_fields if f not in cls.model_fields]
        missing += [f for f in entry.array_ids if f not in cls.model_fields]
        if missing:
            raise TypeError(f"{cls.__name__} lacks the registry's fields {missing} for {name!r}")

    @model_validator(mode="before")
    @classmethod
    def _read_links(cls, data: Any) -> Any:
        """Relationship links -> ``<rel>_id``; navigation links dropped; ``links.self`` kept."""
        if type(data) is not dict:
            return data  # a model instance, or garbage pydantic will reject with its own message
        # Work on a copy (the caller's dict is never changed) and drop every link-only object:
        # relationships are read from `data` below, the rest is navigation to nested
        # collections (/patients/1/invoices?page=1), not data.
        out = data.copy()
        for key, value in data.items():
            if type(value) is dict and "links" in value and len(value) == 1:
                del out[key]
        for rel, id_field in cls.relation_fields:
            if rel in data:
                out.pop(rel, None)  # a null relation was not dropped above
                if id_field not in data:  # an explicit <rel>_id (our own records) wins
                    out[id_field] = _link_id(rel, data[rel])
        for rel, url_field in cls.url_fields:
            if rel in data:
                link = out.pop(rel, None) or data[rel]
                if url_field not in data:
                    out[url_field] = _link_url(rel, link)
        links = out.pop("links", None)
        if type(links) is dict and "links_self" not in out:
            out["links_self"] = links.get("self")
        return out


class PhoneNumber(BaseModel):
    """One entry of a patient's ``patient_phone_numbers`` or a contact's ``phone_numbers``."""

    model_config = ConfigDict(extra="allow")

    phone_type: str | None = None  # "Mobile", "Home", ... (undocumented enum)
    number: str | None = None
