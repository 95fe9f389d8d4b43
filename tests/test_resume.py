"""SIGKILL a run (a full one, a top-up, a deletion) at several points, start it again, and compare with a clean one."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from migrator.plan import records_of
from tests.conftest import ROOT, RunningSandbox

#: Tables and the foreign-key columns to translate into the referenced row's identity.
FKS = {
    "patients": ("concession_type_id", "referring_doctor_id"),
    "medical_alerts": ("patient_id",),
    "individual_appointments": ("patient_id", "practitioner_id", "business_id", "appointment_type_id"),
    "group_appointments": ("practitioner_id", "business_id", "appointment_type_id"),
    "attendees": ("booking_id", "patient_id"),
    "treatment_notes": ("patient_id", "practitioner_id", "treatment_note_template_id", "booking_id"),
    "invoices": ("patient_id", "business_id", "practitioner_id", "appointment_id"),
    "invoice_items": ("invoice_id", "billable_item_id", "product_id"),
}
TARGET = {
    "patient_id": "patients",
    "practitioner_id": "practitioners",
    "business_id": "businesses",
    "appointment_type_id": "appointment_types",
    "booking_id": None,  # attendees -> group_appointments, notes -> individual_appointments
    "concession_type_id": "concession_types",
    "referring_doctor_id": "contacts",
    "treatment_note_template_id": "treatment_note_templates",
    "appointment_id": "individual_appointments",
    "invoice_id": "invoices",
    "billable_item_id": "billable_items",
    "product_id": "products",
}


def canonical(db: Path) -> dict[str, set[tuple[Any, ...]]]:
    """Every store row, with ids replaced by what they stand for (source id or set-up name)."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    tables = [
        r[0]
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name != 'migrations'")
    ]
    identity: dict[str, dict[int, str]] = {}
    for table in tables:
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        if "source_id" not in columns:
            continue
        identity[table] = {
            row["id"]: row["source_id"]
            or f"setup:{json.loads(row['data'] or '{}').get('first_name', '')}{row['id']}"
            for row in conn.execute(f"SELECT id, source_id, data FROM {table}")
        }
    out: dict[str, set[tuple[Any, ...]]] = {}
    for table in identity:
        rows = set()
        for row in conn.execute(f"SELECT * FROM {table}"):
            values = []
            for column in row.keys():  # noqa: SIM118 - sqlite3.Row
                if column in ("id", "batch_id"):
                    continue
                value = row[column]
                if column in TARGET and value is not None:
                    target = TARGET[column] or (
                        "group_appointments" if table == "attendees" else "individual_appointments"
                    )
                    value = identity.get(target, {}).get(value, f"?{value}")
                values.append((column, value))
            rows.add(tuple(values))
        out[table] = rows
    conn.close()
    return out


#: The runs are paced (50 requests a second) so that they last a few seconds: the engine
#: commits whole pages at most every 0.5 s, and an unpaced demo run of a practitioner's
#: scope ends in under half a second, leaving no commit to kill between.
PACE = "3000"


def run_cli(
    sandbox: RunningSandbox, workspace: Path, mapping: Path, *extra: str, pace: str = PACE
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env.update(
        MIGRATOR_API_URL=sandbox.url_template,
        MIGRATOR_SOURCE_KEY=sandbox.key("source"),
        MIGRATOR_REQUESTS_PER_MINUTE=pace,
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migrator",
            "run",
            *into_store(workspace, mapping),
            "--json",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def into_store(workspace: Path, mapping: Path) -> tuple[str, ...]:
    """``run``'s arguments for the workspace's own store, with the edited ``mapping``."""
    return (
        "--to",
        f"sqlite:{workspace / 'clinic.db'}",
        "--workspace",
        str(workspace),
        "--mapping",
        str(mapping),
    )


def setup_workspace(sandbox: RunningSandbox, workspace: Path) -> Path:
    """A store with the clinic's own set-up, and a resolved mapping file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env.update(
        MIGRATOR_API_URL=sandbox.url_template,
        MIGRATOR_SOURCE_KEY=sandbox.key("source"),
        MIGRATOR_DEST_KEY=sandbox.key("destination"),
        MIGRATOR_REQUESTS_PER_MINUTE="0",
    )
    target = ["--to", f"sqlite:{workspace / 'clinic.db'}", "--workspace", str(workspace)]
    for command in (["setup-store", *target], ["mapping", "--out", str(workspace / "mapping.json"), *target]):
        done = subprocess.run(
            [sys.executable, "-m", "migrator", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    mapping = json.loads((workspace / "mapping.json").read_text())
    for row in mapping["mappings"]:
        if row["action"] == "unresolved":
            row["action"] = "former"
    (workspace / "mapping.json").write_text(json.dumps(mapping))
    return workspace / "mapping.json"


def peek(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]] | None:
    """A query's rows, read-only while a run writes; ``None`` while the file is locked or missing."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def items_written(workspace: Path) -> int:
    rows = peek(workspace / "ledger.db", "SELECT count(*) FROM items")
    return rows[0][0] if rows else 0


@pytest.mark.parametrize("scope", ["all", "practitioner"])
def test_sigkill_at_several_points_then_resume_equals_a_clean_run(
    demo_sandbox: RunningSandbox, tmp_path: Path, scope: str
) -> None:
    extra: tuple[str, ...] = ()
    if scope == "practitioner":
        extra = ("--filter", f"practitioner:{_first_practitioner(demo_sandbox)}")
    clean_ws = tmp_path / "clean"
    clean_ws.mkdir()
    clean_mapping = setup_workspace(demo_sandbox, clean_ws)
    clean = run_cli(demo_sandbox, clean_ws, clean_mapping, *extra)
    out, err = clean.communicate(timeout=600)
    assert clean.returncode == 0, err
    clean_result = json.loads(out)
    total_items = sum(e["in_scope"] for e in clean_result["entities"].values())

    killed_ws = tmp_path / "killed"
    killed_ws.mkdir()
    mapping = setup_workspace(demo_sandbox, killed_ws)
    kills = 0
    for fraction in (0.02, 0.3, 0.7):
        process = run_cli(demo_sandbox, killed_ws, mapping, *extra)
        deadline = time.monotonic() + 300
        while (
            process.poll() is None
            and items_written(killed_ws) < fraction * total_items
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.communicate(timeout=60)
    assert kills >= 2  # the run really was interrupted mid-way
    # Pages are committed in groups, so the last kill may land after the run finished its
    # last group; only an unfinished batch is resumed.
    from migrator.ledger import Ledger

    (batch,) = Ledger(killed_ws).batches()
    if batch.status != "completed":
        listed = demo_sandbox.cli("batches", "--workspace", str(killed_ws)).stdout
        assert f"{batch.id}  " in listed and " interrupted " in listed and " running " not in listed
        final = run_cli(demo_sandbox, killed_ws, mapping, *extra)
        out, err = final.communicate(timeout=600)
        assert final.returncode == 0, err
        resumed = json.loads(out)
    else:
        counts = Ledger(killed_ws).counts(batch.id)
        empty = dict.fromkeys(("created", "linked", "already_present", "skipped"), 0)
        resumed = {
            "entities": {
                entity: {"in_scope": sum(counts.get(entity, empty).values()), **counts.get(entity, empty)}
                for entity in clean_result["entities"]
            }
        }

    assert canonical(killed_ws / "clinic.db") == canonical(clean_ws / "clinic.db")
    # One batch, resumed each time, with the same ledger outcome as the clean run.
    conn = sqlite3.connect(killed_ws / "ledger.db")
    assert conn.execute("SELECT count(*), min(status) FROM batches").fetchone() == (1, "completed")
    assert {e: {k: v for k, v in row.items()} for e, row in resumed["entities"].items()} == clean_result[
        "entities"
    ]


def _first_practitioner(sandbox: RunningSandbox) -> str:
    from tests.test_client_sandbox import read_all

    with sandbox.client() as client:
        return str(read_all(client, "practitioners")[1]["id"])


def delete_cli(workspace: Path, batch_id: str) -> subprocess.Popen[str]:
    """``delete-batch ID --yes`` in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "migrator", "delete-batch", batch_id, "--yes", "--workspace", str(workspace)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_DELETE_EVERY_CHUNK = """
import sys
from pathlib import Path
from migrator.batches import delete_batch
from migrator.destinations.local import LocalStore
from migrator.ledger import Ledger

workspace = Path(sys.argv[1])
with Ledger(workspace) as ledger:
    delete_batch(ledger, LocalStore(workspace / "clinic.db", ledger), sys.argv[2], commit_interval=0)
"""


def delete_every_chunk(workspace: Path, batch_id: str) -> subprocess.Popen[str]:
    """:func:`~migrator.batches.delete_batch` in its own process, committing each chunk as it goes.

    ``delete-batch`` commits half a second of chunks at a time, on the demo clinic the whole
    deletion at once: committing each one gives a kill a moment between two to land in.
    """
    return subprocess.Popen(
        [sys.executable, "-c", _DELETE_EVERY_CHUNK, str(workspace), batch_id],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _deletion_order(pair: tuple[str, int]) -> int:
    from migrator.destinations.local import DELETE_ORDER

    return DELETE_ORDER.index(pair[0])


def _batch_rows_left(workspace: Path) -> int:
    """Store rows of any batch still present (read-only; -1 while the file is locked)."""
    rows = peek(workspace / "clinic.db", "SELECT count(*) FROM patients WHERE batch_id IS NOT NULL")
    return rows[0][0] if rows else -1


def test_sigkill_mid_deletion_then_delete_again_finishes_it(
    demo_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    mapping = setup_workspace(demo_sandbox, tmp_path)
    run = run_cli(demo_sandbox, tmp_path, mapping)
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    batch_id = json.loads(out)["batch_id"]
    before = canonical(tmp_path / "clinic.db")
    patients = _batch_rows_left(tmp_path)
    assert patients > 100

    process = delete_every_chunk(tmp_path, batch_id)
    deadline = time.monotonic() + 120
    # Patients go last (reverse dependency order): wait until the first chunk is deleted.
    while process.poll() is None and time.monotonic() < deadline:
        rows = peek(tmp_path / "ledger.db", "SELECT count(*) FROM deletions WHERE batch_id = ?", batch_id)
        if rows and rows[0][0]:
            break
        time.sleep(0.002)
    assert process.poll() is None, "the deletion finished before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)

    conn = sqlite3.connect(tmp_path / "ledger.db")
    assert conn.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone() == ("deleting",)
    gone = dict(conn.execute("SELECT entity, count(*) FROM deletions GROUP BY entity"))
    conn.close()
    store = sqlite3.connect(tmp_path / "clinic.db")
    left = {
        table: n
        for table in before
        if (n := store.execute(f"SELECT count(*) FROM {table} WHERE batch_id = ?", (batch_id,)).fetchone()[0])
    }
    store.close()
    # A dry-run now lists what is left, and counts apart what the killed deletion removed.
    dry = subprocess.run(
        [
            sys.executable,
            "-m",
            "migrator",
            "delete-batch",
            batch_id,
            "--dry-run",
            "--workspace",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert f"removes {records_of('records', sum(left.values()))}:" in dry.stdout
    assert [line.strip() for line in dry.stdout.splitlines() if "created by the batch" in line] == [
        f"{table}: {n:,} created by the batch" for table, n in sorted(left.items(), key=_deletion_order)
    ]
    done = ", ".join(records_of(entity, n) for entity, n in sorted(gone.items(), key=_deletion_order))
    assert f"Already deleted before the last deletion stopped part-way: {done}." in dry.stdout
    # The interrupted deletion left the store consistent (whole chunks), and running it again finishes.
    again = delete_cli(tmp_path, batch_id)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"Batch {batch_id} is deleted." in out
    after = canonical(tmp_path / "clinic.db")
    assert _batch_rows_left(tmp_path) == 0
    for table, rows in after.items():
        assert all(dict(r).get("source_id") is None for r in rows), table  # only the set-up rows remain
    assert after["practitioners"] == {r for r in before["practitioners"] if dict(r).get("source_id") is None}
    conn = sqlite3.connect(tmp_path / "ledger.db")
    actions = [
        a for (a,) in conn.execute("SELECT action FROM audit WHERE batch_id = ? ORDER BY id", (batch_id,))
    ]
    conn.close()
    # Both attempts and the end are in the audit trail.
    assert [a for a in actions if a.startswith("delete")] == ["delete", "delete", "deleted"]


def test_a_killed_run_is_deleted_without_resuming_it_then_runs_again_from_nothing(
    demo_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    mapping = setup_workspace(demo_sandbox, tmp_path)
    setup = canonical(tmp_path / "clinic.db")
    process = run_cli(demo_sandbox, tmp_path, mapping)
    deadline = time.monotonic() + 300
    while process.poll() is None and items_written(tmp_path) < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    ((batch_id, status),) = peek(tmp_path / "ledger.db", "SELECT id, status FROM batches") or []
    assert status == "running"  # what a killed process leaves behind
    assert _batch_rows_left(tmp_path) > 0

    deleted = delete_cli(tmp_path, batch_id)
    out, err = deleted.communicate(timeout=300)
    assert deleted.returncode == 0, err
    assert f"Batch {batch_id} is deleted." in out
    # Exactly what the killed run had committed is gone; the clinic's own set-up stays, and so does
    # the generic Former practitioner the run set up for it (seed 001), as after any deletion.
    after = canonical(tmp_path / "clinic.db")
    assert {t: rows for t, rows in after.items() if t != "practitioners"} == {
        t: rows for t, rows in setup.items() if t != "practitioners"
    }
    added = after["practitioners"] - setup["practitioners"]
    assert setup["practitioners"] <= after["practitioners"]
    assert [(dict(r)["first_name"], dict(r)["source_id"]) for r in added] == [("Former", None)]
    assert peek(tmp_path / "ledger.db", "SELECT status FROM batches") == [("deleted",)]

    # Started again, the plan is not resumed into the deleted batch: a new one brings everything.
    again = run_cli(demo_sandbox, tmp_path, mapping, pace="0")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    result = json.loads(out)
    assert result["batch_id"] != batch_id
    assert all(e["already_present"] == 0 for e in result["entities"].values())
    assert result["entities"]["patients"]["created"] == result["entities"]["patients"]["in_scope"] > 100


def _batch_ids(workspace: Path) -> list[str]:
    """The ledger's batch ids, oldest first (read-only; [] while the file is locked)."""
    return [
        r[0] for r in peek(workspace / "ledger.db", "SELECT id FROM batches ORDER BY created_at, id") or ()
    ]


def _sweep_items(workspace: Path) -> int:
    """How many items the ledger's second batch (the sweep) holds; -1 before it exists."""
    batches = _batch_ids(workspace)
    if len(batches) < 2:
        return -1
    rows = peek(workspace / "ledger.db", "SELECT count(*) FROM items WHERE batch_id = ?", batches[1])
    return int(rows[0][0]) if rows else -1


def _sweep_status(workspace: Path) -> str | None:
    """The status of the ledger's second batch (the sweep); ``None`` before it exists."""
    batches = _batch_ids(workspace)
    rows = (
        peek(workspace / "ledger.db", "SELECT status FROM batches WHERE id = ?", batches[1])
        if len(batches) > 1
        else None
    )
    return str(rows[0][0]) if rows else None


def _outcomes(workspace: Path, batch_id: str) -> dict[tuple[str, str], tuple[str, str | None]]:
    conn = sqlite3.connect(workspace / "ledger.db")
    try:
        return {
            (entity, source_id): (action, reason)
            for entity, source_id, action, reason in conn.execute(
                "SELECT entity, source_id, action, reason_code FROM items WHERE batch_id = ?", (batch_id,)
            )
        }
    finally:
        conn.close()


def _change_the_source(sandbox: Any) -> None:
    """What a clinic does in Cliniko between the first transfer and the sweep before go-live."""
    import httpx

    from migrator.cliniko.client import ClientConfig, ClinikoClient

    def put_record(resource_name: str, record: dict[str, Any]) -> dict[str, Any]:
        answer = httpx.post(
            f"{sandbox.origin}/_sandbox/records",
            json={"account": "source", "resource": resource_name, "record": record},
            timeout=10,
        )
        answer.raise_for_status()
        return dict(answer.json())

    config = ClientConfig(url_template=sandbox.url_template, requests_per_minute=0)
    with ClinikoClient(sandbox.key("source"), config=config, writable=True) as writer:
        patient = writer.post(
            "/patients", {"first_name": "Nova", "last_name": "Late", "date_of_birth": "1990-02-03"}
        )
        page = next(iter(writer.pages("individual_appointments", sort="starts_at", order="desc")))
        moved, cancelled, deleted = [a for a in page.records if not a.get("cancelled_at")][:3]
        writer.put(f"/individual_appointments/{moved['id']}", {"notes": "Moved to the morning"})
        writer.patch(f"/individual_appointments/{cancelled['id']}/cancel", {"cancellation_reason": 50})
        writer.delete(f"/individual_appointments/{deleted['id']}")
        some = next(iter(writer.pages("patients"))).records[5]
        writer.put(f"/patients/{some['id']}", {"email": "moved.house@example.com", "city": "Geelong"})
        put_record(
            "invoices",
            {
                "number": 99001, "issue_date": "2026-11-21", "status": 10, "status_description": "Open",
                "total_amount": "85.00", "tax_amount": "0.00", "net_amount": "85.00", "discounted_amount": "0.00",
                "notes": None, "invoice_to": "", "patient_extra_information": None, "closed_at": None,
                "appointment_id": None, "business_id": None, "practitioner_id": None,
                "patient_id": int(patient["id"]),
            },
        )  # fmt: skip
        invoice = next(iter(writer.pages("invoices"))).records[0]
        put_record("invoices", {"id": int(invoice["id"]), "deleted_at": "2026-11-21T10:00:00Z"})


def test_sigkill_during_a_top_up_then_resume_equals_a_clean_top_up(tmp_path: Path) -> None:
    """Updates, cancellations and deletions at the source survive a killed sweep as creates do."""
    from migrator.sandbox import Sandbox

    with Sandbox(size="demo", seed=1, rate_limit=0) as sandbox:
        workspaces = {name: tmp_path / name for name in ("clean", "killed")}
        mappings = {}
        for name, workspace in workspaces.items():
            workspace.mkdir()
            mappings[name] = setup_workspace(sandbox, workspace)  # type: ignore[arg-type]
            first = run_cli(sandbox, workspace, mappings[name])  # type: ignore[arg-type]
            _, err = first.communicate(timeout=600)
            assert first.returncode == 0, err
        _change_the_source(sandbox)

        clean = run_cli(sandbox, workspaces["clean"], mappings["clean"], "--top-up", pace="600")  # type: ignore[arg-type]
        out, err = clean.communicate(timeout=600)
        assert clean.returncode == 0, err
        clean_result = json.loads(out)
        clean_outcomes = _outcomes(workspaces["clean"], clean_result["batch_id"])
        # The sweep saw every kind of change, so each kind is interrupted somewhere below.
        assert {reason for _, reason in clean_outcomes.values()} >= {
            None,
            "updated",
            "cancelled",
            "deleted_at_source",
        }

        killed = workspaces["killed"]
        # The first attempt is killed early in the sweep; each later one as soon as it has committed
        # more than the attempts before it, so the kills step through the sweep's commits.
        written: list[int] = []
        for attempt in range(8):
            process = run_cli(sandbox, killed, mappings["killed"], "--top-up", pace="600")  # type: ignore[arg-type]
            deadline = time.monotonic() + 120
            while process.poll() is None and time.monotonic() < deadline:
                count = _sweep_items(killed)
                if (attempt == 0 and count >= 0) or count > max(written, default=0):
                    break
                time.sleep(0.005)
            if attempt == 0:
                time.sleep(0.3)
            if process.poll() is not None:
                break  # the sweep finished before this attempt could be killed
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=60)
            written.append(_sweep_items(killed))
            if _sweep_status(killed) == "completed":
                break  # killed on its way out, after the sweep's last commit: nothing is left to resume
        else:
            pytest.fail(f"eight attempts did not finish the sweep: {written}")
        # Killed at least twice part-way through, with some of the sweep's records written and some not.
        assert len(written) >= 2 and any(0 < n < len(clean_outcomes) for n in written), written
        assert process.returncode in (0, -signal.SIGKILL), process.communicate(timeout=60)[1]
        assert _sweep_status(killed) == "completed"
    batches = _batch_ids(killed)
    assert len(batches) == 2  # the interrupted sweep was resumed each time, never started afresh
    assert canonical(killed / "clinic.db") == canonical(workspaces["clean"] / "clinic.db")
    assert _outcomes(killed, batches[1]) == clean_outcomes


def test_ctrl_c_stops_a_run_says_so_and_the_same_command_finishes_it(
    demo_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Ctrl+C once said "nothing was changed" after thousands of records, and left the batch failed."""
    from migrator.ledger import Ledger

    mapping = setup_workspace(demo_sandbox, tmp_path)
    process = run_cli(demo_sandbox, tmp_path, mapping)
    deadline = time.monotonic() + 300
    while process.poll() is None and items_written(tmp_path) < 1000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == (
        "error: interrupted part-way; what was done so far is kept and recorded: run the same command again "
        "to finish it."
    )
    with Ledger(tmp_path) as ledger:
        (batch,) = ledger.batches()
        kept = sum(ledger.counts(batch.id).get(e, {}).get("created", 0) for e in ledger.counts(batch.id))
    assert batch.status == "stopped" and kept >= 1000

    again = run_cli(demo_sandbox, tmp_path, mapping)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert json.loads(out)["batch_id"] == batch.id  # resumed, not started afresh
