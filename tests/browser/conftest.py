"""What the browser tests share: the console started by ``streamlit run app.py``, and Debian's Chromium.

The console runs on a free loopback port with its own workspace; Chromium (``/usr/bin/chromium``,
or ``$MIGRATOR_CHROMIUM``) is driven through Playwright. Without Chromium a browser test is
skipped, except in CI (``$CI`` set), where it fails instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, expect, sync_playwright

from tests.processes import stop

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("MIGRATOR_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1400, "height": 1000}
# A cold first page (Python imports, a sandbox starting) takes more than 5 s on a loaded machine.
TIMEOUT_MS = 60_000

expect.set_options(timeout=TIMEOUT_MS)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes] | None, log: Path, timeout: float = 60) -> None:
    """Poll ``url`` until it answers 200; raise with the log if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s: {log.read_text()}")
        time.sleep(0.25)


@contextmanager
def running_console(
    workspace: Path,
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    options: Sequence[str] = (),
    port: int | None = None,
) -> Iterator[str]:
    """``streamlit run app.py`` on 127.0.0.1 (a free port unless given); yields its URL.

    The environment is this process's less every ``MIGRATOR_`` variable, plus
    ``MIGRATOR_WORKSPACE`` and ``env``; ``options`` are more ``--section.option value`` pairs.
    """
    port = port or free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    environ.update(MIGRATOR_WORKSPACE=str(workspace), **(env or {}))
    with log.open("w") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--server.headless",
                "true",
                "--server.fileWatcherType",
                "none",
                "--browser.gatherUsageStats",
                "false",
                *options,
            ],
            cwd=ROOT,
            env=environ,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(f"{url}/_stcore/health", process, log)
            yield url
        finally:
            stop(process)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless; each test opens contexts (fresh profiles) of its own."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium is missing at {CHROMIUM}: .ci/run installs Debian's chromium package.")
        pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium package)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS, timeout=TIMEOUT_MS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[[], Page]]:
    """Open a tab in a new browser context: no cookie, no storage shared with any other."""
    contexts: list[BrowserContext] = []

    def open_page() -> Page:
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page: Callable[[], Page]) -> Page:
    return new_page()


def settle(page: Page) -> None:
    """Wait until Streamlit has finished the script run the last click started."""
    page.wait_for_timeout(300)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=TIMEOUT_MS)


def click(page: Page, name: str) -> None:
    page.get_by_role("button", name=name).click()
    settle(page)
