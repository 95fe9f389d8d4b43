"""The sandbox's ASGI application: the wire, authentication, rate limit and faults.

Raw ASGI rather than a framework, because fault injection needs to misbehave at
the protocol level (send headers and hang up, or promise more bytes than it
sends) and because the request path is short enough not to need routing help.

API paths are ``/<shard>/v1/...``. A request goes through, in order:

1. ``User-Agent`` present, else **400** (checked first: Cliniko may block
   anonymous clients before looking at the key);
2. HTTP Basic with the key as user name (password ignored), the key with or
   without its ``-<shard>`` suffix; unknown key, a suffix naming another shard, or
   an account on another shard than the path: **401** ``{"message"}`` (the body
   never echoes the key);
3. the per-user rate limit (``faults.RateLimiter``): **429** + ``X-RateLimit-Reset``;
4. fault injection (``faults.FaultInjector``); 502/503 happen *before* the request
   is handled (nothing is written); ``drop`` and ``truncate`` happen *after* it is
   handled, as when a response is lost in transit: a write may have been applied
   although the client saw an error (the case a resumable client must survive);
5. the configured latency, then :class:`~.api.Api`.

Loopback-only test endpoints, never rate limited or faulted: ``GET
/_sandbox/reminders``, ``GET /_sandbox/stats``, ``POST /_sandbox/reset_stats``,
``GET /_sandbox/health``, and ``POST /_sandbox/records``, which changes an account's data
as the clinic would in Cliniko's own screens, including what the API cannot write
(invoices): a JSON body ``{"account": NAME or key ROLE, "resource": ..., "record":
{...}}`` with an internal record (``<rel>_id`` fields, see ``accounts.py``); a record
whose ``id`` exists is merged into it, any other is created with a fresh id; either way
``updated_at`` becomes now unless the record gives it. Answers the stored record. ``POST
/_sandbox/settings`` changes an account's settings as its settings screens would (custom
fields, for one): ``{"account": NAME or key ROLE, "settings": {...}}`` replaces those top-level
keys and answers the settings. ``POST /_sandbox/hold_creates`` with ``{"count": N, "seconds":
S}`` makes the next N creates (requests answered 201) apply, then hold their answers S seconds,
each counted as a ``hold`` fault in the stats: a client killed meanwhile has made a record it
never learns the id of. ``POST /_sandbox/uploads`` stands in for S3 (multipart,
answers 201 with XML) and is open to any client, as S3 is.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote
from xml.sax.saxutils import escape

from migrator.sandbox.accounts import AccountSeed, KeySeed
from migrator.sandbox.api import Account, Api, ApiRequest, ApiResponse, Upload, error_response
from migrator.sandbox.faults import FAULT_KINDS, FaultInjector, RateLimiter, Stats, fingerprint
from migrator.sandbox.render import IdMode
from migrator.sandbox.store import AccountStore
from migrator.sandbox.writes import BOOKING_TABLES, utc_now

__all__ = ["SandboxApp"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_MAX_BODY = 10 * 1024 * 1024
_MAX_UPLOAD = 100 * 1024 * 1024
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class _QuietIncomplete(logging.Filter):
    """Hide uvicorn's complaints about what the sandbox does on purpose: responses
    cut short (faults), and stalled requests cancelled when the server stops."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            return False
        message = record.getMessage()
        return "without completing response" not in message and "graceful shutdown exceeded" not in message


logging.getLogger("uvicorn.error").addFilter(_QuietIncomplete())
_log = logging.getLogger("uvicorn.error")


class SandboxApp:
    """A Cliniko-compatible API serving several accounts.

    Args:
        accounts: the accounts to serve (``data.build_accounts`` or test fixtures).
        ids: id rendering, ``"mixed"`` (as the docs), ``"str"`` or ``"int"``.
        rate_limit: requests per user per window; ``0`` disables it.
        rate_window: the window in seconds.
        faults: the probability of a fault per API request.
        fault_kinds: the kinds to draw from (default: all of ``FAULT_KINDS``).
        stall: seconds a ``stall`` fault holds its answer.
        latency_ms: added to every API response.
        seed: seeds the fault sequence.

    Call :meth:`load` (slow: it fills the stores) before serving.
    """

    def __init__(
        self,
        accounts: Sequence[AccountSeed],
        *,
        ids: IdMode = "mixed",
        rate_limit: int = 200,
        rate_window: float = 60.0,
        faults: float = 0.0,
        fault_kinds: Sequence[str] = FAULT_KINDS,
        stall: float = 35.0,
        latency_ms: float = 0.0,
        seed: int = 1,
    ) -> None:
        if ids not in ("mixed", "str", "int"):
            raise ValueError(f"ids must be mixed, str or int, not {ids!r}")
        self.seeds = list(accounts)
        self.api = Api(ids)
        self.limiter = RateLimiter(rate_limit, rate_window)
        self.injector = FaultInjector(faults, seed, tuple(fault_kinds))
        self.stall = stall
        self._holds, self._hold_seconds = 0, 0.0  # POST /_sandbox/hold_creates
        self.latency = latency_ms / 1000.0
        self.stats = Stats()
        self.accounts: dict[str, Account] = {}
        self._keys: dict[str, tuple[Account, KeySeed]] = {}
        self.load_counts: dict[str, dict[str, int]] = {}

    def load(self) -> None:
        """Generate and store every account's records (the slow part of start-up)."""
        for seed in self.seeds:
            store = AccountStore()
            self.load_counts[seed.name] = store.load(seed.records())
            account = Account(seed, store)
            self.accounts[seed.name] = account
            for key in seed.keys:
                body = key.key.rpartition("-")[0] or key.key
                self._keys[body] = (account, key)

    def close(self) -> None:
        for account in self.accounts.values():
            account.store.close()

    # -- ASGI ---------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/_sandbox/"):
            await self._sandbox(scope, receive, send, path[len("/_sandbox/") :].rstrip("/"))
            return
        self.stats.total += 1
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[1] != "v1":
            await _send(send, error_response(404, "Not found: API paths are /<shard>/v1/<resource>."))
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not headers.get("user-agent", "").strip():
            message = "A User-Agent header is required: 'APP_NAME (contact email)'."
            await _send(send, error_response(400, message))
            return
        shard = parts[0].lower()
        found = self._authenticate(headers.get("authorization"), shard)
        if found is None:
            message = "Unauthorized: the API key is missing, unknown, or not for this shard."
            await _send(send, error_response(401, message), [(b"www-authenticate", b'Basic realm="Cliniko"')])
            return
        account, key = found
        fp = fingerprint(key.key)
        reset = self.limiter.check((account.seed.name, key.user_id))
        if reset is not None:
            self.stats.limited(fp, account.seed.name, key.role)
            message = "Too many requests: the rate limit for this user is used up until X-RateLimit-Reset."
            await _send(send, error_response(429, message), [(b"x-ratelimit-reset", str(reset).encode())])
            return
        self.stats.served(fp, account.seed.name, key.role, scope["method"])
        fault = self.injector.draw()
        if fault is not None:
            self.stats.fault(fp, account.seed.name, fault)
        if fault == "502":
            html = b"<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>"
            await _send(send, ApiResponse(502, html, [(b"content-type", b"text/html")]))
            return
        if fault == "503":
            await _send(send, error_response(503, "Service temporarily unavailable."))
            return
        body = await _read_body(receive, _MAX_BODY)
        if body is None:
            await _send(send, error_response(413, "The request body is too large."))
            return
        if fault == "stall":
            await asyncio.sleep(self.stall)
        if self.latency:
            await asyncio.sleep(self.latency)
        host = headers.get("host") or "{}:{}".format(*scope.get("server", ("127.0.0.1", 0)))
        origin = f"{scope.get('scheme', 'http')}://{host}"
        request = ApiRequest(
            method=scope["method"],
            segments=[p for p in parts[2:] if p],
            query=parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True),
            body=body,
            base=f"{origin}/{parts[0]}/v1",
            origin=origin,
            account=account,
            key=key,
        )
        try:
            response = self.api.handle(request)
        except Exception:  # a sandbox bug must still answer like an API would
            _log.exception("sandbox error on %s %s", scope["method"], path)
            response = error_response(500, "Internal sandbox error.")
        if fault in ("drop", "truncate"):
            await _send_broken(send, response, truncate=fault == "truncate")
            return
        if self._holds and response.status == 201:
            # Applied, and its answer held: a client killed meanwhile never learns what it made.
            self._holds -= 1
            self.stats.fault(fp, account.seed.name, "hold")
            await asyncio.sleep(self._hold_seconds)
        await _send(send, response)

    def _authenticate(self, header: str | None, shard: str) -> tuple[Account, KeySeed] | None:
        if not header:
            return None
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        key = decoded.partition(":")[0].strip()
        body, dash, suffix = key.rpartition("-")
        if not dash:
            body, suffix = key, ""
        found = self._keys.get(body)
        if found is None:
            return None
        account = found[0]
        if (dash and suffix.lower() != account.seed.shard) or account.seed.shard != shard:
            return None
        return found

    # -- test endpoints -------------------------------------------------------

    async def _sandbox(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        method = scope["method"]
        if name == "uploads" and method == "POST":
            await self._upload(scope, receive, send)
            return
        client = (scope.get("client") or ("",))[0]
        if not (client in _LOOPBACK or client.startswith("127.")):
            await _send(send, error_response(403, "Sandbox test endpoints answer loopback clients only."))
            return
        if name == "health" and method == "GET":
            payload: Any = {"ok": True, "accounts": sorted(self.accounts)}
        elif name == "reminders" and method == "GET":
            payload = {n: list(a.reminders) for n, a in self.accounts.items()}
        elif name == "stats" and method == "GET":
            payload = self.stats.as_dict()
        elif name == "reset_stats" and method == "POST":
            self.stats.reset()
            payload = {"ok": True}
        elif name in ("records", "settings", "hold_creates") and method == "POST":
            body = await _read_body(receive, _MAX_BODY)
            change = {
                "records": self._put_record,
                "settings": self._put_settings,
                "hold_creates": self._hold_creates,
            }[name]
            try:
                payload = change(json.loads(body or b"null"))
            except (ValueError, KeyError, TypeError) as exc:
                await _send(send, error_response(400, f"Bad sandbox {name}: {exc}"))
                return
        else:
            await _send(send, error_response(404, "Unknown sandbox endpoint."))
            return
        await _send(send, ApiResponse.json(200, payload))

    def _account_named(self, wanted: str) -> Any:
        """The account with this name, or holding a key of this role."""
        for account in self.accounts.values():
            if account.seed.name == wanted or any(k.role == wanted for k in account.seed.keys):
                return account
        raise KeyError(f"no account named or with a key role {wanted!r}")

    def _hold_creates(self, request: Any) -> dict[str, Any]:
        """Hold the answers of the next creates (``POST /_sandbox/hold_creates``)."""
        if not isinstance(request, dict):
            raise ValueError("send {'count': N, 'seconds': S}")
        count, seconds = int(request["count"]), float(request["seconds"])
        if count < 0 or not 0 <= seconds <= 600:
            raise ValueError("count must be at least 0 and seconds between 0 and 600")
        self._holds, self._hold_seconds = count, seconds
        return {"count": count, "seconds": seconds}

    def _put_settings(self, request: Any) -> dict[str, Any]:
        """Replace top-level keys of an account's settings (``POST /_sandbox/settings``)."""
        if not isinstance(request, dict) or not isinstance(request.get("settings"), dict):
            raise ValueError("send {'account': ..., 'settings': {...}}")
        settings: dict[str, Any] = self._account_named(str(request.get("account"))).seed.settings
        settings.update(json.loads(json.dumps(request["settings"])))
        return settings

    def _put_record(self, request: Any) -> dict[str, Any]:
        """Create or change one record of an account (``POST /_sandbox/records``)."""
        if not isinstance(request, dict) or not isinstance(request.get("record"), dict):
            raise ValueError("send {'account': ..., 'resource': ..., 'record': {...}}")
        account = self._account_named(str(request.get("account")))
        name = str(request.get("resource"))
        store = account.store
        table = store.table(name)
        if table is None:
            raise KeyError(f"no resource {name!r}")
        record = dict(request["record"])
        now = utc_now()
        current = store.get(name, int(record["id"])) if record.get("id") is not None else None
        if current is not None:
            current.update(record)
            current["updated_at"] = record.get("updated_at") or now
            store.replace(name, current)
            return current
        fresh: dict[str, Any] = dict.fromkeys(table.lifecycle)
        if "active" in table.lifecycle:
            fresh["active"] = True
        fresh.update(created_at=now, updated_at=now)
        fresh.update(record)
        if fresh.get("id") is None:
            shared = tuple(t for t in BOOKING_TABLES if t != name) if name in BOOKING_TABLES else ()
            fresh["id"] = store.next_id(name, shared)
        store.insert(name, fresh)
        return fresh

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The S3 stand-in: store the ``file`` part under the ``key`` field (``${filename}`` expanded)."""
        from starlette.requests import Request  # only needed here; keeps start-up lean

        request = Request(scope, receive)
        form = await request.form(max_part_size=_MAX_UPLOAD)
        try:
            key, upload = form.get("key"), form.get("file")
            if not isinstance(key, str) or upload is None or isinstance(upload, str):
                await _send(send, _xml(400, "<Error><Code>InvalidArgument</Code></Error>"))
                return
            data = await upload.read()
            filename = upload.filename or "upload"
            key = key.replace("${filename}", filename)
            content_type = upload.content_type or "application/octet-stream"
            self.api.uploads[key] = Upload(filename, content_type, data)
        finally:
            await form.close()
        origin = f"{scope.get('scheme', 'http')}://{dict(scope['headers']).get(b'host', b'').decode()}"
        location = f"{origin}/_sandbox/uploads/{quote(key)}"
        etag = hashlib.md5(data).hexdigest()
        xml = (
            f"<PostResponse><Location>{escape(location)}</Location><Bucket>sandbox</Bucket>"
            f"<Key>{escape(key)}</Key><ETag>&quot;{etag}&quot;</ETag></PostResponse>"
        )
        await _send(send, _xml(201, xml))


def _xml(status: int, text: str) -> ApiResponse:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n' + text).encode()
    return ApiResponse(status, body, [(b"content-type", b"application/xml")])


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send(send: Send, response: ApiResponse, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-length", str(len(response.body)).encode()), *response.headers, *(extra or [])]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def _send_broken(send: Send, response: ApiResponse, *, truncate: bool) -> None:
    """Promise more than we send, then return: uvicorn closes the connection mid-response."""
    status = response.status
    if status == 204:
        # A 204 has no body to cut short; answer as a 200 that promises one instead
        # (returning before the status line would make uvicorn send a clean 500).
        status = 200
    promised = str(len(response.body) + 64).encode()
    headers = [(b"content-length", promised), *response.headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if truncate:
        part = response.body[: max(1, len(response.body) // 2)]
        await send({"type": "http.response.body", "body": part, "more_body": True})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
