"""Mapping tables: name normalisation, the auto-match rules, files, validation, and the sandbox end to end."""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

import migrator
from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.errors import ConfigError, MappingError
from migrator.mapping import (
    MAPPING_COLUMNS,
    auto_match,
    build_mapping,
    load_mapping,
    normalise_name,
    reference_from_client,
    save_mapping,
    source_frame,
    to_frames,
    to_rows,
    validate,
)
from migrator.mapping_editor import console_words
from migrator.plan import MappingRow
from migrator.sandbox import Sandbox

# --- names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Zoe Adams", "ZOE ADAMS"),
        ("Van  der Berg ", "Van der Berg"),
        ("\tTom\u00a0Van der Berg\n", "tom van der berg"),
        ("Zoë", "Zoe"),
        ("Trần", "Tran"),
        ("José García", "Jose Garcia"),
        ("Łukasz Søren", "lukasz soren"),
        ("mary-jane o'brien", "Mary-Jane O'Brien"),
        ("Mary-Jane O’Brien", "mary jane obrien"),
        ("Harbourside Physio – Coburg", "Harbourside Physio Coburg"),
        ("Harbourside Physio — Coburg", "harbourside physio - coburg"),
        ("Remedial Massage (old)", "remedial massage old"),
        ("Dr Zoë Adams", "Zoe Adams"),
        ("Dr. Priya Patel", "priya PATEL"),
        ("ＺＯＥ", "zoe"),  # full-width letters
    ],
)
def test_normalise_name_equates(a: str, b: str) -> None:
    assert normalise_name(a) == normalise_name(b)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Van  der Berg ", "van der berg"),
        ("Mary-Jane O'Brien", "mary jane obrien"),
        ("Anh Trần", "anh tran"),
        ("Dr", "dr"),  # a title alone is a name, not a prefix
        ("Mr Smith", "mr smith"),  # only professional titles are dropped
        ("伟 李", "伟 李"),
        ("김민준", "김민준"),  # Hangul is recomposed, not left as jamo
        ("がく", "がく"),  # dakuten change the letter: kept
        ("", ""),
        (None, ""),
    ],
)
def test_normalise_name_values(text: str | None, expected: str) -> None:
    assert normalise_name(text) == expected


@pytest.mark.parametrize(("a", "b"), [("Mary Jane", "Maryjane"), ("がく", "かく"), ("Anh Tran", "Anh Trang")])
def test_normalise_name_keeps_different_names_apart(a: str, b: str) -> None:
    assert normalise_name(a) != normalise_name(b)


# --- auto_match ------------------------------------------------------------------


def src(*rows: tuple[str, str, bool]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"source_id": pl.String, "source_name": pl.String, "source_active": pl.Boolean},
        orient="row",
    )


def dst(*rows: tuple[str, str, bool] | tuple[str, str, bool, str | None]) -> pl.DataFrame:
    full = [(*r, None) if len(r) == 3 else r for r in rows]
    return pl.DataFrame(
        full,
        schema={"id": pl.String, "name": pl.String, "active": pl.Boolean, "source_id": pl.String},
        orient="row",
    )


def decided(frame: pl.DataFrame) -> dict[str, tuple[str, str | None]]:
    return {r["source_name"]: (r["action"], r["target_id"]) for r in frame.iter_rows(named=True)}


def notes(frame: pl.DataFrame) -> dict[str, str]:
    return dict(zip(frame["source_name"], frame["note"], strict=True))


def test_auto_match_exact_and_normalised_names() -> None:
    source = src(("1", "Zoë Adams", True), ("2", "Mary-Jane O'Brien", True), ("3", "Liam Murphy", True))
    destination = dst(
        ("11", "Zoe Adams", True), ("12", "mary-jane o'brien", True), ("13", "Liam Murphy", True)
    )
    table = auto_match(source, destination, "practitioners", can_create=False)
    assert table.columns == list(MAPPING_COLUMNS)
    assert table["entity"].to_list() == ["practitioners"] * 3
    assert decided(table) == {
        "Zoë Adams": ("map", "11"),
        "Mary-Jane O'Brien": ("map", "12"),
        "Liam Murphy": ("map", "13"),
    }
    assert table["target_name"].to_list() == ["Zoe Adams", "mary-jane o'brien", "Liam Murphy"]
    assert notes(table)["Liam Murphy"] == ""  # identical names need no comment
    assert notes(table)["Zoë Adams"].startswith("Matched by name, ignoring case, accents")


def test_auto_match_leaves_duplicate_destination_names_unresolved() -> None:
    source = src(("1", "Harbourside Physio Coburg", True))
    destination = dst(
        ("21", "Harbourside Physio Coburg", True),
        ("22", "HARBOURSIDE PHYSIO – COBURG", True),
        ("23", "Elsewhere", True),
    )
    table = auto_match(source, destination, "businesses", can_create=True)
    assert decided(table) == {"Harbourside Physio Coburg": ("unresolved", None)}
    assert notes(table)["Harbourside Physio Coburg"] == (
        "2 destination records are named 'Harbourside Physio Coburg'; choose one, or another action."
    )


def test_auto_match_prefers_the_one_active_destination_record() -> None:
    source = src(("1", "Priya Patel", True))
    destination = dst(
        ("31", "Priya Patel", False), ("32", "PRIYA  PATEL", False), ("33", "priya patel", True)
    )
    table = auto_match(source, destination, "practitioners", can_create=False)
    assert decided(table) == {"Priya Patel": ("map", "33")}
    assert "Preferred over 2 inactive records of the same name." in notes(table)["Priya Patel"]


def test_auto_match_maps_a_former_practitioner_the_clinic_recreated_inactive() -> None:
    source = src(("5", "Liam Murphy", False))
    destination = dst(("41", "Liam Murphy", False))
    table = auto_match(source, destination, "practitioners", can_create=False)
    assert decided(table) == {"Liam Murphy": ("map", "41")}
    assert notes(table)["Liam Murphy"] == "The destination record is inactive."


@pytest.mark.parametrize("can_create", [True, False])
def test_auto_match_former_practitioners_not_found_are_for_a_person(can_create: bool) -> None:
    source = src(("5", "Liam Murphy", False))
    destination = dst(("11", "Zoe Adams", True), ("99", "Former Practitioner", False))
    table = auto_match(source, destination, "practitioners", can_create=can_create)
    assert decided(table) == {"Liam Murphy": ("unresolved", None)}
    note = notes(table)["Liam Murphy"]
    assert note.startswith("A former practitioner not found in the destination: choose 'former'")
    assert "(the destination has 'Former Practitioner', id 99)" in note
    assert "'reassign'" in note and "'exclude'" in note
    assert ("'create'" in note) is can_create


def test_the_former_practitioner_note_is_one_list_and_says_what_cliniko_needs() -> None:
    source, destination = src(("5", "Liam Murphy", False)), dst(("11", "Zoe Adams", True))
    local = notes(auto_match(source, destination, "practitioners", can_create=True))["Liam Murphy"]
    assert local == (
        "A former practitioner not found in the destination: choose 'former' to give their appointments to a "
        "generic Former practitioner, 'reassign' to give them to an active practitioner, 'exclude' to skip them, "
        "or 'create' to add them as an inactive practitioner."
    )
    cliniko = notes(auto_match(source, destination, "practitioners", can_create=False))["Liam Murphy"]
    # Read in the console (its column is "Destination record") and in a mapping file (its field is target_id).
    assert cliniko == (
        "A former practitioner not found in the destination: choose 'former' to give their appointments to a "
        "generic Former practitioner, 'reassign' to give them to an active practitioner, or 'exclude' to skip "
        "them. Cliniko's API cannot create the generic one: add an inactive practitioner named Former "
        "practitioner to the destination account, then choose it as the destination record (target_id in a "
        "mapping file)."
    )
    assert console_words(cliniko).startswith(
        "A former practitioner not found in the destination: choose 'give to a generic Former practitioner' to "
        "give their appointments to a generic Former practitioner, 'give to another practitioner' to give them "
        "to an active practitioner, or 'exclude (skip its appointments)' to skip them. "
    )
    assert console_words(cliniko).endswith(
        "add an inactive practitioner named Former practitioner to the destination account, then choose it in "
        "the 'Destination record' column."
    )


def test_auto_match_creates_only_what_the_destination_can() -> None:
    source = src(("4", "Anh Trần", True))
    destination = dst(("11", "Zoe Adams", True))
    local = auto_match(source, destination, "practitioners", can_create=True)
    assert decided(local) == {"Anh Trần": ("create", None)}
    assert notes(local)["Anh Trần"] == "No practitioner of this name in the destination: it will be created."
    cliniko = auto_match(source, destination, "practitioners", can_create=False)
    assert decided(cliniko) == {"Anh Trần": ("unresolved", None)}
    assert "Cliniko's API cannot create practitioners" in notes(cliniko)["Anh Trần"]

    business = src(("20", "Harbourside Physio Footscray", True))
    assert decided(auto_match(business, dst(), "businesses", can_create=True)) == {
        "Harbourside Physio Footscray": ("create", None)
    }
    missing = auto_match(business, dst(), "businesses", can_create=False)
    assert decided(missing) == {"Harbourside Physio Footscray": ("unresolved", None)}
    assert "or exclude it (its appointments are skipped)" in notes(missing)["Harbourside Physio Footscray"]


def test_auto_match_appointment_types_may_be_created_in_cliniko() -> None:
    source = src(
        ("40", "Initial Consultation", True),
        ("41", "Hydrotherapy Group", True),
        ("42", "Remedial Massage (old)", False),
    )
    destination = dst(("51", "initial consultation", True))
    table = auto_match(source, destination, "appointment_types", can_create=False)
    assert decided(table) == {
        "Initial Consultation": ("map", "51"),
        "Hydrotherapy Group": ("create", None),
        "Remedial Massage (old)": ("create", None),
    }
    said = notes(table)
    assert (
        said["Hydrotherapy Group"]
        == "No appointment type of this name in the destination: it will be created."
    )
    # Cliniko's API cannot archive one: the archived type arrives active, and its row says so.
    assert said["Remedial Massage (old)"] == (
        "An archived appointment type not found in the destination: it will be created, and active, as Cliniko's "
        "API cannot archive appointment types; archive it in the destination account after the transfer, or map "
        "it to an existing type."
    )
    # The local store keeps it archived: the plain note.
    local = notes(auto_match(source, destination, "appointment_types", can_create=True))
    assert local["Remedial Massage (old)"] == local["Hydrotherapy Group"]


def test_auto_match_links_records_an_earlier_run_created() -> None:
    # the local store remembers the source id: that beats any name, even a renamed record
    source = src(("4", "Anh Trần", True), ("1", "Zoë Adams", True))
    destination = dst(
        ("61", "Anh Tran-Nguyen", True, "4"), ("62", "Anh Trần", True), ("63", "Zoe Adams", True)
    )
    table = auto_match(source, destination, "practitioners", can_create=True)
    assert decided(table) == {"Anh Trần": ("map", "61"), "Zoë Adams": ("map", "63")}
    assert notes(table)["Anh Trần"] == "Created from this source record by an earlier run."


def test_auto_match_notes_several_sources_sharing_one_target() -> None:
    source = src(("40", "Pilates Class", True), ("43", "Pilates class", False))
    table = auto_match(source, dst(("51", "Pilates Class", True)), "appointment_types", can_create=True)
    assert decided(table) == {"Pilates Class": ("map", "51"), "Pilates class": ("map", "51")}
    assert all("2 source records share this name and all map here." in n for n in table["note"])


def test_auto_match_edge_cases() -> None:
    # an empty destination, a nameless source record, and no source records at all
    table = auto_match(src(("1", "", True)), dst(), "appointment_types", can_create=False)
    assert decided(table) == {"": ("create", None)}
    assert auto_match(src(), dst(("1", "X", True)), "businesses", can_create=True).height == 0
    with pytest.raises(ConfigError, match="Unknown mapping entity"):
        auto_match(src(), dst(), "patients", can_create=True)


# --- rows, frames and files ------------------------------------------------------


def sample_rows() -> list[MappingRow]:
    return [
        MappingRow(entity="businesses", source_id="20", source_name="Coburg – North", action="exclude"),
        MappingRow(
            entity="practitioners", source_id="1", source_name="Zoë Adams", action="map", target_id="11"
        ),
        MappingRow(
            entity="practitioners",
            source_id="5",
            source_name="Liam Murphy",
            source_active=False,
            action="former",
            note="Left in 2023",
        ),
        MappingRow(entity="appointment_types", source_id="40", source_name="Pilates 🧘", action="create"),
    ]


def test_rows_and_frames_round_trip() -> None:
    frames = to_frames(sample_rows())
    assert list(frames) == ["businesses", "practitioners", "appointment_types"]
    assert frames["practitioners"].columns == list(MAPPING_COLUMNS)
    assert frames["practitioners"]["target_id"].to_list() == ["11", None]
    assert to_rows(frames) == sample_rows()
    assert to_frames([])["businesses"].height == 0


def test_to_rows_refuses_an_invalid_edit() -> None:
    frames = to_frames(sample_rows())
    frames["practitioners"] = frames["practitioners"].with_columns(
        action=pl.when(pl.col("source_id") == "1").then(pl.lit("reassign")).otherwise("action"),
        target_id=pl.lit(None, dtype=pl.String),
    )
    with pytest.raises(ConfigError) as caught:
        to_rows(frames)
    assert str(caught.value) == (
        "Row 1 of the practitioners table is not valid: practitioners 'Zoë Adams' (source id 1): "
        "the action 'reassign' needs a target_id."
    )
    # One table of every entity, as migrator.mapping() gives it: numbered in that table, not the entity's.
    with pytest.raises(ConfigError) as caught:
        to_rows([pl.concat(list(frames.values()))])
    assert str(caught.value).startswith("Row 2 of the mapping table is not valid: practitioners 'Zoë Adams'")


def test_to_rows_takes_a_table_with_only_the_columns_it_needs() -> None:
    frames = to_frames(sample_rows())
    trimmed = {entity: frame.drop("note", "target_name", "source_active") for entity, frame in frames.items()}
    assert [(r.entity, r.source_id, r.action, r.target_id) for r in to_rows(trimmed)] == [
        ("businesses", "20", "exclude", None),
        ("practitioners", "1", "map", "11"),
        ("practitioners", "5", "former", None),
        ("appointment_types", "40", "create", None),
    ]
    with pytest.raises(ConfigError) as caught:
        to_rows([frames["practitioners"].drop("action", "entity")])
    assert str(caught.value) == (
        "The mapping table lacks entity and action; it needs the columns entity, source_id, source_name and "
        "action (as migrator.mapping() gives them)."
    )


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "mapping.json"
    save_mapping(path, sample_rows())
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == 1 and len(data["mappings"]) == 4
    assert "Pilates 🧘" in path.read_text(encoding="utf-8")
    assert load_mapping(path) == sample_rows()
    assert [p.name for p in tmp_path.iterdir()] == ["mapping.json"]  # no temporary file left behind


def test_a_mapping_saved_to_a_pipe_is_written_through_it_and_a_refused_path_is_the_users(
    tmp_path: Path,
) -> None:
    """QA: as root, 'mapping --out /dev/null' renamed a regular file over the device; and a refusal named the temp file."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    read: list[str] = []
    reader = threading.Thread(target=lambda: read.append(pipe.read_text(encoding="utf-8")), daemon=True)
    reader.start()
    save_mapping(pipe, sample_rows())
    reader.join(timeout=10)
    assert stat.S_ISFIFO(pipe.stat().st_mode)  # still the pipe
    assert len(json.loads(read[0])["mappings"]) == 4
    target = tmp_path / "missing" / "mapping.json"
    (tmp_path / "missing").write_text("a file where the folder goes")
    with pytest.raises(ConfigError) as refused:
        save_mapping(target, sample_rows())
    assert str(refused.value).startswith(f"Cannot use {tmp_path / 'missing'}")
    with pytest.raises(ConfigError) as refused:
        save_mapping("/proc/nope.json", sample_rows())
    assert str(refused.value).startswith("Cannot use /proc/nope.json: ")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", "is not valid JSON (line 1, column 2: Expecting property name enclosed in double quotes)."),
        ("[]", "must hold an object with a 'mappings' list, as migrator.save_mapping() and 'mapping --out' write it."),
        ('{"version": 2, "mappings": []}', "has version 2; this tool reads version 1."),
        ('{"mappings": []}', "has version None; this tool reads version 1."),
        (
            '{"version": 1, "mappings": [{"entity": "businesses", "source_id": "2", "source_name": "B", "action": "former"}]}',
            "Row 1 of the mapping file {path} is not valid: businesses 'B' (source id 2): the action 'former' is only for practitioners.",
        ),
        (
            '{"version": 1, "mappings": [{"entity": "businesses", "source_id": "x", "source_name": "B", "action": "exclude"}]}',
            "Row 1 of the mapping file {path} is not valid: source_id: an id must be a string of decimal digits, got 'x'.",
        ),
        (
            '{"version": 1, "mappings": ['
            '{"entity": "businesses", "source_id": "2", "source_name": "B", "action": "exclude"},'
            '{"entity": "businesses", "source_id": "2", "source_name": "B", "action": "unresolved"}]}',
            "The mapping file {path} lists businesses source id 2 more than once.",
        ),
    ],
)  # fmt: skip
def test_load_mapping_refuses_a_malformed_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    expected = message.format(path=path)
    assert str(caught.value).endswith(expected)
    assert str(caught.value).startswith(("The mapping file ", "Row "))


def test_load_mapping_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^There is no mapping file at .*nope\.json\.$"):
        load_mapping(tmp_path / "nope.json")


# --- validate --------------------------------------------------------------------


def reference(entity: str) -> pl.DataFrame:
    return {
        "practitioners": dst(("11", "Zoe Adams", True), ("12", "Old Hand", False)),
        "businesses": dst(("31", "Richmond", True)),
        "appointment_types": dst(("51", "Pilates Class", True)),
    }[entity]


def test_validate_accepts_good_rows() -> None:
    assert validate(sample_rows(), reference) == []


def test_validate_finds_bad_targets_and_disallowed_actions() -> None:
    rows = [
        MappingRow(
            entity="practitioners", source_id="1", source_name="Zoë Adams", action="map", target_id="999"
        ),
        MappingRow(entity="businesses", source_id="2", source_name="Richmond", action="map", target_id="11"),
        MappingRow(
            entity="practitioners", source_id="3", source_name="Gone", action="reassign", target_id="12"
        ),
        MappingRow(entity="practitioners", source_id="4", source_name="Anh Trần", action="create"),
        MappingRow(entity="practitioners", source_id="5", source_name="Liam", action="former"),
        MappingRow(entity="appointment_types", source_id="6", source_name="Hydro", action="create"),
        MappingRow(entity="practitioners", source_id="7", source_name="Sam", action="unresolved"),
    ]
    assert validate(rows, reference, can_create=False) == [
        "Practitioners 'Zoë Adams' (source id 1) points at destination id 999, which does not exist among the "
        "destination's practitioners.",
        "Businesses 'Richmond' (source id 2) points at destination id 11, which does not exist among the "
        "destination's businesses.",
        "Practitioners 'Gone' (source id 3) is reassigned to destination practitioner 12, who is inactive; "
        "choose an active practitioner.",
        "Practitioners 'Anh Trần' (source id 4) is set to 'create', but the destination cannot create "
        "practitioners; set it up there and map to it, or choose another action.",
        "Practitioners 'Liam' (source id 5) is set to 'former', but the destination cannot create a generic "
        "Former practitioner; create one there and give its id.",
    ]
    # the local store can create, so only the bad targets remain
    assert len(validate(rows, reference, can_create=True)) == 3


# --- the sandbox, end to end -----------------------------------------------------


@pytest.fixture(scope="module")
def sandbox_clients() -> Iterator[tuple[ClinikoClient, ClinikoClient]]:
    sandbox = Sandbox(size="tiny", seed=1, rate_limit=0).start()
    config = ClientConfig(url_template=sandbox.url_template, requests_per_minute=0)
    source = ClinikoClient(sandbox.key("source"), config=config)
    destination = ClinikoClient(sandbox.key("destination"), config=config)
    try:
        yield source, destination
    finally:
        source.close()
        destination.close()
        sandbox.stop()


def test_mapping_the_tiny_sandbox(sandbox_clients: tuple[ClinikoClient, ClinikoClient]) -> None:
    source, destination = sandbox_clients
    practitioners = source_frame(source, "practitioners")
    assert practitioners.columns == ["source_id", "source_name", "source_active"]
    assert dict(zip(practitioners["source_name"], practitioners["source_active"], strict=True)) == {
        "Zoë Adams": True,
        "Mary-Jane O'Brien": True,
        "Tom Van der Berg": True,
        "Anh Trần": True,
        "Liam Murphy": False,  # the former practitioner, from /practitioners/inactive
    }
    dest_practitioners = reference_from_client(destination, "practitioners")
    assert dest_practitioners.columns == ["id", "name", "active", "source_id"]
    assert dest_practitioners["source_id"].null_count() == dest_practitioners.height

    reference = functools.partial(reference_from_client, destination)
    for can_create in (False, True):
        frames = build_mapping(source, reference, can_create=can_create)
        assert list(frames) == ["businesses", "practitioners", "appointment_types"]
        by_name = {e: {r["source_name"]: r for r in f.iter_rows(named=True)} for e, f in frames.items()}

        pracs = by_name["practitioners"]
        assert {n: pracs[n]["target_name"] for n in pracs if pracs[n]["action"] == "map"} == {
            "Zoë Adams": "Zoe Adams",
            "Mary-Jane O'Brien": "mary-jane o'brien",
            "Tom Van der Berg": "Tom Van  der Berg ",
        }
        assert pracs["Anh Trần"]["action"] == ("create" if can_create else "unresolved")
        assert pracs["Liam Murphy"]["action"] == "unresolved"
        assert "former" in pracs["Liam Murphy"]["note"]

        businesses = by_name["businesses"]
        assert {n: (r["action"], r["target_name"]) for n, r in businesses.items()} == {
            "Harbourside Physio Richmond": ("map", "Harbourside Physio  Richmond"),
            "Harbourside Physio Brunswick": ("map", "HARBOURSIDE PHYSIO BRUNSWICK"),
        }

        types = by_name["appointment_types"]
        assert {n: (r["action"], r["target_name"]) for n, r in types.items()} == {
            "Initial Consultation": ("map", "initial consultation"),
            "Standard Consultation": ("map", "Standard  Consultation"),
            "Telehealth Review": ("map", "Telehealth review"),
            "Pilates Class": ("map", "Pilates Class"),
            "Extended Consultation": ("create", None),
            "Hydrotherapy Group": ("create", None),
            "Remedial Massage (old)": ("create", None),  # archived at the source, still used by old visits
        }
        assert types["Remedial Massage (old)"]["source_active"] is False

        # what was proposed is valid for this destination, and every target exists there
        rows = to_rows(frames)
        assert validate(rows, reference, can_create=can_create) == []


def test_a_notebooks_table_that_lost_rows_is_refused_before_a_run(
    sandbox_clients: tuple[ClinikoClient, ClinikoClient], tmp_path: Path
) -> None:
    """``table.filter(...)`` in a notebook easily drops rows; the run would skip their records unasked."""
    source, _ = sandbox_clients
    where = {"to": f"sqlite:{tmp_path / 'clinic.db'}", "workspace": tmp_path / "workspace"}
    table = migrator.mapping(source, **where)
    # It only read: no workspace and no store were made for it, and it matched as against a new one.
    assert not (tmp_path / "workspace").exists() and not (tmp_path / "clinic.db").exists()
    assert set(table.filter(pl.col("entity") == "practitioners")["action"]) == {"create", "unresolved"}
    with pytest.raises(
        ConfigError, match=r"^No batch of this plan has completed yet, so there is nothing to top up"
    ):
        migrator.run(source, **where, top_up=True, progress=None)  # not "2 mapping rows are unresolved"
    # That refusal needed the ledger, opened for it; it leaves neither it nor the store behind.
    assert not (tmp_path / "workspace").exists() and not (tmp_path / "clinic.db").exists()
    decided = table.with_columns(
        action=pl.when(pl.col("action") == "unresolved").then(pl.lit("former")).otherwise("action")
    )
    lost = decided.filter(pl.col("source_name") != "Liam Murphy")
    for mapping in (lost, to_rows([lost])):
        with pytest.raises(MappingError) as caught:
            migrator.run(source, **where, mapping=mapping, progress=None)
        assert str(caught.value) == (
            "The mapping table has no row for 1 record of the source: practitioners Liam Murphy. Add a row for "
            "each (or start again from migrator.mapping()), so nothing is skipped unasked."
        )
    assert migrator.batches(tmp_path / "workspace").is_empty()

    result = migrator.run(source, **where, mapping=decided, progress=None)
    # with every row there, the former practitioner goes to the generic one and no appointment is skipped
    assert result.entities["practitioners"] == {
        "in_scope": 5,
        "created": 4,
        "linked": 1,
        "already_present": 0,
        "skipped": 0,
    }
    assert result.entities["individual_appointments"]["skipped"] == 0


def test_a_notebook_reconciles_a_batch_only_with_a_key_of_the_account_it_read(
    sandbox_clients: tuple[ClinikoClient, ClinikoClient], tmp_path: Path
) -> None:
    """Another account's client would compare the batch with another clinic: a plausible report, all wrong."""
    source, other = sandbox_clients
    where = {"to": f"sqlite:{tmp_path / 'clinic.db'}", "workspace": tmp_path / "workspace"}
    table = migrator.mapping(source, **where).with_columns(
        action=pl.when(pl.col("action") == "unresolved").then(pl.lit("former")).otherwise("action")
    )
    result = migrator.run(source, **where, mapping=table, progress=None)
    for wrong, said in (
        (
            other,
            f"The source client's key belongs to {other.identity().account}, but batch {result.batch_id} was ",
        ),
        (None, "reconcile needs source=, a client of the account the batch read"),
    ):
        with pytest.raises(ConfigError) as refused:
            migrator.reconcile(result.batch_id, source=wrong, workspace=where["workspace"], progress=None)  # type: ignore[arg-type]
        assert str(refused.value).startswith(said), refused.value
    assert migrator.reconcile(result.batch_id, source=source, workspace=where["workspace"], progress=None).ok


def test_an_empty_list_of_data_types_is_refused_as_an_empty_string_is(
    sandbox_clients: tuple[ClinikoClient, ClinikoClient], tmp_path: Path
) -> None:
    """A notebook's list comprehension that came out empty must not mean "everything"."""
    source, _ = sandbox_clients
    where = {"to": f"sqlite:{tmp_path / 'clinic.db'}", "workspace": tmp_path / "workspace"}
    for call in (
        lambda include: migrator.scoped_preview(source, include=include),
        lambda include: migrator.run(source, **where, include=include, progress=None),
    ):
        for include in ([], "", ()):
            with pytest.raises(ConfigError, match=r"^Choose at least one data type, from: "):
                call(include)
        with pytest.raises(ConfigError, match=r"^Unknown data type 'patient'"):
            call(["patient"])
    assert not where["workspace"].exists()  # refused before the workspace was made
    preview = migrator.scoped_preview(source, include=["individual_appointments"])
    assert set(preview.expected()) >= {"patients", "individual_appointments"}  # what it needs comes along
    assert "treatment_notes" not in preview.expected()


def test_a_mapping_or_a_pace_of_the_wrong_kind_gets_a_sentence(
    sandbox_clients: tuple[ClinikoClient, ClinikoClient], tmp_path: Path
) -> None:
    source, _ = sandbox_clients
    where = {"to": f"sqlite:{tmp_path / 'clinic.db'}", "workspace": tmp_path / "workspace"}
    table = migrator.mapping(source, **where)
    for wrong, kind in (
        (table.to_pandas(), "DataFrame"),
        (table.to_dicts(), "list"),
        (table.lazy(), "LazyFrame"),
    ):
        with pytest.raises(ConfigError) as refused:
            migrator.run(source, **where, mapping=wrong, progress=None)  # type: ignore[arg-type]
        assert str(refused.value) == (
            "mapping= takes the Polars table migrator.mapping() gives (edited or not), its rows, or a mapping "
            f"file's path; got a {kind}."
        )
    with pytest.raises(ConfigError, match=r"^requests_per_minute must be a number of requests per minute"):
        migrator.connect(source.key.secret, requests_per_minute="abc")  # type: ignore[arg-type]
    assert migrator.batches(where["workspace"]).is_empty()


def test_a_notebooks_arguments_of_the_wrong_kind_get_a_sentence(
    sandbox_clients: tuple[ClinikoClient, ClinikoClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: an int key or batch id, or scope=None, raised AttributeError from deep inside."""
    source, _ = sandbox_clients
    workspace = tmp_path / "workspace"
    monkeypatch.setenv("MIGRATOR_SOURCE_KEY", source.key.secret.get_secret_value())
    refusals = {
        lambda: migrator.connect(12345): "connect takes the API key as a string; got int.",  # type: ignore[arg-type]
        # An empty key is the key given, not the environment's: the variable is set.
        lambda: migrator.connect("  "): "The API key given is empty: pass the key, or leave key out to use "
        "MIGRATOR_SOURCE_KEY from the environment.",
        lambda: migrator.scoped_preview(source, scope=None): "scope= takes 'all', 'business:ID[,ID...]' or "  # type: ignore[arg-type]
        "'practitioner:ID[,ID...]' (or a Scope); got NoneType.",
        lambda: migrator.run(source, scope=None, workspace=workspace): "scope= takes 'all', "  # type: ignore[arg-type]
        "'business:ID[,ID...]' or 'practitioner:ID[,ID...]' (or a Scope); got NoneType.",
        lambda: migrator.reconcile(123, source=source, workspace=workspace): "A batch id is a string such as "  # type: ignore[arg-type]
        "'b20261124-093000-1a2b', as migrator.batches() lists them; got int.",
        lambda: migrator.delete_batch(123, workspace=workspace): "A batch id is a string such as "  # type: ignore[arg-type]
        "'b20261124-093000-1a2b', as migrator.batches() lists them; got int.",
    }
    for call, said in refusals.items():
        with pytest.raises(ConfigError) as refused:
            call()
        assert str(refused.value) == said
    assert not workspace.exists()
    # A notebook's tab completion offers the steps, which load on first use.
    assert {"connect", "run", "reconcile", "save_mapping", "delete_batch"} <= set(dir(migrator))


def test_a_run_refused_for_its_arguments_makes_no_workspace(
    sandbox_clients: tuple[ClinikoClient, ClinikoClient], tmp_path: Path
) -> None:
    """A mistyped argument is said before a ledger is created, so the analyst's folder stays as it was."""
    source, _ = sandbox_clients
    workspace = tmp_path / "workspace"
    for arguments, said in (
        ({"scope": "busines:1"}, "Unknown scope kind 'busines'"),
        ({"to": "clinic.db"}, "A local clinic store is named sqlite:PATH"),
        ({"mapping": [{"entity": "businesses"}]}, "mapping= takes the Polars table"),
    ):
        with pytest.raises(ConfigError, match=f"^{re.escape(said)}"):
            migrator.run(source, workspace=workspace, progress=None, **arguments)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^A local clinic store is named sqlite:PATH"):
        migrator.mapping(source, workspace=workspace, to="clinic.db")
    assert not workspace.exists()
