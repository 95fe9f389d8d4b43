"""The console in a real headless Chromium: the demo clinic from Connect to a deleted batch, by clicks.

``streamlit run app.py`` is started on a free loopback port with a fresh workspace; Debian's
Chromium (``/usr/bin/chromium``) is driven through Playwright. The test asserts what a person
sees (the counts, full progress bars, the batch in the list, its deletion) against the
ledger, and saves a screenshot of every page: into the test's temporary directory, or into
``$MIGRATOR_SCREENSHOTS`` (``MIGRATOR_SCREENSHOTS=docs`` refreshes the README's pictures).

Without Chromium the test is skipped, except in CI (``$CI`` set), where it fails instead.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import ROOT, click, running_console, settle
from tests.conftest import RunningSandbox

# Fast enough for a test, paced all the same: the demo clinic enforces the same limit.
PACE = "3000"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "workspace"


@pytest.fixture
def console(workspace: Path, tmp_path: Path) -> Iterator[str]:
    """``streamlit run app.py`` on a free loopback port; yields its URL."""
    with running_console(
        workspace, tmp_path / "streamlit.log", env={"MIGRATOR_REQUESTS_PER_MINUTE": PACE}
    ) as url:
        yield url


def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MIGRATOR_SCREENSHOTS") or tmp_path / "screenshots")
    if not folder.is_absolute():
        folder = ROOT / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shoot(page: Page, folder: Path, name: str, last: str | None = None) -> None:
    """A picture of the whole page once its ``last`` button is drawn; the window grows to fit the page."""
    if last is not None:
        expect(page.get_by_role("button", name=last)).to_be_visible()
    settle(page)
    page.mouse.move(1, 1)  # no tooltip in the picture
    page.evaluate(
        "() => document.querySelectorAll('[data-testid=stMain], [data-testid=stAppViewContainer]')"
        ".forEach(e => e.scrollTo(0, 0))"
    )
    height = page.evaluate(
        "() => { const main = document.querySelector('[data-testid=stMainBlockContainer]');"
        " return main.scrollHeight + main.getBoundingClientRect().top + 40; }"
    )
    page.set_viewport_size({"width": 1400, "height": max(1000, min(int(height), 6000))})
    page.wait_for_timeout(400)
    page.screenshot(path=folder / f"{name}.png")
    page.set_viewport_size({"width": 1400, "height": 1000})
    assert (folder / f"{name}.png").stat().st_size > 10_000


def ledger_counts(workspace: Path) -> tuple[str, str, dict[str, int]]:
    with sqlite3.connect(workspace / "ledger.db") as conn:
        batch_id, status = conn.execute("SELECT id, status FROM batches ORDER BY created_at DESC").fetchone()
        counts = dict(
            conn.execute("SELECT action, count(*) FROM items WHERE batch_id = ? GROUP BY action", (batch_id,))
        )
    return batch_id, status, counts


def metric(page: Page, label: str) -> str:
    box = page.get_by_test_id("stMetric").filter(has=page.get_by_text(label, exact=True))
    return box.get_by_test_id("stMetricValue").inner_text().strip()


def test_a_newcomer_clicks_through_the_demo_clinic(
    console: str, page: Page, workspace: Path, tmp_path: Path
) -> None:
    shots = screenshots(tmp_path)

    # 1. Connect: the first screen says what this is and how to start.
    page.goto(console)
    expect(page.get_by_text("Move a clinic's data out of Cliniko")).to_be_visible()
    expect(page.get_by_text("reading only", exact=False).first).to_be_visible()
    click(page, "Use the demo clinic")
    expect(page.get_by_text("Connected to Harbourside Physio")).to_be_visible()
    assert metric(page, "Administrator") == "yes"
    sidebar = page.get_by_test_id("stSidebar")
    expect(
        sidebar.get_by_text("Harbourside Physio")
    ).to_be_visible()  # the frame shows the connection at once
    expect(sidebar.get_by_text("•••• au2 key", exact=False)).to_be_visible()  # masked, never the key
    shoot(page, shots, "1-connect", last="Disconnect")

    # 2. Preview: counts for the whole account and what reading them costs.
    click(page, "Next: preview what will be read")
    expect(page.get_by_text("Records to read")).to_be_visible()
    assert metric(page, "Records to read") == "18,576"
    assert metric(page, "Requests") == "201"
    shoot(page, shots, "2-preview", last="Next: check the mapping")

    # 3. Mapping: two former practitioners need a decision; one click settles both.
    click(page, "Next: check the mapping")
    expect(page.get_by_text("2 rows need a decision before a run")).to_be_visible()
    shoot(page, shots, "3-mapping", last="Next: choose the scope")
    click(page, "Apply")
    expect(page.get_by_text("Every row is decided.")).to_be_visible()

    # 4. Scope: all data, every type ticked.
    click(page, "Next: choose the scope")
    expect(page.get_by_text("Scope: which data comes across")).to_be_visible()
    shoot(page, shots, "4-scope", last="Next: run it")

    # 5. Run: in the background, followed from the ledger until every bar is full.
    click(page, "Next: run it")
    click(page, "Start the run")
    expect(page.get_by_text("is complete")).to_be_visible(timeout=180_000)
    settle(page)
    bars = page.get_by_role("progressbar")
    assert bars.count() == 19
    assert all(bars.nth(i).get_attribute("aria-valuenow") == "100" for i in range(bars.count()))
    batch_id, status, counts = ledger_counts(workspace)
    assert status == "completed"
    assert metric(page, "Created") == f"{counts['created']:,}"
    assert metric(page, "Linked") == f"{counts.get('linked', 0):,}"
    assert metric(page, "Skipped") == f"{counts.get('skipped', 0):,}"
    assert counts["created"] > 18_000
    shoot(page, shots, "5-run", last="Next: review it")

    # 6. Review.
    click(page, "Next: review it")
    expect(page.get_by_role("heading", name="Review")).to_be_visible()
    expect(page.get_by_text("Every record the batch brought is in the destination.")).to_be_visible()
    click(page, "Compare balances with Cliniko")
    expect(page.get_by_text("Every patient's balance matches Cliniko's")).to_be_visible()
    assert metric(page, "Balances that differ") == "0"
    expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible()  # the balances, drawn
    shoot(page, shots, "6-review", last="Next: the batches")

    # 7. Batches: the batch is listed; delete it after typing the confirmation.
    page.get_by_role("link", name="7 · Batches").click()
    settle(page)
    expect(page.get_by_text(f"Deleting batch {batch_id} removes")).to_be_visible()
    shoot(page, shots, "7-batches", last=f"Delete batch {batch_id}")
    confirm = page.get_by_label("Type DELETE to confirm")
    confirm.fill("DELETE")
    confirm.press("Enter")
    settle(page)
    click(page, f"Delete batch {batch_id}")
    expect(page.get_by_text(f"Batch {batch_id} is deleted")).to_be_visible()
    assert ledger_counts(workspace)[1] == "deleted"
    with sqlite3.connect(workspace / "clinic.db") as conn:
        assert conn.execute("SELECT count(*) FROM patients WHERE batch_id = ?", (batch_id,)).fetchone() == (
            0,
        )
    shoot(page, shots, "8-deleted")


def test_an_address_of_a_step_opens_it_within_the_console(console: str, page: Page) -> None:
    """A bookmark or a refresh on a step's address goes through app.py: its navigation and its frame.

    The steps once lived in ``pages/``, which Streamlit also served as pages of their own, so
    ``/preview`` ran that script alone: a list of file names for navigation and no frame. And a
    page that stops early (``st.stop``, as Preview does here without a connection) kept no frame.
    """
    page.goto(f"{console}/preview")
    expect(
        page.get_by_text("Connect a source account (or the demo clinic) first", exact=False)
    ).to_be_visible()
    settle(page)
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text("Not connected yet.")).to_be_visible()
    expect(sidebar.get_by_text("Workspace:", exact=False)).to_be_visible()
    expect(sidebar.get_by_text("2 · Preview")).to_be_visible()
    expect(sidebar.get_by_text("connect hosted")).to_have_count(0)


def test_a_key_being_checked_at_a_slow_pace_says_so(
    sandbox_factory: Callable[..., RunningSandbox], page: Page, tmp_path: Path
) -> None:
    """Checking a key reads Cliniko; while it does (here each answer takes 1.5 s), the page says what it is doing."""
    sandbox = sandbox_factory(size="tiny", seed=3, rate_limit=0, latency_ms=1500)
    with running_console(
        tmp_path / "workspace", tmp_path / "streamlit.log", env={"MIGRATOR_API_URL": sandbox.url_template}
    ) as url:
        page.goto(url)
        box = page.get_by_role("textbox", name="Source API key")
        box.fill(sandbox.key("source"))
        box.press("Enter")
        settle(page)
        page.get_by_role("button", name="Verify the key").click()
        checking = page.get_by_text("Checking the key with Cliniko…")
        expect(checking).to_be_visible(timeout=10_000)
        expect(page.get_by_text("Connected to Harbourside Physio")).to_be_visible()
        expect(checking).to_have_count(0)
