"""The console's settings and read models, without Streamlit."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from migrator.background import RunHandle
from migrator.cliniko.keys import parse_key
from migrator.console import (
    ConsoleSettings,
    batches_frame,
    export,
    masked,
    on_disk,
    progress_frame,
    running_in_background,
    time_left,
)
from migrator.destinations.local import LocalStore
from migrator.errors import ConfigError
from migrator.ledger import Ledger, StageProgress
from migrator.plan import Plan


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    settings = ConsoleSettings.from_env(
        {"MIGRATOR_WORKSPACE": str(tmp_path), "MIGRATOR_REQUESTS_PER_MINUTE": "0"}
    )
    assert settings.workspace == tmp_path.resolve() and settings.requests_per_minute == 0
    assert settings.store_target == f"sqlite:{tmp_path.resolve() / 'clinic.db'}"
    assert ConsoleSettings.from_env({}).requests_per_minute == 200
    with pytest.raises(ConfigError, match="must be a number of requests per minute; got 'fast'"):
        ConsoleSettings.from_env({"MIGRATOR_REQUESTS_PER_MINUTE": "fast"})
    with pytest.raises(ConfigError, match="cannot be negative"):
        ConsoleSettings.from_env({"MIGRATOR_REQUESTS_PER_MINUTE": "-5"})
    with pytest.raises(ConfigError, match="0 for unpaced"):
        ConsoleSettings.from_env({"MIGRATOR_REQUESTS_PER_MINUTE": "nan"})
    with pytest.raises(ConfigError, match=r"is 1\.5 requests a minute; at under 10 even a small clinic"):
        ConsoleSettings.from_env({"MIGRATOR_REQUESTS_PER_MINUTE": " 1.5"})
    assert ConsoleSettings.from_env({"MIGRATOR_REQUESTS_PER_MINUTE": "10"}).requests_per_minute == 10


def test_a_masked_key_shows_no_character_of_the_secret() -> None:
    raw = "MSabcdef0123456789abcdef0123456789-uk1"
    shown = masked(parse_key(raw))
    assert shown.startswith("•••• uk1 key (fingerprint ")
    body = raw.split("-")[0]
    assert not any(body[i : i + 4] in shown for i in range(len(body) - 3))


def stage(name: str, done: int, **actions: int) -> StageProgress:
    return StageProgress(
        name, done, done, actions.get("created", done), 0, 0, actions.get("skipped", 0), datetime.now(UTC)
    )


def test_progress_bars_fill_as_stages_finish() -> None:
    progress = [stage("businesses", 3), stage("patients", 50)]
    frame = progress_frame(
        progress,
        {"patients": 200, "treatment_notes": 80},
        stages=["businesses", "patients", "treatment_notes"],
    )
    rows = {r["stage"]: r for r in frame.iter_rows(named=True)}
    assert (rows["businesses"]["fraction"], rows["businesses"]["finished"]) == (1.0, True)
    assert (rows["patients"]["fraction"], rows["patients"]["finished"]) == (0.25, False)
    assert (rows["treatment_notes"]["started"], rows["treatment_notes"]["fraction"]) == (False, 0.0)
    done = progress_frame(
        progress, {"patients": 200}, stages=["businesses", "patients", "treatment_notes"], finished=True
    )
    assert done["fraction"].to_list() == [1.0, 1.0, 1.0] and done["created"].sum() == 53
    # A stage the ledger says is finished is full at once, before the next one reports.
    last = dataclasses.replace(stage("patients", 180), finished=True)
    read = progress_frame(
        [progress[0], last], {"patients": 200}, stages=["businesses", "patients", "treatment_notes"]
    )
    assert read.filter(pl.col("stage") == "patients").row(0, named=True)["fraction"] == 1.0


def test_the_run_page_says_how_long_the_stages_left_take_at_the_keys_pace(tmp_path: Path) -> None:
    stages = ["businesses", "patients", "individual_appointments", "patient_attachments"]
    expected = {"patients": 1_000, "individual_appointments": 20_000, "patient_attachments": 500}
    frame = progress_frame([stage("businesses", 3), stage("patients", 250)], expected, stages=stages)
    with Ledger(tmp_path) as ledger:
        local = ledger.create_batch(source_account="A", destination="sqlite:/x.db", plan={})
        cliniko = ledger.create_batch(source_account="A", destination="cliniko:7", plan={})
        top_up = ledger.create_batch(source_account="A", destination="sqlite:/x.db", plan={})
        ledger.audit(
            "top_up",
            actor="cli",
            batch_id=top_up.id,
            detail={"of": local.id, "since": "2026-11-24T00:00:00+00:00"},
        )

        # Reads: 750 patients left (8 pages), 20,000 appointments (200), 500 files (5): 213 requests.
        assert time_left(ledger, local, frame, 200) == (
            "About 2 minutes left at the key's pace (200 requests a minute)."
        )
        # Into a Cliniko account each record left is a write, a file two: 750 + 20,000 + 1,000 = 21,750.
        assert time_left(ledger, cliniko, frame, 200) == (
            "About 109 minutes left at the key's pace (200 requests a minute)."
        )
        # The cancellations and archives the preview counted go with their records: of 100 archived patients,
        # 750 of 1,000 patients are left, so 75; all 2,000 cancelled appointments. 21,750 + 2,075 = 23,825.
        follow_ups = {"patients": 100, "individual_appointments": 2_000}
        assert time_left(ledger, cliniko, frame, 200, follow_ups) == (
            "About 120 minutes left at the key's pace (200 requests a minute)."
        )
        assert time_left(ledger, local, frame, 200, follow_ups) == (  # a local store has nothing to send
            "About 2 minutes left at the key's pace (200 requests a minute)."
        )
        # A re-run into Cliniko that has created none of 250 patients writes and downloads few: reads set it.
        rerun = progress_frame(
            [stage("businesses", 3), stage("patients", 250, created=0)], expected, stages=stages
        )
        assert time_left(ledger, cliniko, rerun, 200) == (
            "About 2 minutes left at the key's pace (200 requests a minute)."  # the 213 pages, no file
        )
        assert time_left(ledger, local, frame, 0) is None  # unpaced: as fast as Cliniko answers
        assert time_left(ledger, top_up, frame, 200) is None  # reads only what changed, not the sizes
        unknown = progress_frame([stage("businesses", 3)], {}, stages=stages)
        assert time_left(ledger, local, unknown, 200) is None  # sizes unknown: another process's run
        nearly = progress_frame([stage("businesses", 3), stage("patients", 990)], expected, stages=stages[:2])
        assert time_left(ledger, local, nearly, 200) == "About a minute left at the key's pace."


def test_batches_say_their_age_and_why_they_cannot_be_deleted(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        fresh = ledger.create_batch(source_account="A", destination="sqlite:/x.db", plan={})
        ledger.save_counts(fresh.id)
        ledger.set_status(fresh.id, "completed")
        batches = ledger.batches()
    frame = batches_frame(batches, now=batches[0].created_at + timedelta(hours=3))
    row = frame.row(0, named=True)
    assert (row["age"], row["status"], row["deletable"]) == ("3 h ago", "completed", True)
    old = batches_frame(batches, now=batches[0].created_at + timedelta(days=3)).row(0, named=True)
    assert old["deletable"] is False and "within 48 hours" in old["why"] and old["age"] == "3 days ago"
    relied_on = batches_frame(
        batches, now=batches[0].created_at + timedelta(hours=3), blocked={fresh.id: "Others rely on it."}
    ).row(0, named=True)
    assert (relied_on["deletable"], relied_on["why"]) == (False, "Others rely on it.")
    # Too old says so first: a blocker only matters to a batch that could otherwise go.
    too_old = batches_frame(
        batches, now=batches[0].created_at + timedelta(days=3), blocked={fresh.id: "Others rely on it."}
    ).row(0, named=True)
    assert "within 48 hours" in too_old["why"]


def test_exports_keep_the_frame() -> None:
    import polars as pl

    frame = pl.DataFrame({"entity": ["patients"], "skipped": [2]})
    assert export(frame, "csv") == b"entity,skipped\npatients,2\n"
    assert pl.read_parquet(export(frame, "parquet")).equals(frame)
    with pytest.raises(ValueError, match="unknown export kind"):
        export(frame, "xlsx")


def test_runs_in_background_are_named_in_one_sentence(tmp_path: Path) -> None:
    def handle(batch_id: str | None, account: str = "Harbourside *Physio*") -> RunHandle:
        plan = Plan(source_account=account, source_shard="au1", destination="sqlite:x.db")
        return RunHandle(plan=plan, workspace=tmp_path, resume_id=batch_id)

    assert running_in_background([]) is None
    assert running_in_background([handle("b1")]) == (
        "Batch b1 is running in the background, from Harbourside \\*Physio\\*: follow or stop it on the Run page."
    )
    assert running_in_background([handle(None)]).startswith("A run is running")  # type: ignore[union-attr]
    assert running_in_background([handle("b1"), handle(None)]) == (
        "2 runs are going on in the background (b1, one starting): follow or stop them on the Run page."
    )


def test_on_disk_changes_with_every_commit_to_the_ledger_or_a_store_and_not_with_reads(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path / "workspace")
    store = LocalStore(tmp_path / "clinic.db", ledger)
    elsewhere = f"sqlite:{tmp_path / 'gone.db'}"
    destinations = [store.describe(), elsewhere, "cliniko:12"]
    before = on_disk(ledger, destinations)
    # The ledger, the store, and the missing store by its path alone; a Cliniko account has no file.
    assert [s[0] for s in before] == sorted(
        [str(ledger.path), str(tmp_path / "clinic.db"), str(tmp_path / "gone.db")]
    )
    assert ledger.batches() == [] and store.count("patients") == 0
    assert on_disk(ledger, destinations) == before
    # A commit from another connection changes it; so does one that leaves the size and the
    # modification time as they were (a clock's tick can hold two commits): the change counter tells.
    path = tmp_path / "clinic.db"
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO patients (source_id, data) VALUES ('1', '{}')")
    after_insert = on_disk(ledger, destinations)
    assert after_insert != before
    stat = path.stat()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE patients SET data = '[]'")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    after_store = on_disk(ledger, destinations)
    assert after_store != after_insert
    ledger.create_batch(source_account="H", destination=store.describe(), plan={})
    assert on_disk(ledger, destinations) != after_store
    ledger.close()
