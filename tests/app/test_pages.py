"""Every page of the console renders, and says what a person needs in one clear sentence."""

from __future__ import annotations

import importlib
import json
import shutil
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from migrator.batches import delete_batch
from migrator.destinations.local import LocalStore
from migrator.ledger import Batch, Item, Ledger
from migrator.plan import Plan, Scope
from tests.app.conftest import PAGES, goto, texts

# The module, not the function ``migrator.batches`` that the package exports under its name.
batches_module = importlib.import_module("migrator.batches")
reconcile_module = importlib.import_module("migrator.reconcile")
NEEDS_A_SOURCE = {"preview", "mapping", "scope"}
EMPTY = {
    "run": "No run yet.",
    "review": "No batch to review yet",
    "batches": "No batches yet",
}


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_before_connecting(console: Callable[[], AppTest], page: str) -> None:
    at = goto(console(), page)
    assert not at.exception and not at.error
    assert at.title, "every page has a title"
    shown = texts(at)
    if page in NEEDS_A_SOURCE:
        assert "Connect a source account (or the demo clinic) first" in shown
        assert at.button(key="goto_connect").label == "Go to Connect"
    elif page in EMPTY:
        assert EMPTY[page] in shown
    else:
        assert "Use the demo clinic" in [b.label for b in at.button]


@pytest.mark.parametrize("page", ["connect", "run", "review", "batches"])
def test_a_bad_setting_is_one_sentence_not_a_traceback(
    console: Callable[[], AppTest], monkeypatch: pytest.MonkeyPatch, page: str
) -> None:
    at = console()
    monkeypatch.setenv("MIGRATOR_REQUESTS_PER_MINUTE", "fast")
    goto(at, page)
    assert not at.exception
    assert [e.value for e in at.error] == [
        "MIGRATOR_REQUESTS_PER_MINUTE must be a number of requests per minute; got 'fast'."
    ]


def test_a_wrong_key_is_one_sentence_and_leaves_no_connection(
    console: Callable[[], AppTest], monkeypatch: pytest.MonkeyPatch
) -> None:
    at = console()
    at.button(key="use_demo").click().run()  # to learn where the demo clinic listens
    monkeypatch.setenv("MIGRATOR_API_URL", at.session_state["url_template"])
    at.button(key="disconnect").click().run()
    wrong = "MS0000000000000000000000000000000000000000-au2"
    at.text_input(key="source_key_input").input(wrong).run()
    at.button(key="verify_source").click().run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert error.startswith("Cliniko did not accept the source API key (HTTP 401)") and wrong not in error
    assert "source_key" not in at.session_state and "source_identity" not in at.session_state


def test_the_first_screen_explains_the_steps_and_the_demo(console: Callable[[], AppTest]) -> None:
    at = console()
    shown = texts(at)
    for step in ("Connect", "Preview", "Mapping", "Scope", "Run", "Review", "Batches"):
        assert f"**{step}**" in shown
    assert "Use the demo clinic" in shown
    sidebar = [c.value for c in at.sidebar.caption]
    assert "Not connected yet." in sidebar and any(c.startswith("Workspace:") for c in sidebar)
    # (AppTest keeps the sidebar of the first run only; the browser test checks it once connected.)


def test_keys_stay_in_session_memory_only(console: Callable[[], AppTest], workspace: Path) -> None:
    at = console()
    at.button(key="use_demo").click().run()
    key = at.session_state["source_key"].get_secret_value()
    dest = at.session_state["dest_key"].get_secret_value()
    for page in PAGES:
        goto(at, page)
        shown = texts(at) + " ".join(c.value for c in at.sidebar.caption)
        assert key not in shown and dest not in shown
        assert key not in str(at.query_params) and dest not in str(at.query_params)
    # Nothing the console wrote holds a key.
    for path in workspace.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key.encode() not in data and dest.encode() not in data, path
    goto(at, "connect")
    at.button(key="disconnect").click().run()
    for name in ("source_key", "dest_key", "source_identity", "mapping", "previews"):
        assert name not in at.session_state, name


def test_an_old_batch_says_why_it_cannot_be_deleted(console: Callable[[], AppTest], workspace: Path) -> None:
    with Ledger(workspace) as ledger:
        batch = ledger.create_batch(
            source_account="Harbourside Physio", destination=f"sqlite:{workspace / 'clinic.db'}", plan={}
        )
        ledger.set_status(batch.id, "completed")
    with sqlite3.connect(workspace / "ledger.db") as conn:
        conn.execute("UPDATE batches SET created_at = '2020-01-01T00:00:00+00:00'")
    at = goto(console(), "batches")
    assert not at.exception and not at.error
    listed = at.dataframe[0].value
    assert listed["Batch"].tolist() == [batch.id]
    assert listed["Can be deleted"].tolist() == ["no"]
    shown = texts(at)
    assert f"Why not {batch.id}:" in shown and "only be deleted within 48 hours" in shown
    assert "No batch can be deleted now." in shown
    assert "delete_go" not in [b.key for b in at.button]


def test_a_copied_workspace_says_why_it_cannot_delete_from_a_store_the_original_uses(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    original, shared = workspace.parent / "original", workspace.parent / "store" / "clinic.db"
    with Ledger(original) as ledger:
        store = LocalStore(shared, ledger)
        batch = ledger.create_batch(source_account="Harbourside", destination=store.describe(), plan={})
        with ledger.transaction():
            store.insert(
                "patients", [{"source_id": "1", "first_name": "Ana"}], batch_id=batch.id, source_account="H"
            )
        ledger.set_status(batch.id, "completed")
    shutil.copytree(original, workspace)
    at = goto(console(), "batches")
    assert not at.exception and not at.error
    assert at.dataframe[0].value["Can be deleted"].tolist() == ["no"]
    shown = texts(at)
    assert f"Why not {batch.id}: The workspace {workspace} is a copy of {original}" in shown
    assert "No batch can be deleted now." in shown
    with sqlite3.connect(shared) as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone() == (1,)

    shutil.copy(shared, workspace / "clinic.db")  # the remedy the sentence names: the copy's own store
    at = goto(console(), "batches")
    assert not at.exception and not at.error
    assert at.dataframe[0].value["Can be deleted"].tolist() == ["yes"]
    assert "is a copy of" not in texts(at)
    with Ledger(workspace) as ledger:
        assert ledger.batch(batch.id).destination == f"sqlite:{(workspace / 'clinic.db').resolve()}"


def test_a_batch_a_later_batch_relies_on_says_why_it_is_not_deleted(
    console: Callable[[], AppTest], workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planned: list[str] = []
    plan = batches_module.deletion_plan

    def counted(ledger: Ledger, store: Any, batch_id: str) -> Any:
        planned.append(batch_id)
        return plan(ledger, store, batch_id)

    monkeypatch.setattr(batches_module, "deletion_plan", counted)
    ledger = Ledger(workspace)
    store = LocalStore(workspace / "clinic.db", ledger)
    made = {}
    for name in ("types", "appointments"):
        batch = ledger.create_batch(source_account="Harbourside", destination=store.describe(), plan={})
        made[name] = batch.id
    with ledger.transaction():
        (kind,) = store.insert(
            "appointment_types",
            [{"source_id": "7", "name": "Massage"}],
            batch_id=made["types"],
            source_account="H",
        )
        (patient,) = store.insert(
            "patients",
            [{"source_id": "1", "first_name": "Ana"}],
            batch_id=made["appointments"],
            source_account="H",
        )
        store.insert(
            "individual_appointments",
            [{"source_id": str(n), "patient_id": patient, "appointment_type_id": kind} for n in (1, 2)],
            batch_id=made["appointments"],
            source_account="H",
        )
    for batch_id in made.values():
        ledger.set_status(batch_id, "completed")
    ledger.close()

    sentence = (
        f"Batch {made['types']} cannot be deleted while other records rely on what it created (in batch "
        f"{made['appointments']}, 2 individual appointments would lose their appointment type): delete batch "
        f"{made['appointments']} first, or keep this one."
    )
    at = goto(console(), "batches")
    assert not at.exception and not at.error
    listed = at.dataframe[0].value
    said = dict(zip(listed["Batch"].tolist(), listed["Can be deleted"].tolist(), strict=True))
    assert said == {made["types"]: "no", made["appointments"]: "yes"}
    assert f"Why not {made['types']}: {sentence}" in texts(at)
    assert at.selectbox(key="delete_batch").options == [f"{made['appointments']} · completed"]
    assert "delete_confirm" in [t.key for t in at.text_input]
    # Each batch planned once (seconds for a large clinic's), the chosen one's plan shown from it.
    assert sorted(planned) == sorted(made.values())
    # Typing the confirmation renders the page again: nothing changed on disk, so nothing is planned again.
    at.text_input(key="delete_confirm").input("DEL").run()
    assert not at.exception and sorted(planned) == sorted(made.values())
    assert f"Why not {made['types']}: {sentence}" in texts(at)
    # A third appointment (another process, say) changes the store: the plans are read again, and say so.
    with sqlite3.connect(workspace / "clinic.db") as conn:
        conn.execute(
            "INSERT INTO individual_appointments (source_id, patient_id, appointment_type_id, batch_id, data)"
            " SELECT '3', patient_id, appointment_type_id, batch_id, data FROM individual_appointments LIMIT 1"
        )
    at.text_input(key="delete_confirm").input("DELETE").run()
    assert sorted(planned) == sorted([*made.values(), *made.values()])
    assert f"Why not {made['types']}: {sentence.replace('2 individual', '3 individual')}" in texts(at)


def batch_into_store(workspace: Path, **plan: Any) -> tuple[Ledger, Batch]:
    """A running batch of an all-data plan (and ``plan``'s fields) into the workspace's clinic store."""
    ledger = Ledger(workspace)
    store = LocalStore(workspace / "clinic.db", ledger)
    fields = Plan(
        source_account="Harbourside",
        source_shard="au1",
        destination=store.describe(),
        scope=Scope.parse("all"),
        **plan,
    )
    batch = ledger.create_batch(
        source_account="Harbourside", destination=store.describe(), plan=fields.model_dump(mode="json")
    )
    return ledger, batch


def created_patients(ledger: Ledger, store: LocalStore, batch_id: str, *names: str) -> list[str]:
    """Patients the batch created (source ids 1, 2, ...), in the store and in the ledger; their store ids."""
    with ledger.transaction():
        ids = store.insert(
            "patients",
            [{"source_id": str(n), "first_name": name} for n, name in enumerate(names, 1)],
            batch_id=batch_id,
            source_account="H",
        )
        ledger.record_items(batch_id, [Item("patients", str(n), i, "created") for n, i in enumerate(ids, 1)])
    return ids


def review_of(console: Callable[[], AppTest], workspace: Path, items: list[Item]) -> AppTest:
    """The Review page of a completed batch into the local store whose ledger items are ``items``."""
    ledger, batch = batch_into_store(workspace)
    ledger.record_items(batch.id, items)
    ledger.set_status(batch.id, "completed")
    ledger.close()
    return goto(console(), "review")


def test_review_lists_the_records_that_came_across_but_want_a_look(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    at = review_of(
        console,
        workspace,
        [
            Item("patients", "1", None, "skipped", "invalid", "Failed validation on field email."),
            Item("patients", "2", "1", "created", "review_shared_email", "Shares an email with patient 1."),
        ],
    )
    assert "Records in the destination that want a look" in [s.value for s in at.subheader]
    shown = at.dataframe[-1].value
    assert shown["Code"].tolist() == ["review_shared_email"]
    assert shown["Reason"].tolist() == ["Shares an email with patient 1."]
    assert shown["Data type"].tolist() == ["Patients"]


def test_review_charts_the_skipped_records_under_english_axis_titles(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    at = review_of(
        console,
        workspace,
        [
            Item("patients", "1", None, "skipped", "invalid", "Failed validation on field email."),
            Item("patients", "2", None, "skipped", "invalid", "Failed validation on field email."),
            Item("concession_types", "3", None, "skipped", "not_transferable", "Cliniko cannot create it."),
        ],
    )
    (chart,) = [e for e in at.main if getattr(e, "type", None) == "vega_lite_chart"]
    encoding = json.loads(chart.proto.spec)["encoding"]
    # The bars keep the codes (there is no English per code); the axes are named in English.
    assert (encoding["y"]["title"], encoding["x"]["title"]) == ("Reason", "Records")
    assert "reason_code" not in chart.proto.spec


def test_review_of_a_batch_into_cliniko_not_counted_there_leaves_those_cells_empty(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    """No key of that account in this session: its counts are the ledger's, and the destination's cells blank."""
    ledger = Ledger(workspace)
    fields = Plan(
        source_account="Harbourside", source_shard="au1", destination="cliniko:4242", scope=Scope.parse("all")
    )
    batch = ledger.create_batch(
        source_account="Harbourside", destination="cliniko:4242", plan=fields.model_dump(mode="json")
    )
    ledger.record_items(batch.id, [Item("patients", str(n), str(100 + n), "created") for n in (1, 2)])
    ledger.set_status(batch.id, "completed")
    ledger.close()

    at = goto(console(), "review")
    assert not at.exception
    assert "Not counted in the destination yet: the ledger's side only." in [i.value for i in at.info]
    counted = at.dataframe[0]
    patients = counted.value.set_index("Data type").loc["Patients"]
    assert patients["Created"] == 2 and patients.isna()["In the destination"]
    # Streamlit writes "None" in a cell with no value unless told otherwise: these are left empty.
    assert counted.proto.HasField("placeholder") and counted.proto.placeholder == ""


@pytest.mark.parametrize(
    ("status", "how"), [("failed", "failed"), ("stopped", "was stopped"), ("running", "was interrupted")]
)
def test_review_of_a_batch_that_stopped_part_way_says_so(
    console: Callable[[], AppTest], workspace: Path, status: str, how: str
) -> None:
    """Counts of the stages reached are no proof that everything came across."""
    ledger, batch = batch_into_store(workspace, include=["patients", "individual_appointments"])
    for stage in ("businesses", "practitioners", "appointment_types"):
        ledger.update_progress(
            batch.id, stage, done=0, total=0, created=0, linked=0, already_present=0, skipped=0
        )
    if status == "running":  # a process that died without a word: another pid on this host
        ledger.conn.execute(
            "UPDATE batches SET worker = ? WHERE id = ?", (f"{socket.gethostname()}:999999", batch.id)
        )
    else:
        ledger.set_status(batch.id, status)
    ledger.close()

    at = goto(console(), "review")
    assert at.warning[0].value == (
        f"Batch {batch.id} {how}{' (its process ended)' if status == 'running' else ''} before it finished, so "
        "the figures below cover only what it got to; it never reached patients and appointments. "
        "Resume it on the Run page to finish it."
    )
    shown = [s.value for s in at.success]
    assert "Nothing was skipped so far." in shown
    assert "Nothing was skipped: every record in scope came across." not in shown
    assert "This batch is still running" not in texts(at)


def test_a_deletion_cut_short_shows_what_is_left_and_what_is_gone(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    ledger, batch = batch_into_store(workspace)
    store = LocalStore(workspace / "clinic.db", ledger)
    with ledger.transaction():
        (patient,) = store.insert(
            "patients", [{"source_id": "1", "first_name": "Ana"}], batch_id=batch.id, source_account="H"
        )
        store.insert(
            "medical_alerts",
            [{"source_id": str(n), "patient_id": patient, "name": "Latex"} for n in (1, 2, 3)],
            batch_id=batch.id,
            source_account="H",
        )
    ledger.set_status(batch.id, "completed")
    real_delete = store.delete

    def cut_short(entity: str, ids: Any) -> int:
        if entity == "patients":
            raise ConnectionError("the disk went away")
        return real_delete(entity, ids)

    store.delete = cut_short  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        delete_batch(ledger, store, batch.id)  # the alerts go, then it stops
    ledger.close()

    at = goto(console(), "batches")
    assert not at.exception and not at.error
    assert at.selectbox(key="delete_batch").options == [f"{batch.id} · deleting"]
    assert f"Deleting batch **{batch.id}** removes **1 record**:" in texts(at)
    assert (
        "Already deleted before the last deletion stopped part-way: 3 medical alerts. Deleting finishes it."
        in (texts(at))
    )


def test_review_forgets_what_it_compared_once_a_batch_is_deleted(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    """Balances compared before another batch was deleted no longer describe the store: shown no more."""
    ledger, first = batch_into_store(workspace)
    ledger.set_status(first.id, "completed")
    _, second = batch_into_store(workspace)
    ledger.set_status(second.id, "completed")
    at = goto(console(), "review")
    compared = {(second.id, "balances"): pl.DataFrame({"patient_id": ["1"]})}
    at.session_state["review_cache"] = dict(compared)
    at.run()
    assert list(at.session_state["review_cache"]) == list(compared)  # nothing changed: kept
    delete_batch(ledger, LocalStore(workspace / "clinic.db", ledger), first.id)
    ledger.close()
    at.run()
    assert at.session_state["review_cache"] == {}


def test_review_counts_what_went_with_a_deleted_batch_as_removed(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    """Seed 000: deleting the first batch took the patient the second one found already present."""
    ledger, first = batch_into_store(workspace)
    store = LocalStore(workspace / "clinic.db", ledger)
    (patient,) = created_patients(ledger, store, first.id, "Ana")
    ledger.set_status(first.id, "completed")
    _, second = batch_into_store(workspace)
    ledger.record_items(second.id, [Item("patients", "1", patient, "already_present", "earlier_batch")])
    ledger.set_status(second.id, "completed")
    delete_batch(ledger, store, first.id)
    ledger.close()

    at = goto(console(), "review")
    assert not at.exception
    assert [x.value for x in at.success] == ["Nothing was skipped: every record in scope came across."]
    # All the batch brought went with the other batch: a warning, not a green light.
    assert [w.value for w in at.warning] == [
        "Of the 1 record the batch brought, 1 is no longer in the destination: removed since (deleted in "
        "Cliniko and taken out by a top-up, or deleted with a batch); see Removed since."
    ]
    frame = at.dataframe[0].value
    patients = frame[frame["Data type"] == "Patients"].iloc[0]
    assert (patients["Already present"], patients["Removed since"], patients["Difference"]) == (1, 1, 0)


def test_review_names_the_records_missing_from_the_destination(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    """A record removed from the store by hand: the warning counts it, a table says which one."""
    ledger, batch = batch_into_store(workspace)
    store = LocalStore(workspace / "clinic.db", ledger)
    _, gone = created_patients(ledger, store, batch.id, "Ana", "Bo")
    ledger.set_status(batch.id, "completed")
    store.delete("patients", [gone])
    ledger.close()

    at = goto(console(), "review")
    assert not at.exception
    assert [w.value for w in at.warning] == [
        "Not everything the ledger says arrived is in the destination: Patients -1."
    ]
    listed = at.dataframe[0].value
    assert listed.to_dict("records") == [{"Data type": "Patients", "Source id": "2", "Destination id": gone}]


def test_review_reads_a_batch_again_only_once_the_workspace_changed(
    console: Callable[[], AppTest], workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large clinic's counts take seconds: a click on the page must not read them all again."""
    reads: list[str] = []
    for name in ("_counts", "skipped", "flagged"):
        read = getattr(reconcile_module, name)

        def counted(*args: Any, _read: Any = read, _name: str = name, **kwargs: Any) -> Any:
            reads.append(_name)
            return _read(*args, **kwargs)

        monkeypatch.setattr(reconcile_module, name, counted)
    ledger, batch = batch_into_store(workspace)
    store = LocalStore(workspace / "clinic.db", ledger)
    _, gone = created_patients(ledger, store, batch.id, "Ana", "Bo")
    ledger.set_status(batch.id, "completed")
    ledger.close()

    at = goto(console(), "review")
    assert not at.exception and not at.warning
    assert sorted(reads) == ["_counts", "flagged", "skipped"]
    at.run()
    assert not at.exception and len(reads) == 3
    # Another process removes a patient from the store: the next render reads again, and sees it.
    with sqlite3.connect(workspace / "clinic.db") as conn:
        conn.execute("DELETE FROM patients WHERE id = ?", (gone,))
    at.run()
    assert [w.value for w in at.warning] == [
        "Not everything the ledger says arrived is in the destination: Patients -1."
    ]
    assert at.dataframe[0].value.to_dict("records") == [
        {"Data type": "Patients", "Source id": "2", "Destination id": gone}
    ]
    # The counts and the missing record (one read of the batch's records), the skipped and flagged records: once each.
    assert sorted(reads[3:]) == ["_counts", "flagged", "skipped"]


def test_a_deletion_that_would_remove_more_than_the_page_showed_removes_nothing(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    ledger, batch = batch_into_store(workspace)
    store = LocalStore(workspace / "clinic.db", ledger)
    (patient,) = created_patients(ledger, store, batch.id, "Ana")
    ledger.set_status(batch.id, "completed")
    ledger.close()

    at = goto(console(), "batches")
    at.text_input(key="delete_confirm").input("DELETE").run()
    assert f"Deleting batch **{batch.id}** removes **1 record**:" in texts(at)
    # Between the page being drawn and the click, another process books Ana an appointment.
    with sqlite3.connect(workspace / "clinic.db") as conn:
        conn.execute(
            "INSERT INTO individual_appointments (patient_id, data) VALUES (?, '{}')", (int(patient),)
        )
    at.button(key="delete_go").click().run()
    assert not at.exception and not at.success
    assert [e.value for e in at.error] == [
        f"What deleting batch {batch.id} removes changed after the page showed it (now 2 records, shown 1 "
        "record), so nothing was deleted. Check what it removes now, then delete again."
    ]
    with sqlite3.connect(workspace / "clinic.db") as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone() == (1,)
    with Ledger(workspace) as check:
        assert check.batch(batch.id).status == "completed"
    # The page now shows what it removes, and deleting again removes it.
    assert f"Deleting batch **{batch.id}** removes **2 records**:" in texts(at)
    at.text_input(key="delete_confirm").input("DELETE").run()
    at.button(key="delete_go").click().run()
    assert f"Batch {batch.id} is deleted: 2 records were removed." in texts(at)


def test_deleting_a_batch_a_later_one_found_already_present_warns_before_the_click(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    ledger, first = batch_into_store(workspace)
    store = LocalStore(workspace / "clinic.db", ledger)
    ids = created_patients(ledger, store, first.id, "Ana", "Bo")
    ledger.set_status(first.id, "completed")
    _, second = batch_into_store(workspace)  # the same plan again: it finds both already present
    ledger.record_items(
        second.id, [Item("patients", str(n), i, "already_present") for n, i in enumerate(ids, 1)]
    )
    ledger.set_status(second.id, "completed")
    ledger.close()

    at = goto(console(), "batches")
    at.selectbox(key="delete_batch").select(first.id).run()
    assert not at.exception
    assert next(w.value for w in at.warning) == (
        f"Batch {second.id} found 2 patients of these already present, so it did not bring them itself: they go "
        "too, and running that batch's plan again afterwards brings them back anew."
    )
    at.selectbox(key="delete_batch").select(second.id).run()
    assert not any("already present, so" in w.value for w in at.warning)


def test_a_batch_whose_48_hours_run_out_before_the_click_is_not_deleted(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    ledger, batch = batch_into_store(workspace)
    store = LocalStore(workspace / "clinic.db", ledger)
    created_patients(ledger, store, batch.id, "Ana")
    ledger.set_status(batch.id, "completed")
    _, other = batch_into_store(workspace)  # a newer batch, which stays deletable
    with ledger.transaction():
        store.insert(
            "patients", [{"source_id": "9", "first_name": "Bo"}], batch_id=other.id, source_account="H"
        )
    ledger.set_status(other.id, "completed")
    ledger.close()

    at = goto(console(), "batches")
    at.selectbox(key="delete_batch").select(batch.id).run()
    at.text_input(key="delete_confirm").input("DELETE").run()
    assert f"Deleting batch **{batch.id}** removes **1 record**:" in texts(at)
    with sqlite3.connect(workspace / "ledger.db") as conn:  # the page was left open for two days
        conn.execute("UPDATE batches SET created_at = '2020-01-01T00:00:00+00:00' WHERE id = ?", (batch.id,))
    at.button(key="delete_go").click().run()
    assert not at.exception and not at.success
    (error,) = [e.value for e in at.error]
    assert (
        error.startswith(f"Batch {batch.id} was not deleted: ") and "only be deleted within 48 hours" in error
    )
    with sqlite3.connect(workspace / "clinic.db") as conn:
        assert conn.execute("SELECT count(*) FROM patients").fetchone() == (2,)
    with Ledger(workspace) as check:
        assert [check.batch(b.id).status for b in (batch, other)] == ["completed", "completed"]
    # The click is not kept for later: the next run of the page deletes nothing either.
    at.run()
    assert not at.error and at.selectbox(key="delete_batch").options == [f"{other.id} · completed"]
    with Ledger(workspace) as check:
        assert check.batch(other.id).status == "completed"


def test_a_deletion_confirmed_but_not_done_is_dropped_by_any_other_page(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    """The Batches page does a confirmed deletion on its next run; if another page runs instead, it goes."""
    at = goto(console(), "batches")
    at.session_state["delete_pending"] = "a deletion confirmed on the Batches page"
    goto(at, "connect")
    assert "delete_pending" not in at.session_state


def test_deleting_a_batch_that_created_nothing_says_so_without_the_patients_warning(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    ledger, batch = batch_into_store(workspace)
    ledger.record_items(batch.id, [Item("patients", "1", None, "skipped", "invalid", "Failed validation.")])
    ledger.set_status(batch.id, "completed")
    ledger.close()

    at = goto(console(), "batches")
    assert not at.exception
    assert [i.value for i in at.info] == [
        f"Batch **{batch.id}** created nothing that is still there: deleting it removes no record, and only "
        "marks it deleted in the ledger."
    ]
    assert not at.warning and len(at.dataframe) == 1  # the list of batches only
    at.text_input(key="delete_confirm").input("DELETE").run()
    at.button(key="delete_go").click().run()
    assert f"Batch {batch.id} is deleted: 0 records were removed." in texts(at)
