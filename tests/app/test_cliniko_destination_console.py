"""The console with another Cliniko account as the destination (issue 5), on the tiny demo clinic.

The demo sandbox hosts a destination account too; ``MIGRATOR_DEMO_SIZE=tiny`` keeps the
transfer small (a Cliniko destination costs one request per record written).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr
from streamlit.testing.v1 import AppTest

from migrator.batches import ledger_deletion_plan
from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.ledger import Ledger
from migrator.mapping_editor import ACTION_LABELS
from migrator.sandbox.accounts import make_key
from tests.app.conftest import goto, metrics, recounted_at_the_source, texts, wait_for_status

CLINIKO = "Another Cliniko account"


@pytest.fixture(autouse=True)
def tiny_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATOR_DEMO_SIZE", "tiny")


def destination_client(at: AppTest, side: str = "dest") -> ClinikoClient:
    config = ClientConfig(url_template=at.session_state["url_template"], requests_per_minute=0)
    return ClinikoClient(at.session_state[f"{side}_key"], config=config)


def patients_in(client: ClinikoClient) -> tuple[int, int]:
    """The destination's live and archived patients."""
    return client.count("patients"), client.count("patients", route="archived")


def connect_cliniko(at: AppTest) -> None:
    at.button(key="use_demo").click().run()
    at.radio(key="destination_choice").set_value(CLINIKO).run()
    assert at.button(key="verify_dest").label == "Use the demo destination account"
    at.button(key="verify_dest").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]


def test_the_demo_transfers_into_the_demo_destination_account_and_goes_live(
    console: Callable[[], AppTest], workspace: Path
) -> None:
    at = console()

    # 1. Connect: the demo destination account, verified, with its pre-flight.
    connect_cliniko(at)
    assert any("Pre-flight passed" in s.value for s in at.success)
    assert "The destination account holds" in texts(at)
    assert "No patient is messaged" in texts(at)
    target = at.session_state["dest_target"]
    assert target.startswith("cliniko:")
    secret = at.session_state["dest_key"].get_secret_value()
    assert secret not in texts(at)
    with destination_client(at) as client:
        live_before, archived_before = patients_in(client)

    # 2. Preview: what a Cliniko account cannot take, and no invoices counted.
    goto(at, "preview")
    assert "Not transferred into a Cliniko account" in texts(at)
    counted = at.dataframe[0].value.set_index("Data type")["Records"]
    assert "Invoices" not in counted and "Invoice items" not in counted
    # Each record is a write of its own on the destination's key, a file two; practitioners, businesses
    # and concession types, which Cliniko's API cannot create, none; a cancellation or an archive one more.
    uncreated = ["Practitioners", "Businesses", "Concession types"]
    with destination_client(at, "source") as source:
        follow_ups = source.count("patients", route="archived") + sum(
            source.count(entity, route="cancelled") for entity in ("individual_appointments", "attendees")
        )
    assert follow_ups > 0
    writes = counted.drop(uncreated, errors="ignore").sum() + counted["Patient files"] + follow_ups
    shown = metrics(at)
    assert shown["Writes into Cliniko"] == f"{writes:,}" and shown["Minutes at the keys' pace"] == "unpaced"

    # 3. Mapping: against the Cliniko account; practitioners and businesses cannot be created there.
    goto(at, "mapping")
    assert not at.error, [e.value for e in at.error]
    assert any(
        "a generic Former practitioner (one the clinic has set up in that account" in w.value
        for w in at.warning
    )
    for entity in ("businesses", "practitioners", "appointment_types"):
        decide = [s for s in at.selectbox if s.key == f"decide_{entity}"]
        if not decide:
            continue
        if entity != "appointment_types":
            assert ACTION_LABELS["create"] not in decide[0].options
            assert ACTION_LABELS["former"] not in decide[0].options  # Cliniko cannot create it
            decide[0].set_value("exclude").run()
        else:
            decide[0].set_value("create").run()
        at.button(key=f"decide_{entity}_apply").click().run()
        assert not at.exception
    assert "Every row is decided." in [s.value for s in at.success]

    # 4. Scope: no money.
    goto(at, "scope")
    keys = {c.key for c in at.checkbox}
    assert "include_invoices" not in keys and "include_patients" in keys

    # 5. Run: into the Cliniko account.
    goto(at, "run")
    assert "through its API" in texts(at)
    at.button(key="run_start").click().run()
    assert not at.error, [e.value for e in at.error]
    assert "completed" in wait_for_status(at, "completed", "failed", timeout=240)
    with Ledger(workspace) as ledger:
        (batch,) = ledger.batches()
        created = ledger.counts(batch.id)["patients"]["created"]
    assert batch.destination == target and created > 0
    assert "invoices" not in batch.plan["include"]
    with destination_client(at) as client:
        live_after, archived_after = patients_in(client)
    assert live_after + archived_after == live_before + archived_before + created

    # Go live: nobody is messaged until then; then every created patient's preferences come back.
    assert "No patient is messaged yet" in texts(at)
    assert at.button(key="go_live").disabled
    at.checkbox(key="go_live_confirm").check().run()
    at.button(key="go_live").click().run()
    assert not at.error, [e.value for e in at.error]
    assert f"reminder and confirmation preferences restored for {created:,} patients." in texts(at)
    assert "go_live" not in [b.key for b in at.button]

    # 6. Review: the opening balances, with a CSV.
    goto(at, "review")
    assert not at.error, [e.value for e in at.error]
    assert "Cliniko cannot import financials" in texts(at)
    at.button(key="review_opening_balances").click().run()
    assert not at.error, [e.value for e in at.error]
    opening = at.dataframe[-1].value
    assert {"Patient", "Outstanding", "Open invoices"} <= set(opening.columns)
    assert f"download_{batch.id}-opening-balances_csv" in {b.key for b in at.download_button}
    counted = at.dataframe[0].value.set_index("Data type")
    assert counted.loc["Patients", "In the destination"] == created
    # What Cliniko's API cannot create is skipped with a sentence naming it in English.
    reasons = {
        r["Data type"]: r["Reason"]
        for frame in at.dataframe
        if {"Code", "Reason"} <= set(frame.value.columns)
        for r in frame.value.to_dict("records")
    }
    assert reasons["Concession types"] == (
        "Cliniko's API cannot create concession types; set them up in the destination account."
    )

    # Without the destination's key, a fresh count at the source keeps the destination's last count.
    goto(at, "connect")
    at.radio(key="destination_choice").set_value("The local clinic store (on this computer)").run()
    goto(at, "review")
    assert "connect a key of that account as the destination" in texts(at)
    at.button(key="review_source_counts").click().run()
    assert recounted_at_the_source(at).loc["Patients", "In the destination"] == created
    goto(at, "connect")
    connect_cliniko(at)
    assert at.session_state["dest_target"] == target

    # 7. Batches: deleted with the session's destination; patients archived, not deleted.
    goto(at, "batches")
    assert "archived" in texts(at)
    with Ledger(workspace) as ledger:
        planned = ledger_deletion_plan(ledger, batch.id)
    archived = len(planned.created["patients"])
    assert archived == created > 1
    at.text_input(key="delete_confirm").input("DELETE").run()
    at.button(key="delete_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    # The records removed and the patients archived, each counted once.
    assert (
        f"Batch {batch.id} is deleted: {planned.total - archived:,} records were removed and its {archived:,} "
        "patients archived (Cliniko's API cannot delete patients)."
    ) in texts(at)
    with Ledger(workspace) as ledger:
        assert ledger.batch(batch.id).status == "deleted"
    with destination_client(at) as client:
        live_now, _ = patients_in(client)
    assert live_now == live_before


def verify_typed_destination(at: AppTest, key_on: Callable[[str], str]) -> str:
    """Connect the demo, then type ``key_on(the demo's shard)`` as a Cliniko destination's key and verify it."""
    at.button(key="use_demo").click().run()
    key = key_on(at.session_state["dest_key"].get_secret_value().rsplit("-", 1)[1])
    at.radio(key="destination_choice").set_value(CLINIKO).run()
    at.text_input(key="dest_key_input").input(key).run()
    at.button(key="verify_dest").click().run()
    return key


def test_an_administrator_who_is_not_a_practitioner_is_refused_by_the_pre_flight(
    console: Callable[[], AppTest],
) -> None:
    at = console()
    key = verify_typed_destination(at, lambda shard: make_key(1, "destination_admin_not_practitioner", shard))
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("who is not an active practitioner" in e for e in errors), errors
    assert all(key not in e for e in errors)
    assert "dest_target" not in at.session_state
    # Runs still go into the local store: nothing points at the refused account.
    assert isinstance(at.session_state["dest_key"], SecretStr)
    assert at.session_state["dest_key"].get_secret_value() != key


def test_a_destination_key_cliniko_refuses_is_named_as_the_destinations(
    console: Callable[[], AppTest],
) -> None:
    at = console()
    unknown = verify_typed_destination(at, lambda shard: "MS" + "0" * 40 + "-" + shard)
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert error.startswith("Cliniko did not accept the destination API key (HTTP 401)"), error
    assert unknown not in error and "dest_target" not in at.session_state
    assert at.session_state["source_identity"] is not None  # the source stays connected
