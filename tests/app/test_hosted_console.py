"""The hosted console (MIGRATOR_MODE=hosted) under AppTest: sign-in, one clinic's whole flow, other clinics, operators.

The clinics are sandbox accounts of their own (``tests.hosted_clinics``); the console reaches them
through ``MIGRATOR_API_URL``, as a hosted instance reaches Cliniko.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from streamlit.testing.v1 import AppTest

from migrator.cliniko.client import ClinikoClient
from migrator.destinations.cliniko import _Write, _WriteLog
from migrator.hosted import KeyLease, hash_password
from migrator.ledger import Ledger
from migrator.opening_balance import opening_balances
from tests.app.conftest import errors_below, goto, recounted_at_the_source, texts, wait_for_status
from tests.hosted_clinics import Clinics, running_clinics, tenant_of

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
OPERATORS = {"migrator": {"operators": {"bob": {"password_hash": hash_password(PASSWORD)}}}}


@pytest.fixture(scope="module")
def clinics() -> Iterator[Clinics]:
    with running_clinics((3, 4)) as running:
        yield running


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clinics: Clinics) -> Path:
    folder = tmp_path / "workspace"
    monkeypatch.setenv("MIGRATOR_MODE", "hosted")
    monkeypatch.setenv("MIGRATOR_API_URL", clinics.url_template)
    monkeypatch.setenv("MIGRATOR_WORKSPACE", str(folder))
    monkeypatch.setenv("MIGRATOR_REQUESTS_PER_MINUTE", "0")
    return folder


@pytest.fixture
def session(workspace: Path) -> Callable[..., AppTest]:
    """A new browser session of the hosted console, optionally with secrets and an OIDC user."""

    def open_session(secrets: dict[str, Any] | None = None, user: dict[str, Any] | None = None) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.secrets.update(secrets or {})
        if user is not None:
            at.user = user
        at.run()
        assert not at.exception, at.exception
        return at

    return open_session


def sign_in(at: AppTest, key: str) -> AppTest:
    at.text_input(key="sign_in_key").input(key)
    at.button(key="sign_in_clinic").click().run()
    assert not at.exception, at.exception
    return at


def lease(at: AppTest) -> KeyLease:
    found = at.session_state["key_lease"]
    assert isinstance(found, KeyLease)
    return found


def decide_and_run(at: AppTest) -> str:
    """Decide the former practitioners (exclude), start the run, wait for it; returns the batch id."""
    goto(at, "mapping")
    at.selectbox(key="decide_practitioners").set_value("exclude").run()
    at.button(key="decide_practitioners_apply").click().run()
    assert "Every row is decided." in [s.value for s in at.success]
    goto(at, "run")
    at.button(key="run_start").click().run()
    assert not at.error, [e.value for e in at.error]
    batch_id = str(at.session_state["run_batch"])
    assert "completed" in wait_for_status(at, "completed", "failed", timeout=60)
    return batch_id


def session_values(at: AppTest, *, widgets: bool = True) -> str:
    """Everything the session holds, as text: a held key shows its secret here, on purpose.

    The user's entries and (``widgets``) Streamlit's own copies of every widget's value,
    keyed or not, so a key typed into a password box and not emptied would show too.
    """
    parts = [repr(at.session_state._state._state)] if widgets else []  # widget states, old and new
    for value in at.session_state.values():
        if isinstance(value, KeyLease):
            value = value.key
        parts.append(value.get_secret_value() if isinstance(value, SecretStr) else repr(value))
    return "\n".join(parts)


def forms(secret: str) -> list[bytes]:
    """The key, its base64, and base64 of ``key:`` as HTTP Basic sends it."""
    return [
        secret.encode(),
        base64.b64encode(secret.encode()),
        base64.b64encode(f"{secret}:".encode()),
    ]


def read_at_the_source(at: AppTest, button: str, *, refused: str, key: str, batch_id: str) -> None:
    """A Review read at the source: a key of another account refused under its button, then the source's key."""
    at.text_input(key=f"{button}_key").input(refused)
    at.button(key=button).click().run()
    assert errors_below(at, button) == [
        f"This key belongs to another Cliniko account; batch {batch_id} read from account {tenant_of(3)}, "
        "so it needs a key of that account."
    ]
    assert at.text_input(key=f"{button}_key").value == ""
    at.text_input(key=f"{button}_key").input(key)
    at.button(key=button).click().run()
    assert not at.error, [e.value for e in at.error]


def test_only_sign_in_shows_before_signing_in(session: Callable[..., AppTest]) -> None:
    at = session()
    assert [t.value for t in at.title] == ["Sign in"]
    assert "sign_in_key" in [t.key for t in at.text_input]
    assert "No operator sign-in is configured" in texts(at)
    at.text_input(key="sign_in_key").input("   ")
    at.button(key="sign_in_clinic").click().run()  # an empty box is answered, not ignored
    assert [e.value for e in at.error] == [
        "Enter an administrator's Cliniko API key of your clinic to sign in."
    ]
    with pytest.raises(ValueError, match=r"Known pages: \['[^']*views/connect_hosted\.py'\]"):
        at.switch_page("views/batches.py")  # the only page before sign-in is the sign-in page


def test_a_clinics_whole_flow_leaves_its_key_nowhere(
    session: Callable[..., AppTest],
    clinics: Clinics,
    workspace: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    key, non_admin = clinics.key(3), clinics.key(3, "source_non_admin")
    at = session()

    # A key without administrator rights is refused in one sentence; the box is emptied either way.
    sign_in(at, non_admin)
    (error,) = [e.value for e in at.error]
    assert error.startswith("This key belongs to Kate Lawson, who is not an administrator of Clinic 3;")
    assert "principal" not in at.session_state and at.text_input(key="sign_in_key").value == ""

    sign_in(at, key)
    assert at.session_state["principal"].tenant == tenant_of(3)
    assert [t.value for t in at.title] == ["Connect"]  # the same page, now Connect
    at.run()  # the rerun app.py asks for once a box is emptied (AppTest replays the old widget values)
    assert key not in repr(at.session_state._state._state)  # only the lease holds it, and never shows it
    assert "source_key" not in at.session_state and not lease(at).dropped
    goto(at, "connect_hosted")
    assert "Connected to **Clinic 3**" in texts(at)

    batch_id = decide_and_run(at)
    deadline = time.monotonic() + 10
    while not lease(at).dropped:  # the run's end drops the key, in the run's own thread
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert key not in session_values(at)
    goto(at, "connect_hosted")
    assert "This session holds no key now" in texts(at)

    # Review compares balances with a key of the clinic's account given for that read only.
    goto(at, "review")
    at.text_input(key="review_balances_key").input(key)
    at.button(key="review_balances").click().run()
    assert not at.error, [e.value for e in at.error]
    shown = {m.label: m.value for m in at.metric}
    with Ledger(workspace) as ledger:
        patients = ledger.counts(batch_id)["patients"]
    assert shown["Patients compared"] == f"{patients['created'] + patients['linked']:,}"
    assert shown["Balances that differ"] == "0"
    # So does a fresh count at the source: nothing changed there, and every record is in the store.
    at.text_input(key="review_source_counts_key").input(key)
    at.button(key="review_source_counts").click().run()
    assert (recounted_at_the_source(at)["Difference"] == 0).all()
    at.run()  # the rerun app.py asks for once a box is emptied
    assert key not in session_values(at)

    # Deleting needs an administrator's key of this account, checked now; a staff key is refused.
    goto(at, "batches")
    at.text_input(key="delete_admin_key").input(non_admin)
    at.text_input(key="delete_confirm").input("DELETE").run()
    at.button(key="delete_go").click().run()
    (error,) = [e.value for e in at.error]
    assert error == (
        "This key belongs to Kate Lawson, who is not an administrator of Clinic 3; "
        f"deleting batch {batch_id} needs an administrator's key."
    )
    assert at.text_input(key="delete_admin_key").value == ""
    at.text_input(key="delete_admin_key").input(key)
    at.text_input(key="delete_confirm").input("DELETE").run()
    at.button(key="delete_go").click().run()
    assert next(s.value for s in at.success).startswith(f"Batch {batch_id} is deleted:")
    assert key not in session_values(at, widgets=False) and non_admin not in session_values(at, widgets=False)
    at.run()  # the rerun app.py asks for (AppTest replays the last widget states on st.rerun; a browser does not)
    assert key not in session_values(at) and non_admin not in session_values(at)

    goto(at, "connect_hosted")
    at.button(key="sign_out_here").click().run()
    assert [t.value for t in at.title] == ["Sign in"] and "principal" not in at.session_state

    with Ledger(workspace) as ledger:
        trail = ledger.audit_log()
    done = {(e["action"], e["tenant"], e["role"]) for e in trail}
    for action in ("sign_in", "connect", "run", "complete", "delete", "deleted", "sign_out"):
        assert (action, tenant_of(3), "clinic") in done, action
    assert ("delete_refused", tenant_of(3), "clinic") in done and all(e["at"] for e in trail)

    # Nothing the instance wrote, nor any log line or output, holds either key in any form.
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "ledger.db" for p in written) and any(p.name == "clinic.db" for p in written)
    out, err = capfd.readouterr()
    logs = caplog.text + out + err
    assert "HTTP Request" in caplog.text or caplog.records  # the logs were really captured
    for secret in (key, non_admin):
        for form in forms(secret):
            for path in written:
                assert form not in path.read_bytes(), (path, form[:4])
            assert form.decode() not in logs


def test_reads_with_the_key_the_session_holds_are_audited_too(
    session: Callable[..., AppTest], clinics: Clinics, workspace: Path
) -> None:
    key = clinics.key(3)
    at = sign_in(session(), key)
    batch_id = decide_and_run(at)
    deadline = time.monotonic() + 10
    while not lease(at).dropped:  # the run's end drops the key
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The clinic verifies its key again: the Review page's reads then use it, with no key box.
    goto(at, "connect_hosted")
    at.text_input(key="source_key_input").input(key)
    at.button(key="verify_source").click().run()
    assert not at.error, [e.value for e in at.error]
    goto(at, "review")
    assert "review_balances_key" not in [t.key for t in at.text_input]
    at.button(key="review_balances").click().run()
    assert not at.error, [e.value for e in at.error]
    assert {m.label: m.value for m in at.metric}["Balances that differ"] == "0"
    at.button(key="review_source_counts").click().run()
    assert (recounted_at_the_source(at)["Difference"] == 0).all()

    with Ledger(workspace) as ledger:
        trail = ledger.audit_log(tenant=tenant_of(3))
    reads = sorted(
        (e["action"], e["batch_id"], e["role"], e["detail"]["read"], e["detail"]["key"])
        for e in trail
        if e["action"].startswith("review_read")
    )
    assert reads == [
        ("review_read", batch_id, "clinic", "balances", "session"),
        ("review_read", batch_id, "clinic", "source counts", "session"),
    ]


def test_another_clinic_sees_nothing_of_it_even_by_batch_id(
    session: Callable[..., AppTest], clinics: Clinics, workspace: Path
) -> None:
    first = sign_in(session(), clinics.key(3))
    batch_id = decide_and_run(first)

    other = sign_in(session(), clinics.key(4))
    assert other.session_state["principal"].tenant == tenant_of(4)
    for page, empty in (
        ("batches", "No batches yet"),
        ("review", "No batch to review yet"),
        ("run", "No run yet."),
    ):
        goto(other, page)
        assert empty in texts(other), page
        assert batch_id not in texts(other), page
    # Guessing the id: the Run page answers as for an unknown batch and shows nothing of it.
    other.session_state["run_batch"] = batch_id
    goto(other, "run")
    (error,) = [e.value for e in other.error]
    assert error.startswith(f"There is no batch {batch_id} in the ledger")
    assert "Status:" not in texts(other) and "run_stop" not in [b.key for b in other.button]

    # An operator sees it, and reads and exports the audit trail with tenants and roles.
    operator = session(OPERATORS)
    operator.text_input(key="operator_name").input("bob")
    operator.text_input(key="operator_password").input(PASSWORD)
    operator.button(key="sign_in_operator").click().run()
    assert operator.session_state["principal"].operator
    assert [t.value for t in operator.title] == ["Connect"]
    operator.run()  # the rerun app.py asks for once a box is emptied
    assert PASSWORD not in repr(operator.session_state._state._state)
    # A mistyped key is answered in one sentence under the box it was typed in.
    malformed = "The source API key has 2 '-' separators; a Cliniko key has at most one"
    operator.text_input(key="source_key_input").input("not-a-key")
    operator.button(key="verify_source").click().run()
    assert [e.value[: len(malformed)] for e in operator.error] == [malformed]
    assert len(errors_below(operator, "verify_source")) == 1
    operator.text_input(key="setup_key_input").input("not-a-key")
    operator.button(key="set_up_store").click().run()
    malformed = malformed.replace("source", "destination")  # the account the store is set up from
    assert [e[: len(malformed)] for e in errors_below(operator, "set_up_store")] == [malformed]
    assert len(operator.error) == 1
    goto(operator, "batches")
    assert operator.dataframe[0].value["Batch"].tolist() == [batch_id]
    goto(operator, "audit")
    frame = operator.dataframe[0].value
    assert {"sign_in", "run", "complete"} <= set(frame["action"])
    assert set(frame.loc[frame["action"] == "run", "tenant"]) == {tenant_of(3)}
    assert set(frame["role"].dropna()) == {"clinic", "operator"}
    assert (frame.loc[frame["actor"] == "operator:bob", "action"] == "sign_in").any()
    # The clinics go by their names, with their account ids beside them.
    (name,) = set(frame.loc[frame["tenant"] == tenant_of(3), "account"])
    assert name and f"{name} (account {tenant_of(3)})" in operator.multiselect(key="audit_tenants").options
    assert "audit_export" in [b.key for b in operator.get("download_button")]
    # Working for the other clinic, the operator's Run page follows that clinic's batches only.
    goto(operator, "connect_hosted")
    operator.text_input(key="source_key_input").input(clinics.key(4))
    operator.button(key="verify_source").click().run()
    assert not operator.error, [e.value for e in operator.error]
    other = operator.session_state["source_identity"].account
    assert f"Working on **{other}** (account {tenant_of(4)})." in [c.value for c in operator.sidebar.caption]
    goto(operator, "run")
    assert "No run yet." in texts(operator) and batch_id not in texts(operator)
    assert "tenants" not in texts(operator)  # the server's folders are not shown on a hosted instance


def test_operators_sign_in_with_a_password_or_an_allowed_oidc_account(
    session: Callable[..., AppTest], workspace: Path
) -> None:
    at = session(OPERATORS)
    at.text_input(key="operator_name").input("bob")
    at.text_input(key="operator_password").input("wrong password, long enough")
    at.button(key="sign_in_operator").click().run()
    assert [e.value for e in at.error] == [
        "That name and password do not match an operator of this instance."
    ]
    assert "principal" not in at.session_state

    oidc = {
        "auth": {
            "redirect_uri": "http://localhost:8501/oauth2callback",
            "cookie_secret": "x" * 32,
            "client_id": "migrator",
            "client_secret": "secret",
            "server_metadata_url": "http://127.0.0.1:1/.well-known/openid-configuration",
        },
        "migrator": {"operator_emails": ["alice@example.com"]},
    }
    allowed = session(oidc, user={"is_logged_in": True, "email": "alice@example.com", "email_verified": True})
    who = allowed.session_state["principal"]
    assert who.operator and who.method == "oidc" and who.name == "alice@example.com"
    goto(allowed, "audit")
    assert [t.value for t in allowed.title] == ["Audit trail"]

    refused = session(
        oidc, user={"is_logged_in": True, "email": "mallory@example.com", "email_verified": True}
    )
    assert "principal" not in refused.session_state
    assert "sign_in_oidc" in [b.key for b in refused.button]
    assert any("not one of this instance's operators" in e.value for e in refused.error)
    with Ledger(workspace) as ledger:
        actions = [(e["action"], e["actor"], e["detail"].get("method")) for e in ledger.audit_log()]
    assert ("sign_in", "operator:alice@example.com", "oidc") in actions
    assert ("sign_in_refused", "operator:mallory@example.com", "oidc") in actions
    assert ("sign_in_refused", "operator:bob", "password") in actions


def test_a_mistyped_mode_refuses_to_start_rather_than_open_up(
    session: Callable[..., AppTest], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIGRATOR_MODE", "hostd")
    at = session()
    assert [e.value for e in at.error] == ["MIGRATOR_MODE must be 'local' or 'hosted'; got 'hostd'."]
    assert not at.title and not at.text_input and not at.button


def test_a_clinic_writes_into_another_cliniko_account_and_no_key_outlives_its_step(
    session: Callable[..., AppTest], clinics: Clinics, workspace: Path, tmp_path: Path
) -> None:
    key, dest_key = clinics.key(3), clinics.key(3, "destination")
    admin_only = clinics.key(3, "destination_admin_not_practitioner")
    at = sign_in(session(), key)
    at.run()

    # Connect: the destination's key is checked with the pre-flight and leased, never kept bare.
    at.radio(key="destination_choice").set_value("Another Cliniko account").run()
    at.text_input(key="dest_key_input").input(dest_key)
    at.button(key="verify_dest").click().run()
    at.run()  # the rerun app.py asks for once a box is emptied
    assert not at.error, [e.value for e in at.error]
    assert any("Pre-flight passed" in s.value for s in at.success)
    target, dest_name = at.session_state["dest_target"], at.session_state["dest_check"].account_name
    dest_lease = at.session_state["dest_lease"]
    assert isinstance(dest_lease, KeyLease) and target == f"cliniko:{dest_lease.tenant}"
    assert dest_key not in repr(at.session_state._state._state)
    # A practitioner's own key, so that their notes keep their author: checked, held in a new lease.
    at.text_input(key="note_key_input").input(clinics.key(3, "destination_practitioner"))
    at.button(key="add_note_key").click().run()
    at.run()
    assert not at.error, [e.value for e in at.error]
    assert dest_lease.dropped  # replaced, not kept beside the new one
    dest_lease = at.session_state["dest_lease"]
    assert len(dest_lease.extra) == 1 and "1 practitioner's key held" in texts(at)
    # A key of another account is refused under its own box; what was checked before stays.
    at.text_input(key="note_key_input").input(key)
    at.button(key="add_note_key").click().run()
    assert errors_below(at, "add_note_key") == [
        "Note author's key 2 of 2 belongs to another Cliniko account than the destination key."
    ]
    assert len(at.error) == 1 and at.text_input(key="note_key_input").value == ""
    at.run()
    assert at.session_state["dest_lease"] is dest_lease and not dest_lease.dropped

    # Mapping: practitioners and businesses the account lacks cannot be created there: exclude them.
    goto(at, "mapping")
    for entity in ("businesses", "practitioners", "appointment_types"):
        decide = [s for s in at.selectbox if s.key == f"decide_{entity}"]
        if decide:
            decide[0].set_value("create" if entity == "appointment_types" else "exclude").run()
            at.button(key=f"decide_{entity}_apply").click().run()
    assert "Every row is decided." in [s.value for s in at.success]
    goto(at, "run")
    assert "through its API" in texts(at)
    at.button(key="run_start").click().run()
    assert not at.error, [e.value for e in at.error]
    assert "completed" in wait_for_status(at, "completed", "failed", timeout=120)
    batch_id = str(at.session_state["run_batch"])
    deadline = time.monotonic() + 10
    while not (lease(at).dropped and dest_lease.dropped):  # both go when the run ends
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert key not in session_values(at) and dest_key not in session_values(at)
    with Ledger(workspace) as ledger:
        assert ledger.batch(batch_id).destination == target
        created = ledger.counts(batch_id)["patients"]["created"]
    assert created > 0

    # Go live: an administrator's key of the destination account, checked then and not kept.
    at.checkbox(key="go_live_confirm").check().run()
    at.text_input(key="go_live_admin_key").input(key)  # the clinic's own key: another account
    at.button(key="go_live").click().run()
    (error,) = [e.value for e in at.error]
    assert "another Cliniko account" in error and at.text_input(key="go_live_admin_key").value == ""
    at.checkbox(key="go_live_confirm").check().run()
    at.text_input(key="go_live_admin_key").input(admin_only)
    at.button(key="go_live").click().run()
    assert not at.error, [e.value for e in at.error]
    assert f"reminder and confirmation preferences restored for {created:,} patients." in texts(at)

    # Review: the session holds no key of the destination now; one is asked for the count only.
    goto(at, "review")
    assert "Not counted in the destination yet" in texts(at)
    named = f"This batch wrote into Cliniko account {dest_name} ({target.removeprefix('cliniko:')}), and"
    assert dest_name and named in texts(at)
    assert "Every record the batch brought is in the destination." not in texts(at)
    at.text_input(key="review_dest_key").input(key)  # the clinic's own key: another account
    at.button(key="review_dest_count").click().run()
    assert errors_below(at, "review_dest_count") == [
        f"This key belongs to another Cliniko account; counting what batch {batch_id} brought needs a key "
        f"of account {target.removeprefix('cliniko:')}, which it wrote into."
    ]
    assert at.text_input(key="review_dest_key").value == ""
    at.text_input(key="review_dest_key").input(admin_only)  # any user's key of the account will do
    at.button(key="review_dest_count").click().run()
    assert not at.error, [e.value for e in at.error]
    assert "Every record the batch brought is in the destination." in texts(at)
    shown = at.dataframe[0].value.set_index("Data type")
    assert shown.loc["Patients", "In the destination"] == created
    assert (shown["Difference"] == 0).all()
    # Counting again at the source takes a key of the source, and keeps the destination's count.
    read_at_the_source(at, "review_source_counts", refused=admin_only, key=key, batch_id=batch_id)
    recounted = recounted_at_the_source(at)
    assert recounted.loc["Patients", "In the destination"] == created and (recounted["Difference"] == 0).all()
    # The opening balances read the source's invoices: a key of the source account, for that read only.
    read_at_the_source(at, "review_opening_balances", refused=admin_only, key=key, batch_id=batch_id)
    with Ledger(workspace) as ledger, ClinikoClient(SecretStr(key), config=clinics.config()) as source:
        expected = opening_balances(ledger, batch_id, source=source)
    assert expected.height > 0
    listed = at.dataframe[-1].value
    assert listed["Source id"].tolist() == expected["source_patient_id"].to_list()
    assert [Decimal(str(v)) for v in listed["Outstanding"]] == expected["outstanding"].to_list()

    # The clinic the batch wrote into, signed in with its own key, counts there with it: no box asks for one.
    into = sign_in(session(), dest_key)
    into.run()
    goto(into, "review")
    assert into.selectbox(key="review_batch").value == batch_id
    assert not [t for t in into.text_input if t.key == "review_dest_key"]
    assert "This batch wrote into this clinic's Cliniko account" in texts(into)
    into.button(key="review_dest_count").click().run()
    assert not into.error, [e.value for e in into.error]
    assert "Every record the batch brought is in the destination." in texts(into)
    assert into.dataframe[0].value.set_index("Data type").loc["Patients", "In the destination"] == created

    # A create whose answer was lost, as a run killed mid-request leaves it: Cliniko made the patient,
    # the ledger has no id for it.
    body = {"first_name": "Lost", "last_name": "Answer", "date_of_birth": "1990-02-03"}
    with ClinikoClient(SecretStr(dest_key), writable=True, config=clinics.config()) as dest:
        lost_id = str(dest.post("/patients", body)["id"])
    with Ledger(workspace) as ledger:
        _WriteLog(ledger, batch_id, "patients").intend([_Write("lost-1", {}, body)], {"lost-1": body})

    # Batches: what goes is listed from the ledger; deleting takes the destination's administrator key.
    goto(at, "batches")
    assert "archived" in texts(at)
    assert (
        "The answers to the batch's creates of 1 patient were lost when a run was interrupted: deleting looks "
        "for those records in the account by their details, and removes what it finds with the rest."
    ) in texts(at)
    at.text_input(key="delete_admin_key").input(admin_only)
    at.text_input(key="delete_confirm").input("DELETE").run()
    at.button(key="delete_go").click().run()
    assert not at.error, [e.value for e in at.error]
    (done,) = [s.value for s in at.success]
    assert "patients archived (Cliniko's API cannot delete patients)" in done
    assert done.endswith(
        "Found in the account by their details, as the answers to the batch's creates of them were lost when "
        f"a run was interrupted: 1 patient (id {lost_id}). Make sure none of them is a record the clinic made "
        "itself."
    )
    with ClinikoClient(SecretStr(dest_key), config=clinics.config()) as dest:
        assert lost_id in {
            str(r["id"]) for page in dest.pages("patients", route="archived") for r in page.records
        }
    at.run()
    for secret in (key, dest_key, admin_only):
        assert secret not in session_values(at)
        for form in forms(secret):
            for path in (p for p in tmp_path.rglob("*") if p.is_file()):
                assert form not in path.read_bytes(), (path, form[:4])
    with Ledger(workspace) as ledger:
        assert ledger.batch(batch_id).status == "deleted"
        trail = ledger.audit_log(tenant=tenant_of(3))
    actions = [e["action"] for e in trail]
    for action in ("preflight", "run", "complete", "go_live_refused", "go_live", "delete", "deleted"):
        assert action in actions, action
    # Each read the Review page made with a key given for it, and each key it refused, has its line.
    reads = sorted(
        (e["action"], e["detail"]["read"], e["detail"]["key"])
        for e in trail
        if e["action"].startswith("review_read")
    )
    assert reads == [
        ("review_read", "destination counts", "given"),
        ("review_read", "destination counts", "session"),
        ("review_read", "opening balances", "given"),
        ("review_read", "source counts", "given"),
        ("review_read_refused", "destination counts", "given"),
        ("review_read_refused", "opening balances", "given"),
        ("review_read_refused", "source counts", "given"),
    ]
