"""Mapping tables: which destination record each source practitioner, business and appointment type becomes.

Every appointment points at a practitioner, a business and an appointment type, so
before a run each of those source records needs a decision (a :class:`~migrator.plan.MappingRow`).
This module proposes the decisions; a person reviews them in the console.

>>> frames = build_mapping(source_client, store.reference, can_create=True)  # doctest: +SKIP
>>> rows = to_rows(frames)                                                  # doctest: +SKIP
>>> save_mapping("mapping.json", rows)                                      # doctest: +SKIP

How :func:`auto_match` decides, per source record:

1. **Same source id.** A destination record made from this very source record by an
   earlier run (its ``source_id`` column) is the match: a top-up never creates twice.
2. **Same name**, compared after :func:`normalise_name` (case, accents, spacing,
   hyphens, apostrophes and a leading "Dr" do not matter). One destination record of
   that name: ``map``. Several: the one active among them if exactly one is, otherwise
   ``unresolved`` with a note ("2 destination records are named ...").
3. **No match.** Appointment types: ``create`` (both destinations can; into a Cliniko
   account an archived one arrives active, as its API cannot archive them, and the note
   says so). Businesses and
   active practitioners: ``create`` when the destination can (the local store),
   otherwise ``unresolved`` (Cliniko's API cannot create them; the clinic sets them up,
   seed 001). Practitioners inactive at the source (former staff): always ``unresolved``
   with a note offering seed 001's choices, because what happens to their appointments
   is the clinic's call.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from migrator.cliniko.client import ClinikoClient
from migrator.errors import ConfigError, MappingError, paths_said
from migrator.plan import ENTITIES, MappingRow, allowed_actions, validation_sentence

__all__ = [
    "MAPPING_COLUMNS",
    "MAPPING_SCHEMA",
    "REFERENCE_SCHEMA",
    "SOURCE_SCHEMA",
    "auto_match",
    "build_mapping",
    "load_mapping",
    "normalise_name",
    "reference_from_client",
    "save_mapping",
    "source_frame",
    "to_frames",
    "to_rows",
    "validate",
]

#: Columns of :func:`source_frame`.
SOURCE_SCHEMA: dict[str, pl.DataType] = {
    "source_id": pl.String(),
    "source_name": pl.String(),
    "source_active": pl.Boolean(),
}
#: Columns of a destination reference (``LocalStore.reference``, :func:`reference_from_client`).
REFERENCE_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "name": pl.String(),
    "active": pl.Boolean(),
    "source_id": pl.String(),
}
#: Columns of a mapping table (:func:`auto_match`, :func:`to_frames`), as in :class:`MappingRow`.
MAPPING_SCHEMA: dict[str, pl.DataType] = {
    "entity": pl.String(),
    "source_id": pl.String(),
    "source_name": pl.String(),
    "source_active": pl.Boolean(),
    "action": pl.String(),
    "target_id": pl.String(),
    "target_name": pl.String(),
    "note": pl.String(),
}
MAPPING_COLUMNS: tuple[str, ...] = tuple(MAPPING_SCHEMA)
#: The columns an edited mapping table cannot do without; the others have defaults.
_NEEDED_COLUMNS = ("entity", "source_id", "source_name", "action")
MAPPING_FILE_VERSION = 1

# --- names -----------------------------------------------------------------------

# Apostrophes vanish ("O'Brien" is "obrien"); other punctuation (hyphens, dashes, dots,
# commas, brackets...) separates words. Letters NFKD cannot take apart are spelled out.
_APOSTROPHES = dict.fromkeys(map(ord, "'’‘ʼ`´"), None)
_LETTERS = str.maketrans({"đ": "d", "ø": "o", "ł": "l", "æ": "ae", "œ": "oe", "þ": "th", "ð": "d", "ı": "i"})
_TITLES = frozenset({"dr", "prof"})
_SPACES = re.compile(r"\s+")


def normalise_name(text: str | None) -> str:
    """A name reduced to what two people would agree is "the same name".

    - case-folded, compatibility forms unfolded (full-width letters, ligatures);
    - Latin, Greek and Cyrillic accents dropped (the combining diacritics block, so
      "Zoë" is "zoe" and "Trần" is "tran"), while marks that change a letter in other
      scripts (Japanese dakuten, Devanagari vowel signs) are kept;
    - apostrophes removed ("O'Brien" is "obrien"); hyphens, dashes and all other
      punctuation become spaces ("Mary-Jane" is "mary jane", "Physio – Coburg" is
      "physio coburg");
    - whitespace collapsed and trimmed;
    - one leading professional title ("Dr", "Dr.", "Prof") dropped, because Cliniko
      labels may carry it ("Dr Zoë Adams") where a name does not. Social titles
      (Mr, Ms) are kept: they are rarely part of a record's name.

    ``None`` and blank text give ``""``, which never matches anything.

    >>> normalise_name("Dr  Zoë  ADAMS")
    'zoe adams'
    >>> normalise_name("Mary-Jane O’Brien") == normalise_name("mary jane obrien")
    True
    """
    if not text:
        return ""
    decomposed = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    kept = "".join(c for c in decomposed if not 0x300 <= ord(c) <= 0x36F)
    folded = unicodedata.normalize("NFC", kept).casefold().translate(_LETTERS)
    spaced = "".join(" " if unicodedata.category(c).startswith("P") else c for c in folded)
    words = _SPACES.sub(" ", spaced).strip().split(" ")
    if len(words) > 1 and words[0] in _TITLES:
        words = words[1:]
    return " ".join(words)


def _keys(names: pl.Series) -> pl.Series:
    # Python, not an expression: unicodedata has no Polars equivalent, and these tables are small.
    return pl.Series([normalise_name(n) or None for n in names.to_list()], dtype=pl.String)


# --- reading the tables ----------------------------------------------------------

# (resource, route, active) per entity: where active and inactive records live.
_ROUTES: dict[str, tuple[tuple[str, str | None, bool], ...]] = {
    "practitioners": (("practitioners", None, True), ("practitioners", "inactive", False)),
    "businesses": (("businesses", None, True),),
    "appointment_types": (("appointment_types", None, True), ("appointment_types", "archived", False)),
}


def _record_name(entity: str, record: Any) -> str:
    if entity == "practitioners":
        name = " ".join(p for p in (record.first_name, record.last_name) if p and p.strip())
        return name or record.label or f"Practitioner {record.id}"
    if entity == "businesses":
        return record.business_name or record.display_name or f"Business {record.id}"
    return record.name or f"Appointment type {record.id}"


def _read(client: ClinikoClient, entity: str) -> pl.DataFrame:
    """``id, name, active`` of every record of an entity, active ones first."""
    if entity not in _ROUTES:
        raise ConfigError(f"Unknown mapping entity {entity!r}; use one of {', '.join(ENTITIES)}.")
    rows = [
        (record.id, _record_name(entity, record), active)
        for resource, route, active in _ROUTES[entity]
        for record in client.records(resource, route=route)
    ]
    frame = pl.DataFrame(
        rows, schema={"id": pl.String, "name": pl.String, "active": pl.Boolean}, orient="row"
    )
    # A record that moved between lists while we read appears twice: its first (active) sighting wins.
    return frame.unique(subset="id", keep="first", maintain_order=True)


def source_frame(client: ClinikoClient, entity: str) -> pl.DataFrame:
    """The source side of a mapping table: ``source_id, source_name, source_active``.

    Practitioners come from ``/practitioners`` and ``/practitioners/inactive`` (named
    "first last"); businesses from ``/businesses`` (``business_name``), all active;
    appointment types from ``/appointment_types`` and ``/appointment_types/archived``.
    Inactive and archived records have ``source_active`` false. One or two requests per
    entity for a typical clinic.

    Raises:
        ConfigError: ``entity`` is not one of the three.
        APIError: a read failed.
    """
    return _read(client, entity).rename({"id": "source_id", "name": "source_name", "active": "source_active"})


def reference_from_client(client: ClinikoClient, entity: str) -> pl.DataFrame:
    """A Cliniko destination's records, in the shape of ``LocalStore.reference``: ``id, name, active, source_id``.

    Inactive practitioners are read too: seed 001 suggests the clinic creates its former
    staff as inactive practitioners, and they should match. ``source_id`` is always null
    (a Cliniko account does not know where its records came from; the ledger does).
    """
    return _read(client, entity).with_columns(source_id=pl.lit(None, dtype=pl.String))


# --- matching --------------------------------------------------------------------

_FORMER_NAMES = frozenset({"former practitioner", "former practitioners", "former staff"})


def auto_match(
    source: pl.DataFrame, destination: pl.DataFrame, entity: str, *, can_create: bool
) -> pl.DataFrame:
    """Propose a mapping row for every source record (see the module docstring for the rules).

    Args:
        source: ``source_id, source_name, source_active`` (:func:`source_frame`).
        destination: ``id, name, active`` and optionally ``source_id``
            (``LocalStore.reference`` or :func:`reference_from_client`).
        entity: ``"practitioners"``, ``"businesses"`` or ``"appointment_types"``.
        can_create: the destination can create practitioners and businesses (the local
            store can; Cliniko's API cannot). Appointment types can always be created
            (into a Cliniko account an archived one arrives active, which its note says).

    Returns:
        One row per source record, in source order, with :data:`MAPPING_COLUMNS`.

    >>> src = pl.DataFrame({"source_id": ["1"], "source_name": ["Zoë Adams"], "source_active": [True]})
    >>> dst = pl.DataFrame({"id": ["9"], "name": ["zoe adams"], "active": [True]})
    >>> auto_match(src, dst, "practitioners", can_create=False).row(0, named=True)["target_id"]
    '9'
    """
    allowed_actions(entity, can_create=can_create)  # refuses an unknown entity
    src = source.select(
        pl.col("source_id").cast(pl.String),
        pl.col("source_name").cast(pl.String),
        pl.col("source_active").cast(pl.Boolean).fill_null(True),
    ).with_columns(key=_keys(source["source_name"]))
    dst = destination.select(
        pl.col("id").cast(pl.String).alias("dst_id"),
        pl.col("name").cast(pl.String).alias("dst_name"),
        pl.col("active").cast(pl.Boolean).fill_null(True).alias("dst_active"),
        (pl.col("source_id") if "source_id" in destination.columns else pl.lit(None))
        .cast(pl.String)
        .alias("dst_source_id"),
    )
    dst = dst.with_columns(key=_keys(dst["dst_name"]))

    # 1. a destination record made from this source record by an earlier run
    by_source = (
        dst.filter(pl.col("dst_source_id").is_not_null())
        .unique(subset="dst_source_id", keep="first", maintain_order=True)
        .select(
            pl.col("dst_source_id").alias("source_id"),
            pl.col("dst_id").alias("linked_id"),
            pl.col("dst_name").alias("linked_name"),
        )
    )
    # 2. by name: one record of that name, or the only active one among several
    named = dst.filter(pl.col("key").is_not_null()).with_columns(
        n=pl.len().over("key"), n_active=pl.col("dst_active").sum().over("key")
    )
    clear = (pl.col("n") == 1) | ((pl.col("n_active") == 1) & pl.col("dst_active"))
    chosen = named.filter(clear).select(
        "key",
        pl.col("dst_id").alias("name_id"),
        pl.col("dst_name").alias("name_name"),
        pl.col("dst_active").alias("name_active"),
        (pl.col("n") - 1).alias("also"),
    )
    ambiguous = (
        named.filter((pl.col("n") > 1) & (pl.col("n_active") != 1))
        .group_by("key", maintain_order=True)
        .agg(pl.len().alias("n_same"), pl.col("dst_name").first().alias("same_name"))
    )
    former = named.filter(pl.col("key").is_in(list(_FORMER_NAMES)))
    former_hint, former_needs = "", ""
    if former.height == 1:
        former_hint = f" (the destination has {former['dst_name'][0]!r}, id {former['dst_id'][0]})"
    elif not can_create:
        # The run cannot make one: say what 'former' then needs, in words for the console and a file.
        former_needs = (
            " Cliniko's API cannot create the generic one: add an inactive practitioner named Former "
            "practitioner to the destination account, then choose it as the destination record (target_id "
            "in a mapping file)."
        )
    # Each way out for a former practitioner, listed as one sentence: "a, b, or c".
    former_choices = [
        f"'former' to give their appointments to a generic Former practitioner{former_hint}",
        "'reassign' to give them to an active practitioner",
        "'exclude' to skip them",
        *(["'create' to add them as an inactive practitioner"] if can_create else []),
    ]

    table = (
        src.join(by_source, on="source_id", how="left", maintain_order="left")
        .join(chosen, on="key", how="left", maintain_order="left")
        .join(ambiguous, on="key", how="left", maintain_order="left")
        .with_columns(shared=pl.len().over("name_id").cast(pl.Int64))
    )
    linked, by_name, unsure = (
        pl.col("linked_id").is_not_null(),
        pl.col("name_id").is_not_null(),
        pl.col("n_same").is_not_null(),
    )
    former_staff = pl.lit(entity == "practitioners") & ~pl.col("source_active")
    creatable = entity == "appointment_types" or can_create
    create = pl.lit(creatable) & ~former_staff

    action = (
        pl.when(linked | by_name)
        .then(pl.lit("map"))
        .when(unsure | ~create)
        .then(pl.lit("unresolved"))
        .otherwise(pl.lit("create"))
    )
    target_id = pl.when(linked).then("linked_id").when(by_name).then("name_id")
    target_name = pl.when(linked).then("linked_name").when(by_name).then("name_name")
    note = (
        pl.when(linked)
        .then(pl.lit("Created from this source record by an earlier run."))
        .when(by_name)
        .then(_name_note())
        .when(unsure)
        .then(
            pl.format(
                "{} destination records are named '{}'; choose one, or another action.",
                pl.col("n_same"),
                pl.col("same_name"),
            )
        )
        .when(former_staff)
        .then(
            pl.lit(
                "A former practitioner not found in the destination: choose "
                f"{', '.join(former_choices[:-1])}, or {former_choices[-1]}.{former_needs}"
            )
        )
        .when(create & pl.lit(entity == "appointment_types" and not can_create) & ~pl.col("source_active"))
        .then(
            pl.lit(
                "An archived appointment type not found in the destination: it will be created, and active, as "
                "Cliniko's API cannot archive appointment types; archive it in the destination account after "
                "the transfer, or map it to an existing type."
            )
        )
        .when(create)
        .then(pl.lit(_create_note(entity)))
        .otherwise(pl.lit(_missing_note(entity)))
    )
    return table.select(
        pl.lit(entity).alias("entity"),
        "source_id",
        "source_name",
        "source_active",
        action.alias("action"),
        target_id.cast(pl.String).alias("target_id"),
        target_name.cast(pl.String).alias("target_name"),
        note.alias("note"),
    )


def _name_note() -> pl.Expr:
    parts = [
        pl.when(pl.col("source_name") != pl.col("name_name")).then(
            pl.lit("Matched by name, ignoring case, accents, spacing and punctuation.")
        ),
        pl.when(pl.col("also") == 1)
        .then(pl.lit("Preferred over an inactive record of the same name."))
        .when(pl.col("also") > 1)
        .then(pl.format("Preferred over {} inactive records of the same name.", pl.col("also"))),
        pl.when(~pl.col("name_active")).then(pl.lit("The destination record is inactive.")),
        pl.when(pl.col("shared") > 1).then(
            pl.format("{} source records share this name and all map here.", pl.col("shared"))
        ),
    ]
    return pl.concat_str(parts, separator=" ", ignore_nulls=True)


def _create_note(entity: str) -> str:
    what = {
        "practitioners": "practitioner",
        "businesses": "business",
        "appointment_types": "appointment type",
    }
    return f"No {what[entity]} of this name in the destination: it will be created."


def _missing_note(entity: str) -> str:
    if entity == "businesses":
        return (
            "No business of this name in the destination, and Cliniko's API cannot create businesses: set it "
            "up in the destination account and map to it, or exclude it (its appointments are skipped)."
        )
    return (
        "No practitioner of this name in the destination, and Cliniko's API cannot create practitioners: "
        "create them in the destination account first and map to them, or choose another action."
    )


def build_mapping(
    client: ClinikoClient,
    destination_reference: Callable[[str], pl.DataFrame],
    *,
    can_create: bool,
) -> dict[str, pl.DataFrame]:
    """Read the source's three tables and propose a mapping for each.

    Args:
        client: a client of the source account.
        destination_reference: ``entity -> frame`` of the destination's records
            (``LocalStore.reference``, or ``functools.partial(reference_from_client, dest)``).
        can_create: see :func:`auto_match`.

    Returns:
        ``{"businesses": ..., "practitioners": ..., "appointment_types": ...}``.
    """
    return {
        entity: auto_match(
            source_frame(client, entity), destination_reference(entity), entity, can_create=can_create
        )
        for entity in ENTITIES
    }


# --- rows, frames and files ------------------------------------------------------


def to_rows(frames: dict[str, pl.DataFrame] | Iterable[pl.DataFrame]) -> list[MappingRow]:
    """Mapping tables (possibly edited in the console or a notebook) as validated rows, entity by entity.

    Only ``entity``, ``source_id``, ``source_name`` and ``action`` must be columns; the others
    may be dropped (a ``map`` or ``reassign`` row still needs its ``target_id``).

    Raises:
        ConfigError: a table lacks a needed column, or a row is not valid (a ``map``
            without a target, ``former`` on a business...).
    """
    tables = list(frames.values()) if isinstance(frames, dict) else list(frames)
    rows = []
    for table in tables:
        lacking = [name for name in _NEEDED_COLUMNS if name not in table.columns]
        if lacking:
            raise ConfigError(
                f"The mapping table lacks {' and '.join(lacking)}; it needs the columns "
                f"{', '.join(_NEEDED_COLUMNS[:-1])} and {_NEEDED_COLUMNS[-1]} (as migrator.mapping() gives them)."
            )
        present = [name for name in MAPPING_COLUMNS if name in table.columns]
        # Numbered as the table stands, which may hold one entity (the console's) or all (migrator.mapping()'s).
        kinds = table["entity"].unique().to_list()
        for number, data in enumerate(table.select(present).iter_rows(named=True), start=1):
            which = f"the {data.get('entity')} table" if len(kinds) == 1 else "the mapping table"
            rows.append(_row(data, f"row {number} of {which}"))
    return rows


def to_frames(rows: Iterable[MappingRow]) -> dict[str, pl.DataFrame]:
    """Rows as one frame per entity (all three present, possibly empty), columns :data:`MAPPING_COLUMNS`."""
    dumped = [row.model_dump() for row in rows]
    return {
        entity: pl.DataFrame(
            [d for d in dumped if d["entity"] == entity], schema=MAPPING_SCHEMA, orient="row"
        )
        for entity in ENTITIES
    }


@paths_said
def save_mapping(path: str | os.PathLike[str], rows: Iterable[MappingRow] | pl.DataFrame) -> None:
    """Write rows, or a mapping table, as ``{"version": 1, "mappings": [...]}`` (UTF-8 JSON; replaced atomically).

    What ``python -m migrator mapping --out`` writes and ``run(mapping=path)`` reads; a
    notebook writes the table :func:`migrator.mapping` gave (edited or not) with
    ``migrator.save_mapping(path, table)``. The file's folder is made if missing, as
    ``reconcile --out`` makes its own. A device or a pipe (``/dev/stdout``) is written
    through rather than replaced.

    Raises:
        ConfigError: a row of the table is not valid (see :func:`to_rows`), or the file system
            refuses the path (said in one sentence naming it).
    """
    if isinstance(rows, pl.DataFrame):
        rows = to_rows([rows])
    target = Path(path)
    text = json.dumps(
        {"version": MAPPING_FILE_VERSION, "mappings": [row.model_dump(mode="json") for row in rows]},
        ensure_ascii=False,
        indent=2,
    )
    if target.exists() and not target.is_file() and not target.is_dir():
        # A device or a pipe (/dev/stdout): written through; renaming over it would replace it.
        with open(target, "w", encoding="utf-8") as out:
            out.write(text + "\n")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp: str | None = None
    try:
        handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text + "\n")
        os.replace(tmp, target)
    except OSError as exc:  # name the user's file, not the temporary one beside it
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def load_mapping(path: str | os.PathLike[str]) -> list[MappingRow]:
    """Read a file written by :func:`save_mapping`.

    Raises:
        ConfigError: the file is missing, not JSON, not a version-1 mapping file, has an
            invalid row, or lists a source record twice; one sentence naming the file.
    """
    where = Path(path)
    try:
        data = json.loads(where.read_text(encoding="utf-8-sig"))  # a BOM, as some editors write
    except FileNotFoundError:
        raise ConfigError(f"There is no mapping file at {where}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"The mapping file {where} is not UTF-8 text.") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"The mapping file {where} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("mappings"), list):
        raise ConfigError(
            f"The mapping file {where} must hold an object with a 'mappings' list, as migrator.save_mapping() "
            "and 'mapping --out' write it."
        )
    if data.get("version") != MAPPING_FILE_VERSION:
        raise ConfigError(
            f"The mapping file {where} has version {data.get('version')!r}; this tool reads version "
            f"{MAPPING_FILE_VERSION}."
        )
    rows = [
        _row(item, f"row {n} of the mapping file {where}") for n, item in enumerate(data["mappings"], start=1)
    ]
    seen: set[tuple[str, str]] = set()
    for row in rows:
        if (row.entity, row.source_id) in seen:
            raise ConfigError(
                f"The mapping file {where} lists {row.entity} source id {row.source_id} more than once."
            )
        seen.add((row.entity, row.source_id))
    return rows


def _row(data: Any, where: str) -> MappingRow:
    try:
        return MappingRow.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"{where[0].upper()}{where[1:]} is not valid: {validation_sentence(exc)}."
        ) from None


# --- checking against the source -------------------------------------------------


def require_complete(
    client: ClinikoClient,
    rows: Iterable[MappingRow],
    where: str,
    *,
    limit: int = 8,
    fresh: str = "write a fresh file with 'mapping --out' (migrator.save_mapping() in a notebook)",
) -> None:
    """Refuse mapping rows that leave out a practitioner, business or appointment type of the source.

    A run treats a record with no row as one that appeared after the mapping was made
    and skips what depends on it (``unmapped``, ``business_skipped``). For a file or a
    notebook's table handed to a run that is almost always a row deleted by hand, or a
    mapping made for another account, so it is refused before anything is read. It
    costs the source's three lists (one or two requests each). Rows for records the
    source no longer has are harmless.

    Raises:
        MappingError: one sentence naming ``where`` and the records without a row, and
            ``fresh``: how to start again from a complete mapping.
    """
    listed = {(row.entity, row.source_id) for row in rows}
    missing: list[tuple[str, str]] = []
    for entity in ENTITIES:
        frame = source_frame(client, entity)
        missing.extend(
            (entity, name)
            for source_id, name in zip(frame["source_id"], frame["source_name"], strict=True)
            if (entity, source_id) not in listed
        )
    if not missing:
        return
    shown = missing[:limit]
    groups = [
        f"{entity.replace('_', ' ')} {', '.join(name for e, name in shown if e == entity)}"
        for entity in ENTITIES
        if any(e == entity for e, _ in shown)
    ]
    more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
    count = "1 record" if len(missing) == 1 else f"{len(missing)} records"
    raise MappingError(
        f"{_cap(where)} has no row for {count} of the source: {'; '.join(groups)}{more}. Add a row for "
        f"each (or {fresh}), so nothing is skipped unasked."
    )


# --- checking against the destination --------------------------------------------


def validate(
    rows: Iterable[MappingRow],
    destination_reference: Callable[[str], pl.DataFrame],
    *,
    can_create: bool = True,
) -> list[str]:
    """Sentences for rows the destination cannot honour; an empty list means all is well.

    Checks that every ``target_id`` exists among the destination's records of that
    entity, that a ``reassign`` target is an active practitioner, and that the action is
    one the destination allows (``can_create=False`` for Cliniko: no creating
    practitioners or businesses, and ``former`` needs the clinic's own Former
    practitioner record). Unresolved rows are not reported here:
    :meth:`Plan.require_resolved <migrator.plan.Plan.require_resolved>` does that.
    """
    problems: list[str] = []
    references: dict[str, dict[str, bool]] = {}
    for row in rows:
        if row.action not in allowed_actions(row.entity, can_create=can_create):
            problems.append(
                f"{_cap(row.label())} is set to '{row.action}', but the destination cannot create {row.entity}; "
                "set it up there and map to it, or choose another action."
            )
            continue
        if row.action == "former" and row.target_id is None and not can_create:
            problems.append(
                f"{_cap(row.label())} is set to 'former', but the destination cannot create a generic Former "
                "practitioner; create one there and give its id."
            )
            continue
        if row.target_id is None:
            continue
        if row.entity not in references:
            ref = destination_reference(row.entity)
            references[row.entity] = dict(
                zip(ref["id"].cast(pl.String).to_list(), ref["active"].fill_null(True).to_list(), strict=True)
            )
        active = references[row.entity].get(row.target_id)
        if active is None:
            problems.append(
                f"{_cap(row.label())} points at destination id {row.target_id}, which does not exist among the "
                f"destination's {row.entity}."
            )
        elif row.action == "reassign" and not active:
            problems.append(
                f"{_cap(row.label())} is reassigned to destination practitioner {row.target_id}, who is inactive; "
                "choose an active practitioner."
            )
    return problems


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
