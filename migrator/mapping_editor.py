"""Mapping tables as a person edits them: a status per row, bulk decisions, JSON in and out.

:mod:`migrator.mapping` proposes the tables (Polars frames of
:data:`~migrator.mapping.MAPPING_COLUMNS`); the console shows them in editable grids.
This module is the grid's side of it, with no Streamlit in it:

- :func:`editor_table` adds a ``status`` column that flags every row still needing a decision;
- :func:`read_table` turns an edited table back into :class:`~migrator.plan.MappingRow`\\ s,
  naming each target from the destination's records and collecting one sentence per bad row;
- :func:`decide_unresolved` gives every undecided row of a table one action (seed 001's
  choice for former practitioners, made once for all of them);
- :func:`mapping_json` / :func:`mapping_from_json` save and load the file format of
  :func:`~migrator.mapping.save_mapping`, and :func:`apply_rows` puts a loaded file's
  decisions onto the current tables.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from migrator.errors import ConfigError
from migrator.mapping import MAPPING_COLUMNS, MAPPING_FILE_VERSION, MAPPING_SCHEMA, load_mapping
from migrator.plan import MappingRow, allowed_actions, validation_sentence

__all__ = [
    "ACTION_LABELS",
    "EDITOR_COLUMNS",
    "TARGETED_ACTIONS",
    "apply_edits",
    "apply_rows",
    "console_words",
    "decide_unresolved",
    "editor_table",
    "mapping_from_json",
    "mapping_json",
    "read_table",
    "row_status",
    "targetless_actions",
    "unresolved_sentence",
]

#: What each action does, in words for a choice list.
ACTION_LABELS: dict[str, str] = {
    "map": "map to an existing record",
    "create": "create it in the destination",
    "former": "give to a generic Former practitioner",
    "reassign": "give to another practitioner",
    "exclude": "exclude (skip its appointments)",
    "unresolved": "undecided",
}
#: Actions that need a destination record chosen in the target column.
TARGETED_ACTIONS = ("map", "reassign")
#: The editable grid's columns, in the order shown (``entity``, ``source_id`` and ``target_name`` stay hidden).
EDITOR_COLUMNS: tuple[str, ...] = ("status", "source_name", "source_active", "action", "target_id", "note")

_UNDECIDED = "⚠️ needs a decision"
_NO_TARGET = "⚠️ choose a target"
_OK = "✓ decided"


def row_status(action: str | None, target_id: str | None) -> str:
    """``✓ decided``, or a warning saying what the row still needs."""
    if action is None or action == "unresolved":
        return _UNDECIDED
    if action in TARGETED_ACTIONS and not target_id:
        return _NO_TARGET
    return _OK


def console_words(text: str) -> str:
    """A mapping note or problem with each quoted action code as the console's label for it.

    The library's sentences name actions by the codes a mapping file holds (``'former'``),
    and a destination record by a file's column (``target_id``); the console's grid offers
    labels and a "Destination record" column, so its notes say those.

    >>> console_words("choose 'former' or 'exclude'")
    "choose 'give to a generic Former practitioner' or 'exclude (skip its appointments)'"
    >>> console_words("choose it as the destination record (target_id in a mapping file).")
    "choose it in the 'Destination record' column."
    """
    for code, label in ACTION_LABELS.items():
        text = text.replace(f"'{code}'", f"'{label}'")
    return text.replace(
        "as the destination record (target_id in a mapping file)", "in the 'Destination record' column"
    )


def editor_table(frame: pl.DataFrame, made: Collection[str] = ()) -> pl.DataFrame:
    """A mapping table with its ``status`` column first, ready for an editable grid (notes in the console's words).

    ``made``: source ids the destination already holds a record of (created by an earlier
    run); a ``create`` row among them says so, as running again finds that record rather
    than create a second one.
    """
    statuses = [
        row_status(action, target)
        for action, target in zip(frame["action"].to_list(), frame["target_id"].to_list(), strict=True)
    ]
    made_already = (pl.col("action") == "create") & pl.col("source_id").is_in(list(made))
    return (
        frame.select(MAPPING_COLUMNS)
        .with_columns(
            status=pl.Series(statuses, dtype=pl.String),
            note=pl.when(made_already)
            .then(pl.lit(_MADE_ALREADY))
            .otherwise(pl.col("note").map_elements(console_words, return_dtype=pl.String)),
        )
        .select("status", *MAPPING_COLUMNS)
    )


_MADE_ALREADY = "Created in the destination by an earlier run: running again finds that record and does not create a second."


def targetless_actions(entity: str, *, can_create: bool = True) -> list[str]:
    """The decisions that need no target, offered to settle every undecided row at once.

    A destination that cannot create records (Cliniko) cannot create the generic Former
    practitioner either, so ``former`` then needs a target and is not offered here.
    """
    return [
        a
        for a in allowed_actions(entity, can_create=can_create)
        if a not in TARGETED_ACTIONS and a != "unresolved" and (can_create or a != "former")
    ]


def decide_unresolved(frame: pl.DataFrame, action: str) -> pl.DataFrame:
    """Give every undecided row of one table ``action`` (one that needs no target).

    Raises:
        ConfigError: the action needs a target, or is not one this table's entity allows.
    """
    if frame.is_empty():
        return frame
    entity = str(frame["entity"][0])
    if action not in targetless_actions(entity):
        raise ConfigError(
            f"'{action}' cannot settle every undecided {entity.replace('_', ' ')} row at once; "
            f"choose one of {', '.join(targetless_actions(entity))}."
        )
    undecided = pl.col("action").is_null() | (pl.col("action") == "unresolved")
    return frame.with_columns(
        action=pl.when(undecided).then(pl.lit(action)).otherwise(pl.col("action")),
        target_id=pl.when(undecided).then(pl.lit(None, dtype=pl.String)).otherwise(pl.col("target_id")),
        target_name=pl.when(undecided).then(pl.lit(None, dtype=pl.String)).otherwise(pl.col("target_name")),
    )


def read_table(
    frame: pl.DataFrame, reference: pl.DataFrame | None = None
) -> tuple[list[MappingRow], list[str]]:
    """An edited table as mapping rows, and one sentence per row that is not valid yet.

    Args:
        frame: the table (extra columns such as ``status`` are ignored).
        reference: the destination's records of this entity (``id``, ``name``): the
            ``target_name`` of each row is taken from it, whatever the grid held.

    Returns:
        ``(rows, problems)``: the valid rows, in order, and a sentence for each row left out.
    """
    names: dict[str, str] = {}
    if reference is not None and not reference.is_empty():
        names = dict(zip(reference["id"].cast(pl.String).to_list(), reference["name"].to_list(), strict=True))
    rows: list[MappingRow] = []
    problems: list[str] = []
    for data in frame.select(MAPPING_COLUMNS).iter_rows(named=True):
        data = dict(data)
        target = data.get("target_id")
        if target is not None and str(target).strip():
            data["target_name"] = names.get(str(target), data.get("target_name"))
        try:
            rows.append(MappingRow.model_validate(data))
        except ValidationError as exc:
            problems.append(f"{data.get('source_name')}: {_clause(exc)}.")
    return rows, problems


def _clause(exc: ValidationError) -> str:
    text = validation_sentence(exc, limit=1)
    # "practitioners 'Zoë' (source id 7): the action 'map' needs a target_id" -> the part after the label
    return text.split("): ", 1)[-1].replace("a target_id", "a target").replace("target_id", "target")


def unresolved_sentence(rows: Iterable[MappingRow]) -> str | None:
    """One sentence naming the rows still undecided, or ``None`` when every row is decided."""
    pending = [r for r in rows if r.action == "unresolved"]
    if not pending:
        return None
    names = ", ".join(r.source_name for r in pending)
    noun = "row needs" if len(pending) == 1 else "rows need"
    return f"{len(pending)} {noun} a decision before a run: {names}."


def mapping_json(rows: Iterable[MappingRow]) -> str:
    """The rows as a mapping file (what :func:`~migrator.mapping.save_mapping` writes)."""
    return (
        json.dumps(
            {"version": MAPPING_FILE_VERSION, "mappings": [row.model_dump(mode="json") for row in rows]},
            ensure_ascii=False,
            indent=2,
        )
        + "\n"
    )


def mapping_from_json(data: bytes, name: str = "mapping.json") -> list[MappingRow]:
    """Read an uploaded mapping file, checked as :func:`~migrator.mapping.load_mapping` checks a file.

    Raises:
        ConfigError: the file is not a valid mapping file; the sentence names it by ``name``.
    """
    safe = Path(name).name or "mapping.json"
    with tempfile.TemporaryDirectory(prefix="mapping-upload-") as folder:
        path = Path(folder) / safe
        path.write_bytes(data)
        try:
            return load_mapping(path)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(str(path), safe)) from None


def apply_rows(
    tables: dict[str, pl.DataFrame], rows: Iterable[MappingRow]
) -> tuple[dict[str, pl.DataFrame], int, int]:
    """Put loaded rows' decisions onto the current tables, matched by entity and source id.

    Source records the file does not mention keep their current decision; rows of the
    file that match no source record here are left out (another account's file, or
    records since deleted).

    Returns:
        ``(tables, applied, unmatched)``.
    """
    loaded: dict[tuple[str, str], MappingRow] = {(r.entity, r.source_id): r for r in rows}
    applied = 0
    out: dict[str, pl.DataFrame] = {}
    for entity, frame in tables.items():
        records = []
        for data in frame.select(MAPPING_COLUMNS).iter_rows(named=True):
            row = loaded.get((entity, str(data["source_id"])))
            if row is not None:
                data = {
                    **data,
                    "action": row.action,
                    "target_id": row.target_id,
                    "target_name": row.target_name,
                }
                applied += 1
            records.append(data)
        out[entity] = pl.DataFrame(records, schema=MAPPING_SCHEMA, orient="row")
    return out, applied, len(loaded) - applied


def apply_edits(frame: pl.DataFrame, edits: dict[str, Any] | None) -> pl.DataFrame:
    """A table with a grid's pending cell edits applied (``{"edited_rows": {row: {column: value}}}``).

    Applying them before the grid is drawn lets the status column reflect the edit at once.
    Rows cannot be added or deleted in a mapping table, so only ``edited_rows`` counts;
    edits to columns other than ``action`` and ``target_id`` are ignored.
    """
    changed = (edits or {}).get("edited_rows") or {}
    if not changed:
        return frame
    records = list(frame.select(MAPPING_COLUMNS).iter_rows(named=True))
    for position, change in changed.items():
        index = int(position)
        if not 0 <= index < len(records) or not isinstance(change, dict):
            continue
        for column in ("action", "target_id"):
            if column in change:
                value = change[column]
                records[index][column] = None if value is None else str(value)
    return pl.DataFrame(records, schema=MAPPING_SCHEMA, orient="row")
