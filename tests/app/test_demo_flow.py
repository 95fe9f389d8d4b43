"""The demo clinic from Connect to a deleted batch, driven through widgets found by key.

Everything asserted is what a person sees (counts, statuses, sentences), checked against
the source (counted with a client of its own) and the ledger.
"""

from __future__ import annotations

import importlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from console_ui import run_registry
from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.cliniko.filters import Filter
from migrator.console import escape_markdown
from migrator.ledger import Ledger
from migrator.mapping_editor import mapping_json, read_table
from migrator.plan import CORE_TYPES, OPTIONAL_TYPES
from migrator.preview import preview
from migrator.workflow import open_local_store
from tests.app.conftest import follow, goto, metrics, texts, wait_for_status


def source_counts(at: AppTest) -> dict[str, int]:
    """The demo source's lists, counted by a client of the test's own."""
    config = ClientConfig(url_template=at.session_state["url_template"], requests_per_minute=0)
    with ClinikoClient(at.session_state["source_key"], config=config) as client:
        return preview(client).counts


def connect_and_decide(at: AppTest) -> None:
    """Connect the demo clinic and settle its two former practitioners (one reassigned, one excluded)."""
    at.button(key="use_demo").click().run()
    goto(at, "mapping")
    table = at.data_editor(key="mapping_practitioners").value
    undecided = table.index[table["status"].str.contains("needs a decision")].tolist()
    assert len(undecided) == 2
    colleague = table.loc[table["action"] == "map", "target_id"].iloc[0]
    at.session_state["mapping_practitioners"] = {
        "edited_rows": {undecided[0]: {"action": "reassign", "target_id": colleague}},
        "added_rows": [],
        "deleted_rows": [],
    }
    at.run()
    at.selectbox(key="decide_practitioners").set_value("exclude").run()
    at.button(key="decide_practitioners_apply").click().run()
    assert "Every row is decided." in [s.value for s in at.success]


def formats(table: Any) -> dict[str, str]:
    """The number format of each of a shown table's columns that has one."""
    columns = json.loads(table.proto.columns)
    return {name: c["type_config"]["format"] for name, c in columns.items() if "type_config" in c}


def test_the_demo_flow_from_connect_to_a_deleted_batch(
    console: Callable[[], AppTest], workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The module: the package exports a function under its name.
    reconcile_module = importlib.import_module("migrator.reconcile")
    check = reconcile_module.invoice_check
    followed: list[tuple[int, int]] = []

    def invoice_check(*args: Any, progress: Any = None, **kwargs: Any) -> Any:
        def seen(read: int, listed: int) -> None:
            followed.append((read, listed))
            progress(read, listed)

        return check(*args, progress=seen if progress else None, **kwargs)

    monkeypatch.setattr(reconcile_module, "invoice_check", invoice_check)
    at = console()

    # 1. Connect: the demo clinic, its rights, and the local store set up like the destination clinic.
    at.button(key="use_demo").click().run()
    assert not at.exception and not at.error
    assert "Connected to **Harbourside Physio** on au2 as **Zoë Adams**." in [s.value for s in at.success]
    assert "The local clinic store now holds the demo destination clinic's own 3 businesses" in texts(at)
    counts = source_counts(at)

    # 2. Preview: every list the run reads, as the source counts them, and the cost.
    follow(at, "next_preview", "preview")
    table = at.dataframe[0].value.set_index("Data type")
    assert table.loc["Patients", "Records"] == counts["patients"] + counts["patients/archived"]
    assert table.loc["Appointments", "Records"] == counts["individual_appointments"]
    assert table.loc["Invoice items", "Records"] == counts["invoice_items"]
    assert table["Estimate"].eq("").all()
    shown = metrics(at)
    assert shown["Records to read"] == f"{table['Records'].sum():,}"
    assert shown["Requests"] == f"{table['Requests'].sum():,}"
    assert shown["Minutes at the key's pace"] == "unpaced" and "Writes into Cliniko" not in shown
    assert formats(at.dataframe[0]) == {
        "Records": "localized",
        "Requests": "localized",
    }  # 284,289, not 284289

    # 3. Mapping: three tables; the two former practitioners are flagged with a sentence.
    follow(at, "next_mapping", "mapping")
    assert [e.key for e in at.data_editor] == [
        "mapping_businesses",
        "mapping_practitioners",
        "mapping_appointment_types",
    ]
    (pending,) = [w.value for w in at.warning]
    assert pending.startswith("2 rows need a decision before a run: ") and "Former practitioner" in pending
    practitioners = at.data_editor(key="mapping_practitioners").value
    undecided = practitioners.index[practitioners["status"].str.contains("needs a decision")].tolist()
    colleague = practitioners.loc[practitioners["action"] == "map", "target_id"].iloc[0]
    # Their notes, in the grid and in full under it, offer the grid's choices by its labels, not the file's codes.
    why = practitioners["note"][undecided[0]]
    assert "'give to a generic Former practitioner'" in why and "'former'" not in why
    listed = next(m.value for m in at.markdown if m.value.startswith("- **"))
    name = escape_markdown(practitioners["source_name"][undecided[0]])
    assert listed.count("\n- **") == 1 and f"- **{name}**: {escape_markdown(why)}" in listed.splitlines()
    # One cell edit in the grid: the first former practitioner's appointments go to a colleague ...
    at.session_state["mapping_practitioners"] = {
        "edited_rows": {undecided[0]: {"action": "reassign", "target_id": colleague}},
        "added_rows": [],
        "deleted_rows": [],
    }
    at.run()
    assert at.data_editor(key="mapping_practitioners").value["status"][undecided[0]] == "✓ decided"
    assert next(w.value for w in at.warning).startswith("1 row needs a decision")
    # ... and the rest at once: excluded, so their appointments are skipped with that reason.
    at.selectbox(key="decide_practitioners").set_value("exclude").run()
    at.button(key="decide_practitioners_apply").click().run()
    assert not at.warning and "Every row is decided." in [s.value for s in at.success]
    assert at.download_button(key="mapping_save").label == "Save the mapping as JSON"

    # Loading a mapping file puts its decisions onto the tables.
    rows: list = []
    for frame in at.session_state["mapping"].values():
        rows += read_table(frame)[0]
    types = [r for r in rows if r.entity == "appointment_types"]
    renamed = types[0].model_copy(update={"action": "create", "target_id": None})
    edited = [renamed if r is types[0] else r for r in rows]
    at.file_uploader(key="mapping_upload").upload("clinic-mapping.json", mapping_json(edited).encode()).run()
    assert f"Loaded {len(rows)} decisions from clinic-mapping.json." in [s.value for s in at.success]
    loaded = at.session_state["mapping"]["appointment_types"]
    assert loaded.filter(pl.col("source_id") == renamed.source_id)["action"].to_list() == ["create"]

    # 4. Scope: all data, every data type ticked, each with what it means.
    follow(at, "next_scope", "scope")
    assert at.radio(key="scope_kind").value == "all"
    for data_type in (*CORE_TYPES, *OPTIONAL_TYPES, "invoices"):
        assert at.checkbox(key=f"include_{data_type}").value is True
    meanings = " ".join(at.radio(key="scope_kind").proto.captions)
    assert "Notes, files and medical alerts belong to a patient rather than to a business" in meanings

    # 5. Run: in the background, followed from the ledger.
    follow(at, "next_run", "run")
    at.button(key="run_start").click().run()
    assert not at.error, [e.value for e in at.error]
    assert "completed" in wait_for_status(at, "completed", "failed")
    with Ledger(workspace) as ledger:
        (batch,) = ledger.batches()
        by_action = {a: 0 for a in ("created", "linked", "already_present", "skipped")}
        for per_action in ledger.counts(batch.id).values():
            for action, n in per_action.items():
                by_action[action] += n
    assert batch.status == "completed"
    shown = metrics(at)
    assert shown["Created"] == f"{by_action['created']:,}"
    assert shown["Linked"] == f"{by_action['linked']:,}"
    assert shown["Already present"] == f"{by_action['already_present']:,}"
    assert shown["Skipped"] == f"{by_action['skipped']:,}"
    assert by_action["skipped"] > 0  # the excluded practitioner's appointments
    assert sum(by_action.values()) == table["Records"].sum()  # every record in scope, accounted for
    bars = at.get("progress")
    assert len(bars) == len(table) and all(bar.value == 100 for bar in bars)
    assert f"Batch {batch.id} is complete" in texts(at)

    # 6. Review: nothing missing, the skipped rows with their reasons, balances equal.
    follow(at, "next_review", "review")
    assert "Every record the batch brought is in the destination." in [s.value for s in at.success]
    reconciled = at.dataframe[0].value
    assert (reconciled["Difference"] == 0).all()
    assert set(formats(at.dataframe[0])) == {c for c in reconciled.columns if c != "Data type"}
    assert reconciled["In scope"].sum() == table["Records"].sum()
    # The former practitioner reassigned to a colleague is in the colleague's record: 7 records for 8.
    practitioners = reconciled.set_index("Data type").loc["Practitioners"]
    assert (practitioners["In the destination"], practitioners["As destination records"]) == (8, 7)
    assert (
        "Practitioners: the batch's 8 in the destination are 7 destination records, as the mapping sent several "
        "to one (former practitioners given to one generic Former practitioner or to a colleague); that is how "
        "In the destination can exceed Destination total."
    ) in [c.value for c in at.caption]
    others = reconciled.set_index("Data type").drop("Practitioners")
    assert (others["As destination records"] == others["In the destination"]).all()
    assert at.multiselect(key="review_skip_reasons").options == ["practitioner_excluded"]
    at.multiselect(key="review_skip_entities").set_value(["individual_appointments"]).run()
    with Ledger(workspace) as ledger:
        skipped_appointments = ledger.counts(batch.id)["individual_appointments"]["skipped"]
    assert f"{skipped_appointments:,} of {by_action['skipped']:,} skipped records shown." in texts(at)
    at.button(key="review_balances").click().run()
    assert not at.error
    # The page's bar followed the read of the source's invoices to the last page, then went.
    assert followed[-1] == (counts["invoices"], counts["invoices"]) and len(followed) > 1
    assert not at.get("progress")
    shown = metrics(at)
    with Ledger(workspace) as ledger:
        patients = ledger.counts(batch.id)["patients"]
    assert shown["Patients compared"] == f"{patients['created'] + patients['linked']:,}"
    assert shown["Balances that differ"] == "0"
    assert formats(at.dataframe[-1]) == dict.fromkeys(  # the balances table: cents shown, 133.20
        ("Owed at the source", "Owed here", "Difference"), "%.2f"
    )
    # A fresh count at the source: nothing changed there, so each list holds what the batch found.
    at.button(key="review_source_counts").click().run()
    assert not at.error, [e.value for e in at.error]
    recounted = at.dataframe[0].value.set_index("Data type")
    assert recounted.loc["Appointments", "At the source now"] == source_counts(at)["individual_appointments"]
    assert (recounted["Source difference"] == 0).all() and (recounted["Difference"] == 0).all()
    assert {b.key for b in at.download_button} >= {
        f"download_{batch.id}-counts_csv",
        f"download_{batch.id}-counts_parquet",
        f"download_{batch.id}-skipped_csv",
        f"download_{batch.id}-balances_parquet",
    }
    # Open invoices of 45 patients raised by 1.00 in the store: more differences than the chart names.
    with sqlite3.connect(workspace / "clinic.db") as conn:
        raised = conn.execute(
            "UPDATE invoices SET total_amount = printf('%.2f', total_amount + 1) WHERE id IN "
            "(SELECT min(id) FROM invoices WHERE status = 10 GROUP BY patient_id LIMIT 45)"
        ).rowcount
    assert raised == 45
    with sqlite3.connect(workspace / "clinic.db") as conn:  # and a paid invoice given to another patient
        paid, owner = conn.execute(
            "SELECT i.id, p.source_id FROM invoices i JOIN patients p ON p.id = i.patient_id"
            " WHERE i.status = 20 ORDER BY i.id LIMIT 1"
        ).fetchone()
        taker_id, taker = conn.execute(
            "SELECT id, source_id FROM patients WHERE source_id IS NOT NULL AND source_id != ? ORDER BY id LIMIT 1",
            (owner,),
        ).fetchone()
        conn.execute("UPDATE invoices SET patient_id = ? WHERE id = ?", (taker_id, paid))
    at.button(key="review_balances").click().run()
    assert metrics(at)["Balances that differ"] == "45"
    assert "45 patients' balances differ from Cliniko's; they are listed first." in [
        w.value for w in at.warning
    ]
    assert "The chart shows the 40 largest differences of 45; the table below lists them all." in [
        c.value for c in at.caption
    ]
    assert at.dataframe[-2].value["Difference"].astype(float).tolist()[:45] == [1.0] * 45
    # Which no balance shows: the paid invoice, named under its own warning.
    assert (
        "1 invoice is with another patient here than in Cliniko. A paid or closed invoice owes nothing, so no "
        "balance above shows the move: this list does. Patients are named by their Cliniko id; an empty one here "
        "is a patient no batch brought."
    ) in [w.value for w in at.warning]
    moved = at.dataframe[-1].value
    assert moved[["Invoice here", "Status", "Patient in Cliniko", "Patient here"]].values.tolist() == [
        [str(paid), 20, owner, taker]
    ]

    # 7. Batches: listed with its counts; deleted only after typing the confirmation.
    follow(at, "next_batches", "batches")
    listed = at.dataframe[0].value
    assert listed["Batch"].tolist() == [batch.id] and listed["Status"].tolist() == ["completed"]
    assert listed["Created"].tolist() == [by_action["created"]]
    preview_of_deletion = at.dataframe[1].value.set_index("Data type")
    assert preview_of_deletion.loc["Patients", "Created by the batch"] == patients["created"]
    assert "Deleting its patients also deletes everything created for those patients" in texts(at)
    assert at.button(key="delete_go").disabled
    at.text_input(key="delete_confirm").input("delete it").run()
    assert at.button(key="delete_go").disabled
    assert "Type DELETE in capital letters, exactly, to enable the button." in [c.value for c in at.caption]
    at.text_input(key="delete_confirm").input("delete").run()
    assert at.button(key="delete_go").disabled
    assert "Type DELETE in capital letters, exactly, to enable the button (you typed it in lower case)." in [
        c.value for c in at.caption
    ]
    at.text_input(key="delete_confirm").input("DELETE").run()
    assert not [c.value for c in at.caption if c.value.startswith("Type DELETE")]
    at.button(key="delete_go").click().run()
    assert not at.exception and not at.error
    assert f"Batch {batch.id} is deleted: {by_action['created']:,} records were removed." in texts(at)
    assert at.dataframe[0].value["Status"].tolist() == ["deleted"]
    ledger, store = open_local_store(batch.destination, workspace)
    with ledger:
        assert ledger.batch(batch.id).status == "deleted"
        assert all(store.count(entity, batch.id) == 0 for entity in store.DELETE_ORDER)
        assert store.count_set_up("practitioners") == 6  # the clinic's own set-up stays


def test_a_new_tab_follows_the_run_and_neither_stops_nor_doubles_it(
    console: Callable[[], AppTest], workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIGRATOR_REQUESTS_PER_MINUTE", "900")  # slow enough to catch it running
    first = console()
    connect_and_decide(first)
    goto(first, "run")
    first.button(key="run_start").click().run()
    batch_id = first.session_state["run_batch"]
    assert "running" in wait_for_status(first, "running", "completed")
    # 201 requests at 900 a minute: the Run page says how long is left.
    assert "About a minute left at the key's pace." in [c.value for c in first.caption]

    # A refresh or a second tab is a new session: no key, but it follows the same run.
    second = goto(console(), "run")
    assert f"Batch {batch_id}" in [h.value for h in second.subheader]
    assert "Status: **running**" in [m.value for m in second.markdown]
    assert "run_start" not in [b.key for b in second.button]  # not connected: nothing to start
    (handle,) = run_registry().active()
    assert handle.batch_id == batch_id
    # It says so wherever it lands, and why it is not connected (a reload once looked idle).
    running = (
        f"Batch {batch_id} is running in the background, from {handle.plan.source_account}: "
        "follow or stop it on the Run page."
    )
    assert running in [c.value for c in second.sidebar.caption]
    landing = console()  # a reload lands on Connect
    assert running in [c.value for c in landing.sidebar.caption]
    assert [i.value for i in landing.info if i.value.startswith(running)] == [
        f"{running} It does not need this page. Keys live only in the memory of the browser session that "
        "typed them, so a reloaded page or a new tab starts unconnected: connect again to start, resume or "
        "top up a run."
    ]
    assert not [i.value for i in goto(first, "connect").info if i.value.startswith(running)]  # connected

    # The first tab cannot start a second run while this one goes (the registry joins or refuses: test_background).
    goto(first, "run")
    assert first.button(key="run_start").disabled

    # The second tab stops it; the batch is resumable.
    second.button(key="run_stop").click().run()
    assert "stopped" in wait_for_status(second, "stopped")
    assert "run_resume" not in [b.key for b in second.button]  # resuming needs the key
    with Ledger(workspace) as ledger:
        assert ledger.batch(batch_id).status == "stopped"

    # The connected tab resumes it, to the same end as one clean run.
    goto(first, "run")
    first.button(key="run_resume").click().run()
    assert not first.error, [e.value for e in first.error]
    assert "completed" in wait_for_status(first, "completed", "failed")
    with Ledger(workspace) as ledger:
        assert [b.id for b in ledger.batches()] == [batch_id]
        counts = ledger.counts(batch_id)
        assert [a["action"] for a in ledger.audit_log(batch_id)][-3:] == ["stop", "resume", "complete"]
    first.run()
    assert any(
        s.value.startswith(f"Batch {batch_id} is complete, ")
        and "s after it started (resumed 1 time)" in s.value
        for s in first.success
    ), [s.value for s in first.success]
    ledger, store = open_local_store(f"sqlite:{workspace / 'clinic.db'}", workspace)
    with ledger:
        created = counts["patients"]["created"]
        assert (
            store.count("patients", batch_id)
            == created
            == store.count("patients") - store.count_set_up("patients")
        )
    in_scope = {e: sum(v.values()) for e, v in counts.items()}
    assert in_scope["individual_appointments"] == source_counts(first)["individual_appointments"]
    assert json.dumps(counts)  # plain data all through


def test_a_business_filter_narrows_the_preview(console: Callable[[], AppTest]) -> None:
    at = console()
    at.button(key="use_demo").click().run()
    goto(at, "scope")
    at.radio(key="scope_kind").set_value("business").run()
    assert "Choose at least one of the businesses" in texts(at) and "next_run" not in [
        b.key for b in at.button
    ]
    businesses = at.multiselect(key="scope_businesses")
    first = businesses.options[0]
    businesses.select(first).run()
    assert "next_run" in [b.key for b in at.button]
    business_id = at.session_state["plan_scope"].ids[0]

    goto(at, "preview")
    assert f"Only business {first}" in texts(at)
    table = at.dataframe[0].value.set_index("Data type")
    config = ClientConfig(url_template=at.session_state["url_template"], requests_per_minute=0)
    with ClinikoClient(at.session_state["source_key"], config=config) as client:
        at_business = client.count("individual_appointments", [Filter("business_id", "=", business_id)])
        everywhere = client.count("individual_appointments")
    assert table.loc["Appointments", "Records"] == at_business < everywhere
    assert table.loc["Appointments", "Estimate"] == "" and table.loc["Patients", "Estimate"] == "≈"
    assert metrics(at)["Records to read"].startswith("≈ ")
    assert "≈ marks estimates" in texts(at)


def test_a_top_up_from_the_run_page_brings_only_what_changed_and_says_what_it_saved(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    at = console()
    connect_and_decide(at)
    goto(at, "run")
    at.button(key="run_top_up").click().run()  # nothing completed yet: one sentence, nothing started
    assert [e.value for e in at.error] == [
        "No batch of this plan has completed yet, so there is nothing to top up: run it in full once first "
        "(a changed mapping, filter or data types make a new plan)."
    ]
    with Ledger(workspace) as ledger:
        assert ledger.batches() == []

    at.button(key="run_start").click().run()
    assert "completed" in wait_for_status(at, "completed", "failed")
    # The clinic edits one patient in Cliniko (an edit, so the shared demo clinic keeps its counts).
    config = ClientConfig(url_template=at.session_state["url_template"], requests_per_minute=0)
    with ClinikoClient(at.session_state["source_key"], config=config, writable=True) as clinic:
        patient = next(iter(clinic.pages("patients"))).records[0]
        clinic.put(f"/patients/{patient['id']}", {"occupation": "Lighthouse keeper"})

    at.button(key="run_top_up").click().run()
    assert not at.error, [e.value for e in at.error]
    assert "completed" in wait_for_status(at, "completed", "failed")
    with Ledger(workspace) as ledger:
        top_up, first = ledger.batches()  # newest first
        items = [i for i in ledger.items(top_up.id) if i.reason_code not in ("earlier_batch",)]
        first_requests = ledger.batch_requests(first.id)
        top_up_requests = ledger.batch_requests(top_up.id)
    assert [(i.entity, i.source_id, i.action, i.reason_code) for i in items] == [
        ("patients", str(patient["id"]), "already_present", "updated")
    ]
    assert top_up_requests < first_requests / 3
    assert (
        f"Top-up of batch {first.id}: {top_up_requests:,} requests, "
        f"{first_requests - top_up_requests:,} fewer than the full run's {first_requests:,}."
    ) in [i.value for i in at.info]
    assert (
        "Updated in place 1 record an earlier batch brought (1 patient): changed in Cliniko since, edited here, "
        "or given another mapping. The Review page lists each with why."
    ) in [i.value for i in at.info]
    goto(at, "review")
    assert "Records updated in place" in [s.value for s in at.subheader]

    # The next day, in a new session: the Mapping page starts from the last batch's decisions (matching
    # afresh would map what the run created, a new plan with nothing to top up), so the sweep still works.
    later = console()
    later.button(key="use_demo").click().run()
    goto(later, "mapping")
    assert (
        f"Took 19 decisions and the scope from batch {top_up.id}, so running it again or topping it up continues that "
        "batch's plan. 'Match again from the source' starts afresh."
    ) in [s.value for s in later.success]
    assert "Every row is decided." in [s.value for s in later.success]
    # The appointment types the first run created are still 'create' rows (the plan's decisions), and say
    # that running again finds them rather than create them twice.
    types = later.data_editor(key="mapping_appointment_types").value
    made = types[types["action"] == "create"]
    assert len(made) > 0 and made["note"].str.startswith("Created in the destination by an earlier run").all()
    goto(later, "run")
    later.button(key="run_top_up").click().run()
    assert not later.error, [e.value for e in later.error]
    assert "completed" in wait_for_status(later, "completed", "failed")
    with Ledger(workspace) as ledger:
        assert [b.id for b in ledger.batches()][1:] == [top_up.id, first.id]
        decisions = [
            [(r["source_id"], r["action"], r["target_id"]) for r in b.plan["mappings"]]
            for b in (ledger.batches()[0], first)
        ]
        assert decisions[0] == decisions[1]
    # Matching afresh forgets them: the two former practitioners need a decision again.
    goto(later, "mapping")
    later.button(key="mapping_rebuild").click().run()
    table = later.data_editor(key="mapping_practitioners").value
    assert table["status"].str.contains("needs a decision").sum() == 2


def test_a_new_session_starts_from_the_last_batchs_decisions_and_scope(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    at = console()
    connect_and_decide(at)
    goto(at, "scope")
    at.radio(key="scope_kind").set_value("business").run()
    businesses = at.multiselect(key="scope_businesses")
    businesses.select(businesses.options[0]).run()
    at.checkbox(key="include_invoices").uncheck().run()
    chosen = (at.session_state["plan_scope"], list(at.session_state["plan_include"]))
    assert "invoices" not in chosen[1]
    goto(at, "run")
    at.button(key="run_start").click().run()
    assert "completed" in wait_for_status(at, "completed", "failed")
    with Ledger(workspace) as ledger:
        (first,) = ledger.batches()

    later = console()
    later.button(key="use_demo").click().run()
    goto(later, "mapping")
    assert "Every row is decided." in [s.value for s in later.success]
    goto(later, "scope")
    assert later.radio(key="scope_kind").value == "business"
    assert later.multiselect(key="scope_businesses").value == chosen[0].ids
    assert later.checkbox(key="include_invoices").value is False
    assert (later.session_state["plan_scope"], list(later.session_state["plan_include"])) == chosen
    goto(later, "run")
    later.button(key="run_top_up").click().run()
    assert not later.error, [e.value for e in later.error]
    assert "completed" in wait_for_status(later, "completed", "failed")
    with Ledger(workspace) as ledger:
        top_up = ledger.batches()[0]
        assert any(e["action"] == "top_up" for e in ledger.audit_log(top_up.id))
        assert top_up.plan["scope"] == first.plan["scope"] and top_up.plan["include"] == first.plan["include"]


def test_a_mapping_to_a_record_the_store_lacks_holds_the_run_back(console: Callable[[], AppTest]) -> None:
    """A loaded file mapping a practitioner to an id the store does not have is not "decided"."""
    at = console()
    connect_and_decide(at)
    rows: list = []
    for frame in at.session_state["mapping"].values():
        rows += read_table(frame)[0]
    mapped = next(r for r in rows if r.entity == "practitioners" and r.action == "map")
    edited = [r.model_copy(update={"target_id": "999"}) if r is mapped else r for r in rows]
    at.file_uploader(key="mapping_upload").upload("edited.json", mapping_json(edited).encode()).run()

    assert "Every row is decided." not in [s.value for s in at.success]
    assert f"{mapped.source_name!r} (source id {mapped.source_id}) points at destination id 999" in texts(at)
    assert "1 row still needs a decision; the run waits for every row to be decided." in texts(at)
    goto(at, "run")
    assert "1 row still needs a decision on the Mapping page." in texts(at)
    assert at.button(key="run_start").disabled and at.button(key="run_top_up").disabled


def test_with_no_data_type_ticked_nothing_runs(console: Callable[[], AppTest]) -> None:
    """Unticking every data type once ran the types ticked before; now the run waits, saying why."""
    at = console()
    connect_and_decide(at)
    goto(at, "scope")
    for box in at.checkbox:
        if box.key.startswith("include_") and box.key != "include_archived" and box.value:
            box.uncheck().run()
    assert "Tick at least one data type." in texts(at) and "next_run" not in [b.key for b in at.button]

    goto(at, "preview")
    assert "Tick at least one data type on the Scope page." in texts(at) and not at.metric
    goto(at, "run")
    assert "Tick at least one data type on the Scope page." in texts(at)
    assert at.button(key="run_start").disabled and at.button(key="run_top_up").disabled

    goto(at, "scope")
    at.checkbox(key="include_patients").check().run()
    assert "next_run" in [b.key for b in at.button]
    goto(at, "run")
    assert not at.button(key="run_start").disabled
