"""The console under Streamlit's AppTest: a fresh workspace per test, the demo clinic unpaced."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("connect", "preview", "mapping", "scope", "run", "review", "batches")


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The console's workspace for this test (``MIGRATOR_WORKSPACE``), requests unpaced."""
    folder = tmp_path / "workspace"
    monkeypatch.setenv("MIGRATOR_WORKSPACE", str(folder))
    monkeypatch.setenv("MIGRATOR_REQUESTS_PER_MINUTE", "0")
    return folder


@pytest.fixture
def console(workspace: Path) -> Callable[[], AppTest]:
    """A new browser session (tab) of the console, on its first page."""

    def open_session() -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.run()
        assert not at.exception
        return at

    return open_session


def goto(at: AppTest, page: str) -> AppTest:
    """Open a page (AppTest forgets a page reached by ``st.switch_page`` on its next run)."""
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    return at


def follow(at: AppTest, button: str, page: str) -> AppTest:
    """Press a page's "Next" button, check it leads to ``page``, and stay there."""
    before = at.title[0].value if at.title else None
    at.button(key=button).click().run()
    assert not at.exception, at.exception
    assert at.title and at.title[0].value != before
    return goto(at, page)


def metrics(at: AppTest) -> dict[str, str]:
    """The page's metrics: label to value as shown."""
    return {m.label: m.value for m in at.metric}


def texts(at: AppTest) -> str:
    """Everything a person reads on the page, as one string."""
    parts = [
        e.value for kind in ("title", "header", "subheader", "markdown", "caption") for e in getattr(at, kind)
    ]
    parts += [e.value for kind in ("success", "info", "warning", "error") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def wait_for_status(at: AppTest, *words: str, timeout: float = 120) -> str:
    """Rerun the Run page (its fragment's timer, by hand) until the batch status reads one of ``words``.

    A run's thread ends a moment after the ledger says ``completed`` (or ``failed``,
    ``stopped``): until then the page keeps its start buttons disabled, as a person would
    see for that moment, so a finished status is returned only once they are enabled again.
    """
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        assert not at.exception, at.exception
        status = next((m.value for m in at.markdown if m.value.startswith("Status:")), "")
        finished = not any(word in status for word in ("running", "being deleted"))
        starts = [b for b in at.button if b.key in ("run_start", "run_top_up")]
        if any(word in status for word in words) and not (finished and any(b.disabled for b in starts)):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"the run did not reach {words} in {timeout} s: {status!r}")
        time.sleep(0.5)


def errors_below(at: AppTest, widget_key: str) -> list[str]:
    """The error messages the page shows below the widget with this key (in the order read)."""
    found, out = False, []
    for element in at.main:
        if getattr(element, "key", None) == widget_key:
            found = True
        elif found and type(element).__name__ == "Error":
            out.append(str(element.value))
    assert found, f"no widget {widget_key!r} on the page"
    return out


def recounted_at_the_source(at: AppTest) -> Any:
    """The Review page's counts after a fresh count at the source, which found nothing changed there.

    Returns the counts table (a pandas frame indexed by data type) for further checks.
    """
    assert not at.error, [e.value for e in at.error]
    counted = at.dataframe[0].value.set_index("Data type")
    assert counted.loc["Patients", "At the source now"] == counted.loc["Patients", "In scope, all runs"] > 0
    assert (counted["Source difference"] == 0).all()
    return counted
