"""A hosted console (``MIGRATOR_MODE=hosted``) in a real headless Chromium, with a real OIDC sign-in.

Everything listens on 127.0.0.1: the tiny sandbox (the clinic's Cliniko), a mock OpenID
provider (``oidc-provider-mock``, in a thread of this process) and ``streamlit run app.py``
with a secrets file this test writes and passes as ``--secrets.files`` (the repository's
``.streamlit/`` is not read or written). Its ``[auth]`` points at the mock's discovery
document, so ``st.login`` really goes to the provider and comes back to ``/oauth2callback``.

A clinic signs in with its key, runs a migration and sees its batch, and the key is then
nowhere the browser keeps things; an operator signs in through the provider and sees that
batch and the clinic's lines in the audit trail; someone the provider vouches for who is
not an operator is refused in one sentence and sees nothing.
"""

from __future__ import annotations

import base64
import csv
import io
import secrets
import sqlite3
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import authlib.deprecate
import httpx
import pytest
from playwright.sync_api import Page, expect

from migrator.ledger import Ledger
from tests.browser.conftest import click, free_port, running_console, settle
from tests.conftest import RunningSandbox

# oidc-provider-mock 0.3.4 (the newest for Python 3.11) uses Authlib APIs that Authlib now deprecates;
# Authlib always shows those notices (its import adds the filter), so they are hushed here, for the mock only.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    import oidc_provider_mock

pytestmark = pytest.mark.filterwarnings(
    r"ignore:get_jwt_config\(self, grant\) is deprecated:DeprecationWarning"
)

OPERATOR = "alice@example.com"
NOT_AN_OPERATOR = "mallory@example.com"
TENANT = "40117"  # the tiny sandbox's source clinic, Harbourside Physio


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """The mock OpenID provider on a free loopback port; yields its issuer URL."""
    with oidc_provider_mock.run_server_in_thread() as server:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1", host
        yield f"http://127.0.0.1:{port}"


def claims(provider: str, subject: str, **values: object) -> None:
    """Tell the provider what the ID token of ``subject`` says (the mock's own API)."""
    response = httpx.put(f"{provider}/users/{quote(subject)}", json=values, timeout=10)
    assert response.status_code == 204, response.text


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "workspace"


@pytest.fixture
def console(tiny_sandbox: RunningSandbox, provider: str, workspace: Path, tmp_path: Path) -> Iterator[str]:
    """A hosted console whose operators sign in with the mock provider; yields its URL."""
    port = free_port()
    secrets_file = tmp_path / "secrets.toml"
    secrets_file.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_urlsafe(32)}"\n'
        'client_id = "cliniko-migrator-e2e"\n'
        f'client_secret = "{secrets.token_urlsafe(16)}"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n'
        "\n[migrator]\n"
        f'operator_emails = ["{OPERATOR}"]\n'
    )
    secrets_file.chmod(0o600)
    env = {
        "MIGRATOR_MODE": "hosted",
        "MIGRATOR_API_URL": tiny_sandbox.url_template,
        "MIGRATOR_REQUESTS_PER_MINUTE": "0",
    }
    with running_console(
        workspace,
        tmp_path / "streamlit.log",
        env=env,
        options=["--secrets.files", str(secrets_file)],
        port=port,
    ) as url:
        yield url


def forms(secret: str) -> list[str]:
    """The key, its base64, base64 of ``key:`` as HTTP Basic sends it, and each URL-quoted."""
    encoded = [
        secret,
        base64.b64encode(secret.encode()).decode(),
        base64.b64encode(f"{secret}:".encode()).decode(),
    ]
    return encoded + [quote(form, safe="") for form in encoded]


def what_the_browser_keeps(page: Page) -> dict[str, str]:
    """Every place of the browser a key could hide in, as text: cookies, storage, input boxes, the page."""
    return {
        "cookies": repr(page.context.cookies()),
        "localStorage": page.evaluate("() => JSON.stringify(Object.entries(window.localStorage))"),
        "sessionStorage": page.evaluate("() => JSON.stringify(Object.entries(window.sessionStorage))"),
        "input boxes": repr(
            page.evaluate("() => Array.from(document.querySelectorAll('input, textarea'), e => e.value)")
        ),
        "HTML": page.content(),
    }


def latest_batch(workspace: Path) -> tuple[str, str]:
    with sqlite3.connect(workspace / "ledger.db") as conn:
        batch_id, status = conn.execute("SELECT id, status FROM batches ORDER BY created_at DESC").fetchone()
    return str(batch_id), str(status)


def sign_in_with_the_provider(page: Page, console: str, provider: str, subject: str) -> None:
    """From the sign-in form to the provider's authorization form and back, as ``subject``."""
    page.goto(console)
    page.get_by_role("button", name="Sign in with the identity provider").click()
    page.wait_for_url(f"{provider}/oauth2/authorize**")
    page.locator("input[name=sub]").fill(subject)  # the mock's form: "sub" (0.3) or "Subject" (0.4)
    page.get_by_role("button", name="Authorize", exact=True).click()
    page.wait_for_url(f"{console}/**")
    settle(page)


def test_a_clinic_migrates_and_an_operator_signed_in_by_oidc_sees_it(
    console: str,
    provider: str,
    tiny_sandbox: RunningSandbox,
    new_page: Callable[[], Page],
    workspace: Path,
) -> None:
    key = tiny_sandbox.key("source")

    # a. A clinic signs in with its key, connects, runs a migration into its store and sees the batch.
    clinic = new_page()
    clinic.goto(console)
    expect(clinic.get_by_role("heading", name="Sign in")).to_be_visible()
    clinic.get_by_label("Your Cliniko API key", exact=True).fill(key)
    click(clinic, "Sign in with the key")
    expect(clinic.get_by_role("heading", name="Connect")).to_be_visible()
    expect(clinic.get_by_text("Connected to Harbourside Physio")).to_be_visible()
    sidebar = clinic.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text("of Harbourside Physio (clinic)", exact=False)).to_be_visible()
    click(clinic, "Next: preview what will be read")
    expect(clinic.get_by_text("Records to read")).to_be_visible()
    click(clinic, "Next: check the mapping")
    click(clinic, "Apply")  # the former practitioners: every undecided row at once
    expect(clinic.get_by_text("Every row is decided.")).to_be_visible()
    click(clinic, "Next: choose the scope")
    click(clinic, "Next: run it")
    click(clinic, "Start the run")
    expect(clinic.get_by_text("is complete")).to_be_visible(timeout=120_000)
    batch_id, status = latest_batch(workspace)
    assert status == "completed"
    clinic.get_by_role("link", name="7 · Batches").click()
    settle(clinic)
    expect(clinic.get_by_text(f"Deleting batch {batch_id} removes")).to_be_visible()

    # ... and the key is in no input box, cookie, storage or the page, in any form.
    kept = what_the_browser_keeps(clinic)
    assert "_streamlit" in kept["cookies"]  # the cookies were really read
    for where, text in kept.items():
        for form in forms(key):
            assert form not in text, (where, form[:6])

    # b. An operator signs in through the identity provider and sees the batch and the audit trail.
    claims(provider, "alice", email=OPERATOR, email_verified=True, name="Alice")
    operator = new_page()
    sign_in_with_the_provider(operator, console, provider, "alice")
    sidebar = operator.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text(f"Signed in as {OPERATOR}, operator", exact=False)).to_be_visible()
    expect(operator.get_by_role("heading", name="Connect")).to_be_visible()
    operator.get_by_role("link", name="7 · Batches").click()
    settle(operator)
    expect(operator.get_by_text(f"Deleting batch {batch_id} removes")).to_be_visible()
    operator.get_by_role("link", name="Audit trail").click()
    settle(operator)
    expect(operator.get_by_role("heading", name="Audit trail")).to_be_visible()
    with operator.expect_download() as download:
        operator.get_by_role("button", name="Export as CSV").click()
    trail = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    done = {(line["action"], line["tenant"], line["role"]) for line in trail}
    assert {("sign_in", TENANT, "clinic"), ("run", TENANT, "clinic"), ("complete", TENANT, "clinic")} <= done
    assert any(
        line["action"] == "sign_in" and line["actor"] == f"operator:{OPERATOR}" and line["role"] == "operator"
        for line in trail
    )
    assert not any(form in Path(download.value.path()).read_text() for form in forms(key))

    # c. Someone the provider vouches for, not on the list, is refused in one sentence and sees no batch,
    #    not even by the Batches page's address (a new session, refused again).
    claims(provider, "mallory", email=NOT_AN_OPERATOR, email_verified=True, name="Mallory")
    refused = new_page()
    sign_in_with_the_provider(refused, console, provider, "mallory")
    sentence = f"{NOT_AN_OPERATOR} is not one of this instance's operators"
    for address in (None, f"{console}/batches"):
        if address is not None:
            refused.goto(address)
            settle(refused)
            expect(refused.get_by_text("Page not found")).to_be_visible()  # no such page before sign-in
            refused.keyboard.press("Escape")
            expect(refused.get_by_text("Page not found")).to_have_count(0)
        expect(refused.get_by_text(sentence, exact=False)).to_be_visible()
        expect(refused.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(refused.get_by_role("link", name="7 · Batches")).to_have_count(0)
        assert batch_id not in refused.content()
    with Ledger(workspace) as ledger:
        tried = [
            (e["action"], e["role"], e["detail"].get("method"))
            for e in ledger.audit_log()
            if e["actor"] == f"operator:{NOT_AN_OPERATOR}"
        ]
    assert tried == [("sign_in_refused", "operator", "oidc")] * 2  # once per session, not per rerun

    # ... and can leave that identity: through the provider's sign-out, back to a plain sign-in form.
    click(refused, "Sign out of the identity provider")
    refused.wait_for_url(f"{provider}/oauth2/end_session**")
    refused.get_by_role("button", name="End session").click()
    refused.wait_for_url(f"{console}/**")
    settle(refused)
    expect(refused.get_by_role("button", name="Sign in with the identity provider")).to_be_visible()
    expect(refused.get_by_role("button", name="Sign out of the identity provider")).to_have_count(0)
    expect(refused.get_by_text(sentence, exact=False)).to_have_count(0)
