"""python -m migrator mapping / run / batches / delete-batch, as support staff run them headless."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from migrator.destinations.local import LocalStore
from migrator.ledger import Ledger
from tests.conftest import RunningSandbox, without_file_override
from tests.test_background import plan_for, stopped_batch
from tests.test_cli import assert_one_clean_line
from tests.test_resume import into_store, setup_workspace


def cli(sandbox: RunningSandbox, *args: str):
    """The CLI with the source key, unpaced: the sandbox has no rate limit, and pacing has tests of its own."""
    return sandbox.cli(*args, key=sandbox.key("source"), pace="0")


def test_run_batches_and_delete_from_the_command_line(tiny_sandbox: RunningSandbox, tmp_path: Path) -> None:
    mapping = setup_workspace(tiny_sandbox, tmp_path)
    target = ("--to", f"sqlite:{tmp_path / 'clinic.db'}", "--workspace", str(tmp_path))

    refused = cli(tiny_sandbox, "run", *target, "--json")  # auto-matched: former practitioners undecided
    assert refused.returncode == 2
    assert "unresolved" in refused.stderr and "Choose an action" in refused.stderr

    done = cli(tiny_sandbox, "run", *target, "--mapping", str(mapping), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"batch_id", "entities", "requests", "seconds"}
    for entity, row in result["entities"].items():
        assert row["in_scope"] == row["created"] + row["linked"] + row["already_present"] + row["skipped"], (
            entity
        )
    assert result["entities"]["patients"]["in_scope"] == sum(
        tiny_sandbox.totals()[k] for k in ("patients", "patients/archived")
    )

    listed = json.loads(cli(tiny_sandbox, "batches", "--workspace", str(tmp_path), "--json").stdout)
    assert [(b["id"], b["status"], b["deletable"]) for b in listed] == [
        (result["batch_id"], "completed", True)
    ]

    dry = cli(tiny_sandbox, "delete-batch", result["batch_id"], "--dry-run", "--workspace", str(tmp_path))
    assert (
        dry.returncode == 0
        and f"{result['entities']['patients']['created']} created by the batch" in dry.stdout
    )
    unconfirmed = cli(tiny_sandbox, "delete-batch", result["batch_id"], "--workspace", str(tmp_path))
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr

    # Age the batch past 48 hours: deletion is refused with the reason, nothing is touched.
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute("UPDATE batches SET created_at = '2020-01-01T00:00:00+00:00'")
    for confirm in ("--yes", "--dry-run"):  # a dry run of a deletion that cannot happen says so, too
        old = cli(tiny_sandbox, "delete-batch", result["batch_id"], confirm, "--workspace", str(tmp_path))
        assert old.returncode == 1, old.stderr  # refused, not bad input
        assert "within 48 hours" in old.stderr and old.stderr.count("\n") == 1 and old.stdout == ""
    with sqlite3.connect(tmp_path / "clinic.db") as conn:
        assert conn.execute("SELECT count(*) FROM patients WHERE batch_id IS NOT NULL").fetchone()[0] > 0


def test_deleting_a_batch_a_later_one_found_already_present_says_so_first(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """The later batch created nothing: deleting the earlier one takes its records, and both sides say so."""
    mapping = setup_workspace(tiny_sandbox, tmp_path)
    target = into_store(tmp_path, mapping)
    first, second = (json.loads(cli(tiny_sandbox, "run", *target, "--json").stdout) for _ in range(2))
    assert not any(row["created"] for row in second["entities"].values())
    nothing = cli(tiny_sandbox, "delete-batch", second["batch_id"], "--dry-run", "--workspace", str(tmp_path))
    assert nothing.stdout.splitlines() == [
        f"Deleting batch {second['batch_id']} removes no record: it created nothing that is still there, and is "
        "only marked deleted in the ledger."
    ]

    dry = cli(tiny_sandbox, "delete-batch", first["batch_id"], "--dry-run", "--workspace", str(tmp_path))
    assert dry.returncode == 0, dry.stderr
    (said,) = [
        line for line in dry.stdout.splitlines() if line.startswith(f"Batch {second['batch_id']} found ")
    ]
    assert said.endswith("they go too, and running that batch's plan again afterwards brings them back anew.")
    assert f"{first['entities']['patients']['created']:,} patients" in said

    deleted = cli(tiny_sandbox, "delete-batch", first["batch_id"], "--yes", "--workspace", str(tmp_path))
    assert deleted.returncode == 0 and said in deleted.stdout.splitlines()
    review = tmp_path / "review"
    checked = cli(
        tiny_sandbox, "reconcile", second["batch_id"], "--out", str(review), "--workspace", str(tmp_path)
    )
    gone = sum(row["already_present"] for row in second["entities"].values()) - sum(
        row["linked"] for row in first["entities"].values()
    )
    assert gone > 0
    assert (
        f"Removed since: {gone:,} records the batch created, linked or found already present are no longer "
        "expected in the destination (deleted in Cliniko and taken out by a top-up, or deleted with a batch: "
        "running the plan again brings back what a deletion took, and the balances it held)."
    ) in checked.stdout.splitlines()
    # Its patients went with the deletion: their balances are not expected either, as the counts say.
    assert "Balances: 0 patients checked against Cliniko's invoices; 0 differ." in checked.stdout.splitlines()
    assert checked.returncode == 0, checked.stdout
    # As the sentences say: the same plan again brings them back, and that batch reconciles.
    third = json.loads(cli(tiny_sandbox, "run", *target, "--json").stdout)
    assert third["entities"]["patients"]["created"] == first["entities"]["patients"]["created"]
    again = cli(tiny_sandbox, "reconcile", third["batch_id"], "--workspace", str(tmp_path))
    assert again.returncode == 0 and again.stdout.rstrip().endswith("Everything reconciles."), again.stdout


def test_a_run_says_what_it_skipped_by_reason_and_where_each_sentence_is(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    import csv

    mapping = setup_workspace(tiny_sandbox, tmp_path)
    rows = json.loads(mapping.read_text())
    for row in rows["mappings"]:  # former practitioners excluded: their appointments and notes are skipped
        if row["action"] == "former":
            row["action"] = "exclude"
    mapping.write_text(json.dumps(rows))
    target = ("--to", f"sqlite:{tmp_path / 'clinic.db'}", "--workspace", str(tmp_path))

    done = cli(tiny_sandbox, "run", *target, "--mapping", str(mapping))
    assert done.returncode == 0, done.stderr
    batch_id = done.stdout.split(":", 1)[0].removeprefix("Batch ")
    (said,) = [line for line in done.stdout.splitlines() if line.startswith("Skipped")]
    review = tmp_path / "review"
    assert cli(
        tiny_sandbox, "reconcile", batch_id, "--out", str(review), "--workspace", str(tmp_path)
    ).returncode in (0, 1)
    with (review / "skipped.csv").open() as f:
        skipped = list(csv.DictReader(f))
    excluded = sum(row["reason_code"] == "practitioner_excluded" for row in skipped)
    assert excluded > 0
    assert said.startswith(f"Skipped {len(skipped):,} (") and f"{excluded:,} practitioner_excluded" in said
    assert f"reconcile {batch_id} --out DIR" in said
    quiet = cli(tiny_sandbox, "run", *target, "--mapping", str(mapping), "--json")  # JSON stays one object
    assert quiet.returncode == 0 and set(json.loads(quiet.stdout)) == {
        "batch_id",
        "entities",
        "requests",
        "seconds",
    }


def test_paths_and_commands_that_do_not_fit_are_refused_in_one_line(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A path the file system refuses, or a Cliniko-only step on a local batch: a sentence, no traceback."""
    mapping = setup_workspace(tiny_sandbox, tmp_path)
    workspace = ("--workspace", str(tmp_path))
    done = cli(
        tiny_sandbox, "run", "--to", f"sqlite:{tmp_path / 'clinic.db'}", *workspace, "--mapping", str(mapping)
    )
    assert done.returncode == 0, done.stderr
    (batch,) = json.loads(cli(tiny_sandbox, "batches", *workspace, "--json").stdout)

    # The mapping file holds the decisions made in it: writing the auto-matched tables again needs --force.
    edited = mapping.read_text()
    again = ("mapping", "--out", str(mapping), "--to", f"sqlite:{tmp_path / 'clinic.db'}", *workspace)
    kept = cli(tiny_sandbox, *again)
    assert kept.returncode == 2 and "already exists, perhaps with decisions made in it" in kept.stderr
    assert_one_clean_line(kept.stderr)
    assert mapping.read_text() == edited
    assert cli(tiny_sandbox, *again, "--force").returncode == 0
    assert '"unresolved"' in mapping.read_text()  # auto-matched afresh: the former practitioners undecided
    mapping.write_text(edited)

    for command, said in (
        (("go-live", batch["id"], "--yes"), "the local store sends none"),
        (("opening-balances", batch["id"]), f"reconcile {batch['id']} compares the balances"),
    ):
        refused = cli(tiny_sandbox, *command, *workspace)
        assert refused.returncode == 2, refused.stderr
        assert (
            f"Batch {batch['id']} went into the local clinic store" in refused.stderr
            and said in refused.stderr
        )
        assert_one_clean_line(refused.stderr)

    # An empty list of data types (a shell variable that was never set) is refused, not read as "all".
    for empty in ("", ","):
        refused = cli(
            tiny_sandbox, "run", "--to", f"sqlite:{tmp_path / 'clinic.db'}", *workspace, "--include", empty
        )
        assert refused.returncode == 2 and "Choose at least one data type" in refused.stderr, refused.stderr
        assert_one_clean_line(refused.stderr)
    assert len(json.loads(cli(tiny_sandbox, "batches", *workspace, "--json").stdout)) == 1

    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    for command, said in (
        (("reconcile", batch["id"], "--out", str(a_file), *workspace), "a file is already there"),
        (
            ("mapping", "--out", str(tmp_path / "m.json"), "--workspace", str(a_file / "ws")),
            "not a directory",
        ),
        (
            ("run", "--to", f"sqlite:{a_file / 'clinic.db'}", *workspace, "--mapping", str(mapping)),
            "a file is already there",
        ),
        (("batches", "--workspace", str(a_file)), "a file is already there"),  # not "no batches yet"
    ):
        refused = cli(tiny_sandbox, *command)
        assert refused.returncode == 2, refused.stderr
        assert f"Cannot use {a_file}" in refused.stderr and said in refused.stderr
        assert_one_clean_line(refused.stderr)
    assert a_file.read_text() == "not a folder"

    # A store or ledger path that names a folder, another kind of file or a place no file can be made.
    (tmp_path / "ws" / "ledger.db").mkdir(parents=True)
    for command, said in (
        (
            ("run", "--to", f"sqlite:{a_file}", *workspace),
            f"{a_file} as the clinic store: it is a file of another",
        ),
        (
            ("mapping", "--out", str(tmp_path / "m.json"), "--to", f"sqlite:{tmp_path}", *workspace),
            "a folder",
        ),
        (("run", "--to", "sqlite:/proc/clinic.db", *workspace), "no database file can be opened"),
        (("batches", "--workspace", str(tmp_path / "ws")), "ledger.db as the ledger: it is a folder"),
    ):
        refused = cli(tiny_sandbox, *command)
        assert refused.returncode == 2, refused.stderr
        assert said in refused.stderr
        assert_one_clean_line(refused.stderr)
    assert a_file.read_text() == "not a folder"

    # A mistyped workspace is not made by reading it.
    nowhere = tmp_path / "mistyped"
    listed = cli(tiny_sandbox, "batches", "--workspace", str(nowhere))
    assert listed.returncode == 0 and "holds no ledger" in listed.stdout, listed.stderr
    refused = cli(tiny_sandbox, "delete-batch", batch["id"], "--dry-run", "--workspace", str(nowhere))
    assert (
        refused.returncode == 2
        and f"There is no batch {batch['id']}: {nowhere} holds no ledger" in refused.stderr
    )
    assert not nowhere.exists()

    # Setting up a store that has its set-up already adds nothing, and says so.
    again = tiny_sandbox.cli(
        "setup-store",
        "--to",
        f"sqlite:{tmp_path / 'clinic.db'}",
        *workspace,
        dest_key=tiny_sandbox.key("destination"),
        pace="0",
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Nothing to set up: sqlite:") and "already has" in again.stdout

    # A mapping written over a folder names that folder, not the temporary file beside it.
    refused = cli(
        tiny_sandbox,
        "mapping",
        "--out",
        str(tmp_path),
        "--to",
        f"sqlite:{tmp_path / 'clinic.db'}",
        *workspace,
    )
    assert refused.returncode == 2 and f"Cannot use {tmp_path}: is a directory." in refused.stderr, (
        refused.stderr
    )
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.*.tmp"))

    # An output file's missing folder is made, as reconcile --out makes its own.
    deep = tmp_path / "for" / "review" / "mapping.json"
    wrote = cli(
        tiny_sandbox, "mapping", "--out", str(deep), "--to", f"sqlite:{tmp_path / 'clinic.db'}", *workspace
    )
    assert wrote.returncode == 0, wrote.stderr
    assert len(json.loads(deep.read_text())["mappings"]) == len(json.loads(mapping.read_text())["mappings"])

    # Mapping only reads: a mistyped --workspace leaves no new workspace behind.
    for where in (
        ("--workspace", str(tmp_path / "wrokspace" / "a" / "b")),
        ("--to", f"sqlite:{tmp_path / 'st' / 'x' / 'c.db'}"),
    ):
        typo = cli(tiny_sandbox, "mapping", "--out", str(tmp_path / "typo.json"), "--force", *where)
        assert typo.returncode == 0, typo.stderr
        assert (tmp_path / "typo.json").is_file()
        assert not (tmp_path / "wrokspace").exists() and not (tmp_path / "st").exists()


def test_a_refused_run_leaves_no_store_or_folder_it_made(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Beside a workspace that was there (its ledger stays), and in folders made for a new one."""
    mapping = setup_workspace(tiny_sandbox, tmp_path / "ws")
    undecided = json.loads(mapping.read_text())
    undecided["mappings"][0]["action"] = "unresolved"
    mapping.write_text(json.dumps(undecided))
    refused = cli(
        tiny_sandbox,
        "run",
        "--to",
        f"sqlite:{tmp_path / 'ws' / 'new' / 'clinic.db'}",
        "--workspace",
        str(tmp_path / "ws"),
        "--mapping",
        str(mapping),
    )
    assert refused.returncode == 2 and "unresolved" in refused.stderr, refused.stderr
    assert not (tmp_path / "ws" / "new").exists() and (tmp_path / "ws" / "ledger.db").is_file()
    nowhere = cli(
        tiny_sandbox,
        "run",
        "--workspace",
        str(tmp_path / "a" / "b" / "c"),
        "--mapping",
        str(tmp_path / "nope.json"),
    )
    assert nowhere.returncode == 2, nowhere.stderr
    assert not (tmp_path / "a").exists()


def test_a_non_administrator_source_key_is_refused(tiny_sandbox: RunningSandbox, tmp_path: Path) -> None:
    result = tiny_sandbox.cli(
        "run",
        "--to",
        f"sqlite:{tmp_path / 'clinic.db'}",
        "--workspace",
        str(tmp_path),
        key=tiny_sandbox.key("source_non_admin"),
    )
    assert result.returncode == 2
    assert "not an administrator" in result.stderr
    assert (
        not (tmp_path / "ledger.db").exists()
        or sqlite3.connect(tmp_path / "ledger.db").execute("SELECT count(*) FROM batches").fetchone()[0] == 0
    )


def test_a_refused_run_in_a_new_workspace_leaves_no_files_behind(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Refusals said after the ledger is opened (a filter id, a top-up of nothing) take back what it made."""
    fresh = tmp_path / "fresh"
    for refusal, said in (
        (("--top-up",), "No batch of this plan has completed yet"),
        (("--filter", "business:1"), "has no business with the id 1"),
    ):
        refused = cli(tiny_sandbox, "run", "--workspace", str(fresh), *refusal)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
        assert_one_clean_line(refused.stderr, tiny_sandbox.key("source"))
        assert not fresh.exists()
    # Beside a ledger that records batches, nothing is taken away.
    mapping = setup_workspace(tiny_sandbox, tmp_path)
    done = cli(tiny_sandbox, "run", "--workspace", str(tmp_path), "--mapping", str(mapping), "--json")
    assert done.returncode == 0, done.stderr
    again = cli(tiny_sandbox, "run", "--workspace", str(tmp_path), "--filter", "business:1")
    assert again.returncode == 2
    assert (tmp_path / "ledger.db").exists() and (tmp_path / "clinic.db").exists()


def test_setting_up_a_new_workspace_refused_or_stopped_leaves_no_files_behind(
    tiny_sandbox: RunningSandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """QA: a wrong destination key, or Ctrl+C before anything is set up, leaves no ledger, store or folder;
    once a store has its set-up, Ctrl+C leaves it as it was and says nothing was changed."""
    from migrator import cli as cli_module
    from migrator import setup

    fresh = tmp_path / "new" / "ws"
    refused = tiny_sandbox.cli(
        "setup-store", "--workspace", str(fresh), dest_key="MS" + "0" * 40 + "-uk1", pace="0"
    )
    assert refused.returncode == 1 and "did not accept the destination API key" in refused.stderr, (
        refused.stderr
    )
    assert not (tmp_path / "new").exists()

    monkeypatch.setenv("MIGRATOR_API_URL", tiny_sandbox.url_template)
    monkeypatch.setenv("MIGRATOR_DEST_KEY", tiny_sandbox.key("destination"))
    monkeypatch.setenv("MIGRATOR_REQUESTS_PER_MINUTE", "0")
    real = setup.copy_clinic_setup

    def stopped(store: Any, client: Any) -> dict[str, int]:
        assert store.path.is_file()  # made, and then Ctrl+C
        raise KeyboardInterrupt

    monkeypatch.setattr(setup, "copy_clinic_setup", stopped)
    assert cli_module.main(["setup-store", "--workspace", str(fresh)]) == 130
    assert capsys.readouterr().err == "error: interrupted; nothing was changed.\n"
    assert not (tmp_path / "new").exists()

    monkeypatch.setattr(setup, "copy_clinic_setup", real)
    assert cli_module.main(["setup-store", "--workspace", str(fresh)]) == 0
    assert capsys.readouterr().out.startswith("Set up ")
    kept = (fresh / "clinic.db").read_bytes()
    monkeypatch.setattr(setup, "copy_clinic_setup", stopped)
    assert cli_module.main(["setup-store", "--workspace", str(fresh)]) == 130
    assert capsys.readouterr().err == "error: interrupted; nothing was changed.\n"
    assert (fresh / "clinic.db").read_bytes() == kept and (fresh / "ledger.db").is_file()


def test_a_filter_naming_no_record_of_the_source_is_refused(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A mistyped id is bad input, not a migration that brings nothing."""
    mapping = setup_workspace(tiny_sandbox, tmp_path)
    rows = json.loads(mapping.read_text())["mappings"]
    real = next(r["source_id"] for r in rows if r["entity"] == "practitioners")
    target = into_store(tmp_path, mapping)

    typo = cli(tiny_sandbox, "run", *target, "--filter", f"practitioner:{real},1")
    assert typo.returncode == 2, typo.stderr
    assert typo.stderr.count("\n") == 1
    assert (
        "Harbourside Physio has no practitioner with the id 1, so that id would bring nothing (mistyped?)"
        in typo.stderr
    )
    assert real not in typo.stderr and tiny_sandbox.key("source") not in typo.stderr
    two = cli(tiny_sandbox, "run", *target, "--filter", "business:1,2")
    assert (
        two.returncode == 2
        and "businesses with the ids 1, 2, so the filter would bring nothing;" in two.stderr
    )
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 0


def test_a_filter_id_the_mapping_does_not_list_is_looked_up(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Ids the mapping lists cost nothing; another one costs one request, and a real one is accepted."""
    from migrator.plan import MappingRow, Scope
    from migrator.workflow import make_plan, open_local_store, verify_source

    mapping = setup_workspace(tiny_sandbox, tmp_path)
    rows = [MappingRow.model_validate(r) for r in json.loads(mapping.read_text())["mappings"]]
    businesses = [r.source_id for r in rows if r.entity == "businesses"]
    ledger, store = open_local_store(f"sqlite:{tmp_path / 'clinic.db'}", tmp_path)
    with tiny_sandbox.client() as client:
        identity = verify_source(client)
        before = client.stats.requests
        plan = make_plan(
            client, identity, store, scope=Scope.parse(f"business:{businesses[0]}"), mappings=rows
        )
        assert client.stats.requests == before
        assert plan.scope.ids == [businesses[0]]

        fewer = [r for r in rows if r.source_id != businesses[1]]  # rows as a list are taken as they are
        plan = make_plan(
            client, identity, store, scope=Scope.parse(f"business:{businesses[1]}"), mappings=fewer
        )
        assert client.stats.requests == before + 1
        assert plan.scope.ids == [businesses[1]]
    ledger.close()


def test_a_mapping_file_missing_a_source_record_is_refused(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A row deleted by hand would skip that business's appointments unasked: refused, naming it."""
    mapping = setup_workspace(tiny_sandbox, tmp_path)
    data = json.loads(mapping.read_text())
    business = next(r for r in data["mappings"] if r["entity"] == "businesses")
    others = [r for r in data["mappings"] if r is not business]
    target = ("--to", f"sqlite:{tmp_path / 'clinic.db'}", "--workspace", str(tmp_path), "--mapping")

    for rows, what in (
        (others, f"has no row for 1 record of the source: businesses {business['source_name']}."),
        ([], f"has no row for {len(data['mappings'])} records of the source: businesses"),
    ):
        mapping.write_text(json.dumps({"version": 1, "mappings": rows}))
        refused = cli(tiny_sandbox, "run", *target, str(mapping))
        assert refused.returncode == 2, refused.stderr
        assert f"The mapping file {mapping} {what}" in refused.stderr and "mapping --out" in refused.stderr
        assert_one_clean_line(refused.stderr)
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 0

    # The whole file, as an editor that writes a byte-order mark saves it, runs.
    mapping.write_text(json.dumps(data), encoding="utf-8-sig")
    done = cli(tiny_sandbox, "run", *target, str(mapping), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["entities"]["businesses"]["skipped"] == 0


def test_delete_batch_refuses_while_a_later_batch_relies_on_it(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    from migrator.destinations.local import LocalStore
    from migrator.ledger import Ledger

    ledger = Ledger(tmp_path)
    store = LocalStore(tmp_path / "clinic.db", ledger)
    first = ledger.create_batch(source_account="H", destination=store.describe(), plan={}).id
    later = ledger.create_batch(source_account="H", destination=store.describe(), plan={}).id
    with ledger.transaction():
        (former,) = store.insert(
            "practitioners", [{"source_id": "9", "first_name": "Former"}], batch_id=first, source_account="H"
        )
        store.insert(
            "unavailable_blocks",
            [{"source_id": "1", "practitioner_id": former}],
            batch_id=later,
            source_account="H",
        )
    for batch_id in (first, later):
        ledger.set_status(batch_id, "completed")
    ledger.close()

    sentence = (
        f"Batch {first} cannot be deleted while other records rely on what it created (in batch "
        f"{later}, 1 unavailable block would lose its practitioner): delete batch {later} first, or keep this one."
    )
    listed = cli(tiny_sandbox, "batches", "--json", "--workspace", str(tmp_path))
    verdicts = {b["id"]: (b["deletable"], b["why"]) for b in json.loads(listed.stdout)}
    assert verdicts[first] == (False, sentence) and verdicts[later][0] is True
    human = cli(tiny_sandbox, "batches", "--workspace", str(tmp_path)).stdout.splitlines()
    assert f"    {sentence}" in human and len(human) == 3  # the two batches, and why the first is kept
    dry = cli(tiny_sandbox, "delete-batch", first, "--dry-run", "--workspace", str(tmp_path))
    assert (dry.returncode, dry.stderr) == (1, f"error: {sentence}\n")  # refused: says so, and exits 1
    assert dry.stdout.startswith(f"Deleting batch {first} removes 1 record:")  # what it would remove, still
    refused = cli(tiny_sandbox, "delete-batch", first, "--yes", "--workspace", str(tmp_path))
    assert refused.returncode == 1 and refused.stderr == f"error: {sentence}\n"
    with sqlite3.connect(tmp_path / "clinic.db") as conn:
        assert conn.execute("SELECT count(*) FROM practitioners").fetchone()[0] == 1
    assert cli(tiny_sandbox, "delete-batch", later, "--yes", "--workspace", str(tmp_path)).returncode == 0
    assert cli(tiny_sandbox, "delete-batch", first, "--yes", "--workspace", str(tmp_path)).returncode == 0
    again = cli(tiny_sandbox, "delete-batch", first, "--yes", "--workspace", str(tmp_path))
    assert (again.returncode, again.stdout, again.stderr) == (
        1,
        "",
        f"error: Batch {first} has already been deleted.\n",
    )


def test_a_workspace_keeps_its_own_store_and_refuses_another_workspaces(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """``--workspace DIR`` alone puts the store in DIR; a second ledger on a store is refused, not crashed."""
    first, second = tmp_path / "first", tmp_path / "second"
    mapping = setup_workspace(tiny_sandbox, first)
    done = cli(tiny_sandbox, "run", "--workspace", str(first), "--mapping", str(mapping), "--json")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)["entities"]["patients"]["created"]
    with sqlite3.connect(first / "clinic.db") as conn:  # the store setup-store gave, in the workspace
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] == created > 0

    store = ("--to", f"sqlite:{first / 'clinic.db'}", "--workspace", str(second))
    refused = cli(tiny_sandbox, "run", *store, "--mapping", str(mapping))
    assert refused.returncode == 2
    assert_one_clean_line(refused.stderr, tiny_sandbox.key("source"))
    batch_id = json.loads(done.stdout)["batch_id"]
    assert f"was written by batch {batch_id}, which the ledger at" in refused.stderr
    assert "belongs to another workspace" in refused.stderr
    assert not (second / "ledger.db").exists()  # no batch started, and the ledger opened to say so is gone
    with sqlite3.connect(first / "clinic.db") as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] == created


def test_a_moved_or_copied_workspace_carries_on_with_its_own_store(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """The ledger names its batches' store by path: moved or copied with its workspace, it follows the store.

    A copy made to try things on is its own: running in it leaves the original as it was.
    """
    old, new, copy = tmp_path / "old", tmp_path / "moved" / "ws", tmp_path / "copy"
    mapping = setup_workspace(tiny_sandbox, old)
    done = cli(tiny_sandbox, "run", "--workspace", str(old), "--mapping", str(mapping), "--json")
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout)
    new.parent.mkdir()
    shutil.move(old, new)

    for workspace in (new, copy):
        if workspace == copy:
            shutil.copytree(new, copy)  # while the store its ledger names is still there
        again = cli(
            tiny_sandbox,
            "run",
            "--workspace",
            str(workspace),
            "--mapping",
            str(workspace / mapping.name),
            "--json",
        )
        assert again.returncode == 0, again.stderr
        entities = json.loads(again.stdout)["entities"]
        assert all(e["created"] == 0 for e in entities.values())
        assert entities["patients"]["already_present"] == first["entities"]["patients"]["created"] > 0
        listed = json.loads(cli(tiny_sandbox, "batches", "--workspace", str(workspace), "--json").stdout)
        assert len(listed) == (2 if workspace == new else 3)
        assert {b["destination"] for b in listed} == {f"sqlite:{(workspace / 'clinic.db').resolve()}"}
        with sqlite3.connect(workspace / "ledger.db") as conn:
            moves = [
                json.loads(d)
                for (d,) in conn.execute("SELECT detail FROM audit WHERE action = 'store_moved'")
            ]
        assert moves[-1] == {
            "from": f"sqlite:{((old if workspace == new else new) / 'clinic.db').resolve()}",
            "to": f"sqlite:{(workspace / 'clinic.db').resolve()}",
            "copy": workspace == copy,
        }
    # The original workspace still names its own store only, and holds its two batches.
    with sqlite3.connect(new / "ledger.db") as conn:
        assert [d for (d,) in conn.execute("SELECT destination FROM batches")] == [
            f"sqlite:{(new / 'clinic.db').resolve()}"
        ] * 2


def test_deleting_or_reconciling_in_a_fresh_copy_of_a_workspace_acts_on_the_copy_only(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A copy nothing has run in yet still names the original's store: a deletion there must not reach it."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    mapping = setup_workspace(tiny_sandbox, original)
    done = cli(tiny_sandbox, "run", "--workspace", str(original), "--mapping", str(mapping), "--json")
    assert done.returncode == 0, done.stderr
    batch_id = json.loads(done.stdout)["batch_id"]
    created = json.loads(done.stdout)["entities"]["patients"]["created"]
    shutil.copytree(original, copy)

    def patients(workspace: Path) -> int:
        with sqlite3.connect(workspace / "clinic.db") as conn:
            return int(conn.execute("SELECT count(*) FROM patients").fetchone()[0])

    listed = json.loads(cli(tiny_sandbox, "batches", "--workspace", str(copy), "--json").stdout)
    assert [b["destination"] for b in listed] == [f"sqlite:{(copy / 'clinic.db').resolve()}"]
    with sqlite3.connect(copy / "clinic.db") as conn:  # damage the copy: the check must see the copy's store
        conn.execute("DELETE FROM medical_alerts WHERE id IN (SELECT id FROM medical_alerts LIMIT 2)")
    checked = cli(tiny_sandbox, "reconcile", batch_id, "--workspace", str(copy), "--json")
    assert checked.returncode == 1, checked.stderr
    alerts = next(r for r in json.loads(checked.stdout)["counts"] if r["entity"] == "medical_alerts")
    assert alerts["difference"] == -2
    assert cli(tiny_sandbox, "reconcile", batch_id, "--workspace", str(original)).returncode == 0

    gone = cli(tiny_sandbox, "delete-batch", batch_id, "--workspace", str(copy), "--yes")
    assert gone.returncode == 0, gone.stderr
    assert (patients(copy), patients(original)) == (0, created)
    with sqlite3.connect(original / "ledger.db") as conn:
        assert conn.execute("SELECT status FROM batches").fetchall() == [("completed",)]
    with sqlite3.connect(copy / "ledger.db") as conn:
        assert conn.execute("SELECT status, destination FROM batches").fetchall() == [
            ("deleted", f"sqlite:{(copy / 'clinic.db').resolve()}")
        ]


def resumes_in_its_own_store(sandbox: RunningSandbox, copy: Path, stopped: str) -> None:
    """Running the plan in ``copy`` (the mapping: the stopped batch's) resumes ``stopped`` into copy/clinic.db."""
    resumed = cli(sandbox, "run", "--workspace", str(copy))
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming batch {stopped}." in resumed.stderr
    with sqlite3.connect(copy / "ledger.db") as conn:
        assert conn.execute("SELECT id, status, destination FROM batches").fetchall() == [
            (stopped, "completed", f"sqlite:{(copy / 'clinic.db').resolve()}")
        ]


def test_running_the_plan_in_a_copy_resumes_there_its_batch_that_wrote_nothing(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A batch stopped before its first page still names the original's store, and no record in the copy claims it."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    stopped = stopped_batch(plan_for(tiny_sandbox, original), original)
    shutil.copytree(original, copy)

    resumes_in_its_own_store(tiny_sandbox, copy, stopped)
    with sqlite3.connect(original / "ledger.db") as conn:
        assert conn.execute("SELECT status FROM batches").fetchall() == [("stopped",)]
    with sqlite3.connect(original / "clinic.db") as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone() == (0,)


def test_a_copy_given_the_outside_store_it_was_refused_resumes_there_the_batch_that_wrote_nothing(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """The remedy the refusal names (the outside store copied in as the copy's own) also serves a stopped batch.

    Nothing in the store records the batch, and the store's folder has no ledger to say it is an original's.
    """
    original, copy, shared = tmp_path / "original", tmp_path / "copy", tmp_path / "store" / "clinic.db"
    plan = plan_for(tiny_sandbox, original)
    shared.parent.mkdir()
    shutil.move(original / "clinic.db", shared)  # the clinic's set-up, in a store outside the workspace
    stopped = stopped_batch(plan.model_copy(update={"destination": f"sqlite:{shared.resolve()}"}), original)
    shutil.copytree(original, copy)
    shutil.copy(shared, copy / "clinic.db")

    resumes_in_its_own_store(tiny_sandbox, copy, stopped)
    with sqlite3.connect(copy / "clinic.db") as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] > 0
    with sqlite3.connect(original / "ledger.db") as conn:
        assert conn.execute("SELECT status, destination FROM batches").fetchall() == [
            ("stopped", f"sqlite:{shared.resolve()}")
        ]
    with sqlite3.connect(shared) as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone() == (0,)


def test_a_store_copied_in_after_the_original_finished_the_batch_is_refused_not_tripped_over(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """QA: the remedy followed late. The copy's ledger says the stopped batch created nothing, the store
    holds what the original's resumed run created: refused in one sentence, before a write, not a UNIQUE
    failure that marks the copy's batch failed."""
    original, copy, shared = tmp_path / "original", tmp_path / "copy", tmp_path / "store" / "clinic.db"
    plan = plan_for(tiny_sandbox, original)
    shared.parent.mkdir()
    shutil.move(original / "clinic.db", shared)
    stopped = stopped_batch(plan.model_copy(update={"destination": f"sqlite:{shared.resolve()}"}), original)
    shutil.copytree(original, copy)
    finished = cli(tiny_sandbox, "run", "--workspace", str(original), "--to", f"sqlite:{shared}")
    assert finished.returncode == 0, finished.stderr
    shutil.copy(shared, copy / "clinic.db")
    store = (copy / "clinic.db").read_bytes()

    refused = cli(tiny_sandbox, "run", "--workspace", str(copy))
    assert refused.returncode == 2
    assert_one_clean_line(refused.stderr, tiny_sandbox.key("source"))
    assert refused.stderr.startswith(
        f"error: The clinic store at {(copy / 'clinic.db').resolve()} holds records batch {stopped} created that "
        f"the ledger at {copy / 'ledger.db'} does not record"
    )
    assert (copy / "clinic.db").read_bytes() == store
    with sqlite3.connect(copy / "ledger.db") as conn:
        assert conn.execute("SELECT status FROM batches").fetchall() == [("stopped",)]


def test_a_copy_leaves_the_original_s_stopped_batch_into_an_outside_store_where_it_was(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """QA: the copy's own store, copied with it, is not the outside one: the batch there stays the original's."""
    original, copy, outside = tmp_path / "original", tmp_path / "copy", tmp_path / "store" / "clinic.db"
    mapping = setup_workspace(tiny_sandbox, original)
    done = cli(tiny_sandbox, "run", *into_store(original, mapping), "--json")
    assert done.returncode == 0, done.stderr
    with Ledger(original) as ledger:
        plan = {**ledger.batch(json.loads(done.stdout)["batch_id"]).plan, "destination": f"sqlite:{outside}"}
        stopped = ledger.create_batch(
            source_account=ledger.batches()[0].source_account, destination=f"sqlite:{outside}", plan=plan
        ).id
        ledger.set_status(stopped, "stopped")
    outside.parent.mkdir()
    shutil.copy(original / "clinic.db", outside)
    shutil.copytree(original, copy)

    listed = cli(tiny_sandbox, "batches", "--workspace", str(copy), "--json")
    assert listed.returncode == 0, listed.stderr
    with sqlite3.connect(copy / "ledger.db") as conn:
        assert conn.execute("SELECT destination FROM batches WHERE id = ?", (stopped,)).fetchone() == (
            f"sqlite:{outside}",
        )
    assert "is a copy of" in next(b["why"] for b in json.loads(listed.stdout) if b["id"] == stopped)


def test_a_copy_of_a_workspace_is_refused_the_store_outside_it_that_the_original_uses(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A store given with --to outside the workspace is not copied with it: the copy must not delete from it.

    Copying the store into the copy as its clinic.db makes it the copy's own; the original stays as it was.
    """
    original, copy, shared = tmp_path / "original", tmp_path / "copy", tmp_path / "store" / "clinic.db"
    mapping = setup_workspace(tiny_sandbox, original)
    shared.parent.mkdir()
    shutil.move(original / "clinic.db", shared)  # the clinic's set-up, in a store outside the workspace
    target = ("--to", f"sqlite:{shared}", "--workspace")
    done = cli(tiny_sandbox, "run", *target, str(original), "--mapping", str(mapping), "--json")
    assert done.returncode == 0, done.stderr
    batch_id = json.loads(done.stdout)["batch_id"]
    created = json.loads(done.stdout)["entities"]["patients"]["created"]
    again = cli(tiny_sandbox, "run", *target, str(original), "--mapping", str(mapping), "--json")
    later = json.loads(again.stdout)["batch_id"]  # finds everything already present
    shutil.copytree(original, copy)

    def patients(store: Path) -> int:
        with sqlite3.connect(store) as conn:
            return int(conn.execute("SELECT count(*) FROM patients").fetchone()[0])

    for command in (
        ("delete-batch", batch_id, "--workspace", str(copy), "--yes"),
        ("run", *target, str(copy), "--mapping", str(copy / mapping.name)),
    ):
        refused = cli(tiny_sandbox, *command)
        assert refused.returncode == 2
        assert_one_clean_line(refused.stderr, tiny_sandbox.key("source"))
        assert (
            f"The workspace {copy} is a copy of {original} (or that one of this), and both record batches into the "
            f"clinic store at {shared}, which lies outside this workspace" in refused.stderr
        )
        assert f"Copy that store to {copy / 'clinic.db'} and it is this workspace's own" in refused.stderr
    assert patients(shared) == created > 0
    listed = cli(tiny_sandbox, "batches", "--workspace", str(copy), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [later, batch_id] and not any(r["deletable"] for r in rows)
    assert all(r["why"].startswith(f"The workspace {copy} is a copy of {original}") for r in rows)
    text = cli(tiny_sandbox, "batches", "--workspace", str(copy)).stdout
    assert text.count("is a copy of") == 1 and f"    As for {later} above." in text.splitlines()  # said once
    with sqlite3.connect(copy / "ledger.db") as conn:
        assert conn.execute("SELECT count(*), max(status) FROM batches").fetchone() == (2, "completed")

    shutil.copy(shared, copy / "clinic.db")  # the remedy the refusal names
    again = cli(tiny_sandbox, "run", *target, str(copy), "--mapping", str(copy / mapping.name))
    assert again.returncode == 2 and "Copy that store" not in again.stderr  # not over the copy's own
    assert (
        f"This workspace has a store of its own, {copy / 'clinic.db'} (used when --to is left out)"
        in again.stderr
    )
    gone = cli(tiny_sandbox, "delete-batch", batch_id, "--workspace", str(copy), "--yes")
    assert gone.returncode == 0, gone.stderr
    assert (patients(copy / "clinic.db"), patients(shared)) == (0, created)
    with sqlite3.connect(original / "ledger.db") as conn:
        assert conn.execute("SELECT status FROM batches").fetchall() == [("completed",)] * 2
    again = cli(tiny_sandbox, "run", *target, str(original), "--mapping", str(mapping), "--json")
    assert again.returncode == 0, again.stderr  # the original is not taken for a copy
    assert json.loads(again.stdout)["entities"]["patients"]["already_present"] == created


def test_a_reader_that_stops_early_ends_the_command_quietly_and_the_batch_stands(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """``run | head -1``: the output's reader has gone by the time the run prints its table.

    A deletion confirmed with --yes goes on too, though its plan is printed before it starts.
    """
    mapping = setup_workspace(tiny_sandbox, tmp_path)

    def cut_short(*args: str) -> subprocess.CompletedProcess[str]:
        gone, output = os.pipe()
        os.close(gone)  # the reader, gone before anything is written
        try:
            return tiny_sandbox.cli(*args, key=tiny_sandbox.key("source"), pace="0", stdout=output)
        finally:
            os.close(output)

    cut = cut_short("run", *into_store(tmp_path, mapping))
    assert (cut.returncode, cut.stderr) == (141, "")
    listed = json.loads(cli(tiny_sandbox, "batches", "--workspace", str(tmp_path), "--json").stdout)
    assert [b["status"] for b in listed] == ["completed"]
    cut = cut_short("delete-batch", listed[0]["id"], "--yes", "--workspace", str(tmp_path))
    assert (cut.returncode, cut.stderr) == (141, "")
    listed = json.loads(cli(tiny_sandbox, "batches", "--workspace", str(tmp_path), "--json").stdout)
    assert [b["status"] for b in listed] == ["deleted"]


def test_a_ledger_edited_by_hand_gets_one_sentence_not_a_traceback(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Items deleted from the ledger: the run tries to create again what the store holds, and SQLite refuses."""
    mapping = setup_workspace(tiny_sandbox, tmp_path)
    assert cli(tiny_sandbox, "run", *into_store(tmp_path, mapping)).returncode == 0
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute("DELETE FROM items WHERE entity = 'taxes'")
    again = cli(tiny_sandbox, "run", *into_store(tmp_path, mapping))
    assert again.returncode == 1
    assert_one_clean_line(again.stderr, tiny_sandbox.key("source"))
    assert again.stderr.startswith(
        "error: SQLite refused the command (UNIQUE constraint failed: taxes.source_id"
    )
    assert again.stderr.rstrip().endswith(
        "(edited by hand, or put back from a copy?). What was committed before stays."
    )


def test_a_ledger_or_store_it_may_not_write_is_refused_before_anything_is_recorded(
    tiny_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A workspace copied in read-only (or restored as another user) opens and reads. A run or a
    deletion is refused before its batch is recorded or set deleting, naming the file and what
    to give, not "edited by hand"; a copy kept read-only is listed, each batch said not to be
    deletable there; a set-up into a new workspace takes that workspace back."""
    mapping = setup_workspace(tiny_sandbox, tmp_path)
    done = cli(tiny_sandbox, "run", *into_store(tmp_path, mapping), "--json")
    assert done.returncode == 0, done.stderr
    batch = json.loads(done.stdout)["batch_id"]

    def trail() -> tuple[list[tuple[str, str]], int]:
        with sqlite3.connect(tmp_path / "ledger.db") as conn:
            return conn.execute("SELECT id, status FROM batches").fetchall(), conn.execute(
                "SELECT count(*) FROM audit"
            ).fetchone()[0]

    def bound(*args: str) -> subprocess.CompletedProcess[str]:
        return tiny_sandbox.cli(
            *args,
            key=tiny_sandbox.key("source"),
            dest_key=tiny_sandbox.key("destination"),
            pace="0",
            prefix=without_file_override(),
        )

    before = trail()
    for file, what in (("ledger.db", "the ledger"), ("clinic.db", "the clinic store")):
        (tmp_path / file).chmod(0o444)
        for command in (
            ("run", *into_store(tmp_path, mapping)),
            ("delete-batch", batch, "--workspace", str(tmp_path), "--yes"),
        ):
            refused = bound(*command)
            assert refused.returncode == 2, (command, refused.stderr)
            said = refused.stderr.splitlines()[-1]
            assert said == (
                f"error: Cannot write {what} {(tmp_path / file).resolve()}: the file or the folder it is in may be "
                "read but not written (attempt to write a readonly database); let this user write both, then try "
                "again. Nothing was changed."
            ), command
            assert_one_clean_line(said, tiny_sandbox.key("source"))
        listed = bound("batches", "--workspace", str(tmp_path), "--json")  # QA 51: listed as deletable
        assert [(row["id"], row["deletable"]) for row in json.loads(listed.stdout)] == [(batch, False)], file
        (tmp_path / file).chmod(0o644)
        assert trail() == before

    # A copy kept read-only to be looked at: listed as it records itself, said not deletable, left as it was.
    kept = tmp_path / "kept"
    kept.mkdir()
    for file in ("ledger.db", "clinic.db"):
        shutil.copy2(tmp_path / file, kept / file)
        (kept / file).chmod(0o444)
    kept.chmod(0o555)
    as_copied = {file: (kept / file).read_bytes() for file in ("ledger.db", "clinic.db")}
    try:
        listed = bound("batches", "--workspace", str(kept), "--json")
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)
        assert (row["id"], row["status"], row["deletable"]) == (batch, "completed", False)
        assert row["why"] == (
            f"The ledger {kept / 'ledger.db'} (or the folder it is in) may be read but not written here, so nothing "
            "can be deleted through it; let this user write both to delete a batch."
        )
        assert sum(c["created"] for c in row["counts"].values()) > 0
        deleting = bound("delete-batch", batch, "--workspace", str(kept), "--yes")
        assert deleting.returncode == 2 and "may be read but not written" in deleting.stderr, deleting.stderr
        assert {file: (kept / file).read_bytes() for file in as_copied} == as_copied
    finally:
        kept.chmod(0o755)

    fresh = tmp_path / "new" / "ws"
    empty = tmp_path / "empty.db"  # a store with no set-up yet, that may not be written
    with Ledger(tmp_path / "other") as other:
        LocalStore(empty, other).close()
    empty.chmod(0o444)
    refused = bound("setup-store", "--workspace", str(fresh), "--to", f"sqlite:{empty}")
    assert refused.returncode == 2 and "may be read but not written" in refused.stderr, refused.stderr
    assert not (tmp_path / "new").exists()


def test_cliniko_failing_part_way_says_to_run_again_in_one_line(sandbox_factory: Any, tmp_path: Path) -> None:
    """Cliniko down beyond retries (every answer a gateway's 502 page): one sentence, no HTML, and what to do."""
    down = sandbox_factory(size="tiny", seed=3, rate_limit=0, faults=1.0, fault_kinds=("502",))
    failed = cli(down, "run", "--workspace", str(tmp_path))
    assert failed.returncode == 1
    assert_one_clean_line(failed.stderr, down.key("source"))
    assert "<" not in failed.stderr and "(last: HTTP 502)" in failed.stderr
    assert failed.stderr.rstrip().endswith("run the same command again to go on from there.")


def test_a_runs_in_place_updates_are_counted_in_one_sentence() -> None:
    from migrator.cli import _updated_sentence

    assert _updated_sentence({"patients": 1, "individual_appointments": 2}, "b1") == (
        "Updated in place 3 records an earlier batch brought (2 individual appointments, 1 patient): changed in "
        "Cliniko since, edited here, or given another mapping. `python -m migrator reconcile b1 --out DIR` lists "
        "each with why (updated.csv)."
    )
