"""Shared fixtures: sandboxes started as real servers in their own process, on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import pytest

from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.cliniko.transport import RetryPolicy
from migrator.sandbox import start_subprocess
from tests.processes import stop

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunningSandbox:
    """A sandbox process and what it printed on start."""

    process: subprocess.Popen[bytes]
    info: dict[str, Any]

    @property
    def url_template(self) -> str:
        return self.info["url_template"]

    @property
    def origin(self) -> str:
        """Where its ``/_sandbox/`` test endpoints are."""
        return self.url_template.split("/{shard}")[0]

    def account(self, role: str) -> dict[str, Any]:
        return next(a for a in self.info["accounts"] if a["role"] == role)

    def key(self, role: str) -> str:
        return self.account(role)["key"]

    def totals(self, role: str = "source") -> dict[str, int]:
        return self.info["totals"][self.account(role)["name"]]

    def client(self, role: str = "source", **config: Any) -> ClinikoClient:
        config.setdefault("requests_per_minute", 0)
        config.setdefault("retry", RetryPolicy(attempts=4, backoff_base=0.01, backoff_max=0.1))
        return ClinikoClient(self.key(role), config=ClientConfig(url_template=self.url_template, **config))

    def cli(
        self,
        *args: str,
        key: str | None = None,
        dest_key: str | None = None,
        pace: str | None = None,
        note_keys: str | None = None,
        stdout: int | None = None,
        prefix: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -m migrator ARGS`` against this sandbox, keys in the environment only.

        ``pace`` sets ``MIGRATOR_REQUESTS_PER_MINUTE`` (``"0"``: unpaced); otherwise Cliniko's 200.
        ``note_keys`` sets ``MIGRATOR_NOTE_KEYS``. ``stdout``: a file descriptor for the
        output instead of capturing it. ``prefix``: a command to run it under
        (:func:`without_file_override`).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
        env["MIGRATOR_API_URL"] = self.url_template
        if pace is not None:
            env["MIGRATOR_REQUESTS_PER_MINUTE"] = pace
        if key is not None:
            env["MIGRATOR_SOURCE_KEY"] = key
        if dest_key is not None:
            env["MIGRATOR_DEST_KEY"] = dest_key
        if note_keys is not None:
            env["MIGRATOR_NOTE_KEYS"] = note_keys
        return subprocess.run(
            [*prefix, sys.executable, "-m", "migrator", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )


def without_file_override() -> list[str]:
    """A command prefix under which file permissions bind: root drops the capabilities that
    ignore them (``setpriv``); another user needs none. Skips the test where neither holds."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot be made to bind")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def _start(**options: Any) -> Iterator[RunningSandbox]:
    process, info = start_subprocess(**options)
    try:
        yield RunningSandbox(process, info)
    finally:
        stop(process)


@pytest.fixture(scope="session")
def demo_sandbox() -> Iterator[RunningSandbox]:
    """The demo clinic with the rate limit off: for reading everything quickly."""
    yield from _start(size="demo", seed=1, rate_limit=0)


@pytest.fixture(scope="session")
def tiny_sandbox() -> Iterator[RunningSandbox]:
    yield from _start(size="tiny", seed=3, rate_limit=0)


@pytest.fixture
def sandbox_factory() -> Iterator[Any]:
    """Start sandboxes with particular options; each is stopped at the end of the test."""
    started: list[Iterator[RunningSandbox]] = []

    def factory(**options: Any) -> RunningSandbox:
        generator = _start(**options)
        started.append(generator)
        return next(generator)

    yield factory
    for generator in started:
        next(generator, None)


def interrupt_at(code: CodeType, line: int, hit: int) -> Callable[[FrameType, str, object], object]:
    """A ``sys.settrace`` hook raising ``KeyboardInterrupt`` as ``line`` of ``code`` is reached the ``hit``-th time.

    That is where a Ctrl+C lands when its signal arrives between the line before and this one.
    """
    seen = 0

    def local(frame: FrameType, event: str, arg: object) -> object:
        nonlocal seen
        if event == "line" and frame.f_lineno == line:
            seen += 1
            if seen == hit:
                raise KeyboardInterrupt
        return local

    def hook(frame: FrameType, event: str, arg: object) -> object:
        return local if frame.f_code is code else None

    return hook
