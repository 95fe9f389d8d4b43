"""Mapping tables as the console's grids edit them: statuses, bulk decisions, edits, files."""

from __future__ import annotations

import json

import polars as pl
import pytest

from migrator.errors import ConfigError
from migrator.mapping import MAPPING_SCHEMA
from migrator.mapping_editor import (
    apply_edits,
    apply_rows,
    decide_unresolved,
    editor_table,
    mapping_from_json,
    mapping_json,
    read_table,
    targetless_actions,
    unresolved_sentence,
)
from migrator.plan import MappingRow


def table() -> pl.DataFrame:
    rows = [
        ("practitioners", "1", "Zoë Adams", True, "map", "11", "Zoe Adams", "Matched by name."),
        ("practitioners", "2", "Hana Kobayashi", False, "unresolved", None, None, "A former practitioner."),
        ("practitioners", "3", "Sophie Wilson", False, "unresolved", None, None, "A former practitioner."),
    ]
    return pl.DataFrame(rows, schema=MAPPING_SCHEMA, orient="row")


def reference() -> pl.DataFrame:
    return pl.DataFrame({"id": ["11", "12"], "name": ["Zoe Adams", "Liam Murphy"], "active": [True, True]})


def test_undecided_rows_are_flagged_and_named_in_one_sentence() -> None:
    grid = editor_table(table())
    assert grid.columns[0] == "status"
    assert grid["status"].to_list() == ["✓ decided", "⚠️ needs a decision", "⚠️ needs a decision"]
    rows, problems = read_table(grid, reference())
    assert problems == []
    assert unresolved_sentence(rows) == "2 rows need a decision before a run: Hana Kobayashi, Sophie Wilson."


def test_an_edit_shows_at_once_and_a_missing_target_is_a_sentence() -> None:
    edited = apply_edits(
        table(), {"edited_rows": {"1": {"action": "reassign", "target_id": "12"}, 2: {"action": "map"}}}
    )
    assert editor_table(edited)["status"].to_list() == ["✓ decided", "✓ decided", "⚠️ choose a target"]
    rows, problems = read_table(edited, reference())
    assert [r.source_name for r in rows] == ["Zoë Adams", "Hana Kobayashi"]
    assert rows[1].target_name == "Liam Murphy"  # named from the destination, whatever the grid held
    assert problems == ["Sophie Wilson: the action 'map' needs a target."]


def test_every_undecided_row_at_once() -> None:
    assert targetless_actions("practitioners") == ["former", "exclude", "create"]
    decided = decide_unresolved(table(), "former")
    assert decided["action"].to_list() == ["map", "former", "former"]
    assert decided["target_id"].to_list() == ["11", None, None]
    with pytest.raises(ConfigError, match="cannot settle every undecided practitioners row at once"):
        decide_unresolved(table(), "reassign")


def test_a_mapping_file_round_trips_and_loads_onto_the_tables() -> None:
    rows, _ = read_table(decide_unresolved(table(), "exclude"))
    text = mapping_json(rows)
    assert json.loads(text)["version"] == 1
    loaded = mapping_from_json(text.encode(), "clinic.json")
    assert loaded == rows
    tables, applied, unmatched = apply_rows(
        {"practitioners": table()}, [*loaded[1:], loaded[0].model_copy(update={"source_id": "99"})]
    )
    assert (applied, unmatched) == (2, 1)
    assert tables["practitioners"]["action"].to_list() == ["map", "exclude", "exclude"]


def test_a_bad_file_is_named_by_its_own_name_not_a_temporary_path() -> None:
    with pytest.raises(ConfigError) as caught:
        mapping_from_json(b"{not json", "../../etc/clinic.json")
    message = str(caught.value)
    assert message.startswith("The mapping file clinic.json is not valid JSON") and "/tmp" not in message
    with pytest.raises(ConfigError, match=r"clinic.json has version 7"):
        mapping_from_json(json.dumps({"version": 7, "mappings": []}).encode(), "clinic.json")
    assert MappingRow  # the rows are the plan's own model
