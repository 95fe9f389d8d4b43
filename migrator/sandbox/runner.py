"""Running the sandbox: in a thread (:class:`Sandbox`) or in a subprocess (:func:`start_subprocess`).

Both bind the listening socket themselves before serving, so ``port=0`` picks a
free port and the caller learns it from :attr:`Sandbox.info` (or the info file).

>>> with Sandbox(size="tiny", rate_limit=0) as sb:        # doctest: +SKIP
...     httpx.get(sb.url_template.format(shard="au1") + "/patients",
...               auth=(sb.key("source"), ""), headers={"User-Agent": "me (me@x.org)"})
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from migrator.sandbox.accounts import AccountSeed
from migrator.sandbox.faults import FAULT_KINDS
from migrator.sandbox.render import IdMode
from migrator.sandbox.server import SandboxApp

__all__ = ["Sandbox", "bind_socket", "build_info", "make_app", "start_subprocess"]


def make_app(
    size: str | int = "demo",
    seed: int = 1,
    *,
    accounts: Sequence[AccountSeed] | None = None,
    rate_limit: int = 200,
    rate_window: float = 60.0,
    faults: float = 0.0,
    fault_kinds: Sequence[str] = FAULT_KINDS,
    stall: float = 35.0,
    latency_ms: float = 0.0,
    ids: IdMode = "mixed",
) -> SandboxApp:
    """A loaded :class:`SandboxApp`; ``accounts`` overrides the generated clinics."""
    if accounts is None:
        from migrator.sandbox.data import build_accounts  # the generator is heavy; import on use

        accounts = build_accounts(size, seed)
    app = SandboxApp(
        accounts,
        ids=ids,
        rate_limit=rate_limit,
        rate_window=rate_window,
        faults=faults,
        fault_kinds=fault_kinds,
        stall=stall,
        latency_ms=latency_ms,
        seed=seed,
    )
    app.load()
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio only sets TCP_NODELAY on sockets whose proto is
    # IPPROTO_TCP, and without it small responses (headers and body are two writes)
    # wait ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def build_info(app: SandboxApp, host: str, port: int) -> dict[str, Any]:
    """What a client needs: the URL template, each key with its role, and the totals."""
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    entries = []
    for account in app.accounts.values():
        for key in account.seed.keys:
            user = account.store.get("users", key.user_id) or {}
            name = " ".join(p for p in (user.get("first_name"), user.get("last_name")) if p)
            entries.append(
                {
                    "name": account.seed.name,
                    "role": key.role,
                    "shard": account.seed.shard,
                    "key": key.key,
                    "user": name,
                    "is_admin": key.is_admin,
                    "is_practitioner": key.is_practitioner,
                }
            )
    return {
        "url_template": f"http://{netloc}/{{shard}}/v1",
        "accounts": entries,
        "totals": {a.seed.name: dict(a.seed.totals) for a in app.accounts.values()},
    }


class _Server(uvicorn.Server):
    """uvicorn's server without its signal capture.

    uvicorn re-raises a captured SIGTERM after shutting down, so the process would
    end "killed by SIGTERM"; the CLI installs its own handlers and exits with 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_server(app: SandboxApp) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        proxy_headers=False,  # no proxy in front; keeps the loopback check honest
        # a stalled request must not hold shutdown for its whole stall
        timeout_graceful_shutdown=1,
    )
    return _Server(config)


class Sandbox:
    """A sandbox server running in a daemon thread of this process.

    Args: as :func:`make_app`, plus ``host`` and ``port`` (``0`` = a free port).
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        size: str | int = "demo",
        seed: int = 1,
        rate_limit: int = 200,
        rate_window: float = 60.0,
        faults: float = 0.0,
        stall: float = 35.0,
        latency_ms: float = 0,
        ids: IdMode = "mixed",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        fault_kinds: Sequence[str] = FAULT_KINDS,
        accounts: Sequence[AccountSeed] | None = None,
    ) -> None:
        self.options = {
            "size": size,
            "seed": seed,
            "rate_limit": rate_limit,
            "rate_window": rate_window,
            "faults": faults,
            "fault_kinds": tuple(fault_kinds),
            "stall": stall,
            "latency_ms": latency_ms,
            "ids": ids,
        }
        self.host, self.port = host, port
        self._accounts = accounts
        self.app: SandboxApp | None = None
        self.info: dict[str, Any] = {}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url_template(self) -> str:
        return str(self.info["url_template"])

    def base_url(self, shard: str) -> str:
        return self.url_template.replace("{shard}", shard)

    @property
    def origin(self) -> str:
        return self.url_template.split("/{shard}")[0]

    def key(self, role: str) -> str:
        """The API key of the first account key with this role."""
        for entry in self.info.get("accounts", []):
            if entry["role"] == role:
                return str(entry["key"])
        raise KeyError(f"no sandbox key with role {role!r}")

    def start(self, timeout: float = 120.0) -> Sandbox:
        """Load the data, bind the socket, serve in a thread; returns once it answers."""
        if self._thread is not None:
            return self
        self.app = make_app(accounts=self._accounts, **self.options)  # type: ignore[arg-type]
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.info = build_info(self.app, self.host, self.port)
        self._server = uvicorn_server(self.app)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="cliniko-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        if self.app is not None:
            self.app.close()
        self._server = self._thread = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_subprocess(timeout: float = 90.0, **options: Any) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Launch ``python -m migrator.sandbox`` on a free port; returns ``(process, info)``.

    Options are :class:`Sandbox`'s (``size``, ``seed``, ``rate_limit``, ...; ``port``
    and ``accounts`` are not accepted). The caller stops the process
    (``proc.terminate(); proc.wait()``). Raises ``RuntimeError`` if the server exits
    or does not report within ``timeout`` seconds.
    """
    folder = tempfile.mkdtemp(prefix="cliniko-sandbox-")
    info_file = Path(folder) / "info.json"
    argv = [sys.executable, "-m", "migrator.sandbox", "--port", "0", "--info-file", str(info_file)]
    for name, value in options.items():
        if name == "fault_kinds":
            value = ",".join(value)
        argv += [f"--{name.replace('_', '-')}", str(value)]
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout
    try:
        while not info_file.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the sandbox exited with status {proc.returncode} before serving")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox did not report within {timeout:.0f} s")
            time.sleep(0.05)
        info = json.loads(info_file.read_text())
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return proc, info
