"""The Cliniko API client: one object per API key.

>>> client = ClinikoClient("MS...-au1")                 # doctest: +SKIP
>>> client.count("patients")                            # doctest: +SKIP
412
>>> for page in client.pages("patients", [Filter("updated_at", ">", "2024-01-01T00:00:00Z")]):
...     ...                                             # doctest: +SKIP

A client is read-only unless built with ``writable=True``: the migration's source
client can only send GET, and a write through it raises :class:`ReadOnlyError`
before anything leaves. Pacing and retries live in the transport
(:mod:`migrator.cliniko.transport`); this module turns answers into records or
into the typed errors of :mod:`migrator.errors`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from migrator.cliniko.filters import Filter, query_params
from migrator.cliniko.keys import KNOWN_SHARDS, ApiKey, base_url_for, parse_key
from migrator.cliniko.pacing import DEFAULT_REQUESTS_PER_MINUTE, limiter_for
from migrator.cliniko.pagination import PER_PAGE, Page, iter_pages
from migrator.cliniko.resources import resource
from migrator.cliniko.transport import EnvironmentProxies, ResilientTransport, RetryPolicy, TransportStats
from migrator.errors import (
    AccessError,
    APIError,
    AuthError,
    ConfigError,
    FatalAPIError,
    NotFoundError,
    ReadOnlyError,
    RetriableAPIError,
    ValidationAPIError,
)

__all__ = ["ClientConfig", "ClinikoClient", "Identity"]

USER_AGENT_ENV = "MIGRATOR_USER_AGENT"
DEFAULT_USER_AGENT = "Cliniko Migrator (migrator@example.com)"
_USER_AGENT = re.compile(r"^.+ \([^@\s()]+@[^@\s()]+\.[^@\s()]+\)$")


@dataclass(frozen=True)
class ClientConfig:
    """How a client talks to Cliniko.

    Attributes:
        user_agent: ``"<app name> (<contact email>)"``, as Cliniko asks; defaults to
            ``$MIGRATOR_USER_AGENT`` or a generic one.
        requests_per_minute: this key's budget (Cliniko's published limit is 200).
        rate_window: the budget's window in seconds (60 for Cliniko; tests shorten it).
        timeout: seconds to wait for any one answer.
        concurrency: requests one client may have in flight at once (pages are
            prefetched so that network latency does not waste the budget).
        url_template: base URL template; ``{shard}`` is replaced (see ``keys.base_url_for``).
        retry: how often and how patiently to retry.
    """

    user_agent: str = field(default_factory=lambda: os.environ.get(USER_AGENT_ENV) or DEFAULT_USER_AGENT)
    requests_per_minute: float = DEFAULT_REQUESTS_PER_MINUTE
    rate_window: float = 60.0
    timeout: float = 30.0
    concurrency: int = 4
    url_template: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not _USER_AGENT.match(self.user_agent):
            raise ConfigError(
                f"The User-Agent must read 'App name (contact@email)', as Cliniko requires; got {self.user_agent!r}."
            )
        if self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1.")


@dataclass(frozen=True)
class Identity:
    """Who a key belongs to: what the Connect page and ``connect`` show."""

    shard: str
    base_url: str
    account: str | None
    user: str
    user_id: str
    role: str | None
    is_admin: bool
    is_practitioner: bool
    #: The account's id (``/settings`` ``account.id``): what stays when the account is renamed.
    account_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "base_url": self.base_url,
            "account": self.account,
            "user": self.user,
            "is_admin": self.is_admin,
            "is_practitioner": self.is_practitioner,
        }


class ClinikoClient:
    """A paced, retrying, typed client for one API key.

    Args:
        key: the API key (a string, ``SecretStr`` or parsed :class:`ApiKey`).
        writable: allow POST/PUT/PATCH/DELETE. Off for a migration source.
        config: see :class:`ClientConfig`.
        transport: the inner httpx transport (tests pass ``httpx.MockTransport``); by default
            httpx's own, through the proxy ``HTTPS_PROXY`` / ``NO_PROXY`` name, if any
            (:class:`~migrator.cliniko.transport.EnvironmentProxies`).

    Raises:
        ConfigError: the key is malformed (the message never contains the key).
    """

    def __init__(
        self,
        key: str | SecretStr | ApiKey,
        *,
        writable: bool = False,
        config: ClientConfig | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.key = key if isinstance(key, ApiKey) else parse_key(key)
        self.writable = writable
        self.config = config or ClientConfig()
        self.base_url = base_url_for(self.key.shard, self.config.url_template)
        limiter = limiter_for(self.key.fingerprint, self.config.requests_per_minute, self.config.rate_window)
        inner = transport or EnvironmentProxies(
            httpx.Limits(
                max_connections=self.config.concurrency + 2,
                max_keepalive_connections=self.config.concurrency + 2,
            )
        )
        self._transport = ResilientTransport(inner, limiter, read_only=not writable, policy=self.config.retry)
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=httpx.BasicAuth(self.key.secret.get_secret_value(), ""),
            headers={"Accept": "application/json", "User-Agent": self.config.user_agent},
            timeout=self.config.timeout,
            transport=self._transport,
        )
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        mode = "read-write" if self.writable else "read-only"
        return f"<ClinikoClient {self.base_url} key={self.key.fingerprint} {mode}>"

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def __enter__(self) -> ClinikoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self, method: str, path: str) -> None:
        """Refuse a request once :meth:`close` has run, in a sentence rather than httpx's ``RuntimeError``."""
        if self._http.is_closed:
            raise ConfigError(
                f"Cannot send {method} {_path(path)}: this Cliniko client was closed (its `with` block ended); "
                "open a new one."
            )

    @property
    def stats(self) -> TransportStats:
        """Requests sent, retries and rate-limit waits so far."""
        return self._transport.stats

    # -- raw requests ----------------------------------------------------------------

    def get(self, path: str, params: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        """GET ``path`` (relative to the base URL, or an absolute link) and decode the JSON."""
        return self._request("GET", path, params=params)

    def download(self, path: str) -> tuple[bytes, str | None]:
        """GET a file (an attachment's ``content``): its bytes and content type. A read, paced and retried."""
        self._require_open("GET", path)
        response = self._http.get(path, follow_redirects=True)
        if response.status_code >= 400:
            raise _error_for(response, self.key)
        return response.content, response.headers.get("content-type")

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, body=body)

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("PUT", path, body=body)

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("PATCH", path, body=body)

    def delete(self, path: str) -> dict[str, Any]:
        return self._request("DELETE", path)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self._require_open(method, path)
        if method != "GET" and not self.writable:
            raise ReadOnlyError(
                f"Refused to send {method} {path}: this client is read-only (the migration source is never written)."
            )
        content = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        attempts = self.config.retry.attempts if method == "GET" else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._http.request(
                    method, path, params=tuple(params) if params else None, content=content, headers=headers
                )
            except RetriableAPIError as exc:
                if exc.unreachable and self.key.shard not in KNOWN_SHARDS:
                    raise ConfigError(
                        f"{self.base_url} could not be reached: the key ends in -{self.key.shard}, a shard "
                        "Cliniko does not list. Check that the whole key was pasted (the part after its last "
                        "'-' names the shard), or the network if Cliniko has added that shard since."
                    ) from exc
                raise
            except httpx.TransportError as exc:  # the transport retries; only non-retried errors land here
                raise RetriableAPIError(
                    f"Cliniko could not be reached for {method} {_path(path)} ({type(exc).__name__}).",
                    method=method,
                    path=_path(path),
                ) from exc
            if response.status_code >= 400:
                raise _error_for(response, self.key)
            if response.status_code == 204 or not response.content:
                return {}
            try:
                return parse_json(response.content)
            except ValueError:
                # A body cut short without a Content-Length to betray it: ask again.
                self.stats.retried("unreadable body")
                if attempt == attempts:
                    raise RetriableAPIError(
                        f"Cliniko's answer to {method} {_path(path)} was not readable JSON after {attempts} tries.",
                        method=method,
                        path=_path(path),
                    ) from None
        raise AssertionError("unreachable")

    # -- lists -----------------------------------------------------------------------

    def list_path(
        self, resource_name: str, route: str | None = None, parent: tuple[str, str] | None = None
    ) -> str:
        """The route of a list: ``/patients``, ``/patients/archived``, ``/patients/7/medical_alerts``..."""
        entry = resource(resource_name)
        if parent is not None:
            parent_name, parent_id = parent
            template = entry.nested.get(parent_name)
            if template is None:
                raise ConfigError(f"Cliniko has no list of {resource_name} under {parent_name}.")
            base = template.format(id=parent_id)
        else:
            base = entry.path
        if route is None:
            return base
        if route not in entry.list_routes:
            raise ConfigError(f"Cliniko has no /{route} list for {resource_name}.")
        return f"{base}/{route}"

    def count(
        self,
        resource_name: str,
        filters: Iterable[Filter] = (),
        *,
        route: str | None = None,
        parent: tuple[str, str] | None = None,
    ) -> int:
        """How many records a list holds: one request (``per_page=1``, read ``total_entries``)."""
        path = self.list_path(resource_name, route, parent)
        params = [*query_params(resource_name, filters), ("per_page", "1")]
        body = self.get(path, params)
        try:
            return int(body["total_entries"])
        except (KeyError, TypeError, ValueError):
            raise FatalAPIError(
                f"Cliniko's answer for {path} has no usable total_entries.", path=path
            ) from None

    def counts(self, lists: Sequence[tuple[str, Iterable[Filter], str | None]]) -> list[int]:
        """:meth:`count` of each ``(resource, filters, route)``, up to ``concurrency`` at once.

        The first failure stops the rest: a count not yet sent is never sent, so a key
        Cliniko refuses costs a few requests rather than one per list. That error is
        raised once the counts already under way have ended.
        """
        pool = self._pool()
        if pool is None or len(lists) < 2:
            return [self.count(name, filters, route=route) for name, filters, route in lists]
        futures = [pool.submit(self.count, name, filters, route=route) for name, filters, route in lists]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:  # a failure, or Ctrl+C while waiting: send nothing more
            for future in futures:
                future.cancel()
            wait(futures)
        return [future.result() for future in futures]  # raises the first failure, in the lists' order

    def pages(
        self,
        resource_name: str,
        filters: Iterable[Filter] = (),
        *,
        route: str | None = None,
        parent: tuple[str, str] | None = None,
        sort: str | None = None,
        order: str | None = None,
        per_page: int = PER_PAGE,
    ) -> Iterator[Page]:
        """Stream a list page by page (raw records), prefetching ahead when it safely can."""
        path = self.list_path(resource_name, route, parent)
        params = query_params(resource_name, filters)
        if sort:
            params.append(("sort", sort))
        if order:
            params.append(("order", order))
        return iter_pages(
            self.get,
            path,
            params,
            resource_name,
            per_page=per_page,
            executor=self._pool(),
            prefetch=self.config.concurrency,
        )

    def records(self, resource_name: str, filters: Iterable[Filter] = (), **kwargs: Any) -> Iterator[Any]:
        """Stream validated records (pydantic models) of a list; see :meth:`pages` for arguments.

        Raises:
            pydantic.ValidationError: a record does not fit its model. The migration
                engine validates page by page itself so it can skip such a record
                with its reason instead.
        """
        from migrator.cliniko.models import parse_record

        for page in self.pages(resource_name, filters, **kwargs):
            for raw in page.records:
                yield parse_record(resource_name, raw)

    def _pool(self) -> ThreadPoolExecutor | None:
        if self.config.concurrency <= 1 or self._http.is_closed:  # closed: the first request says so
            return None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.config.concurrency, thread_name_prefix=f"cliniko-{self.key.shard}"
            )
        return self._executor

    # -- who am I --------------------------------------------------------------------

    def account_id(self) -> str:
        """The key's account id, from ``/settings/public`` (which any user may read); ``""`` if it names none."""
        settings = self.get("/settings/public")
        value = (settings.get("account") or {}).get("id")
        return "" if value is None else str(value)

    def identity(self) -> Identity:
        """Verify the key with real requests and say whose it is.

        Three or four requests: ``/user``, ``/settings`` (``/settings/public`` when the
        user may not read the full settings) and the user's active practitioner record.
        """
        user = self.get("/user")
        user_id = str(user.get("id"))
        try:
            settings = self.get("/settings")
        except AccessError:
            settings = self.get("/settings/public")
        account = (settings.get("account") or {}).get("name")
        account_id = (settings.get("account") or {}).get("id")
        practitioners = self.count("practitioners", [Filter("user_id", "=", user_id)])
        name = " ".join(p for p in (user.get("first_name"), user.get("last_name")) if p)
        role = user.get("role")
        return Identity(
            shard=self.key.shard,
            base_url=self.base_url,
            account=account,
            user=name or user.get("email") or user_id,
            user_id=user_id,
            role=role,
            is_admin=role == "administrator",
            is_practitioner=practitioners > 0,
            account_id=None if account_id is None else str(account_id),
        )


def _path(path: str) -> str:
    return httpx.URL(path).path or path


def parse_json(content: bytes) -> Any:
    """A JSON body as Python values; ``ValueError`` when it is not JSON.

    orjson parses pages several times faster than the standard library, which matters
    because page parsing shares the interpreter with the engine's own work. Integers
    beyond 64 bits (orjson refuses them; Cliniko's ids fit) fall back to ``json``.
    """
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)


def _error_for(response: httpx.Response, key: ApiKey) -> APIError:
    """One clear sentence for an error answer; the key is never part of it."""
    method = response.request.method
    path = response.request.url.path
    api_message: str | None = None
    errors: dict[str, list[str]] = {}
    try:
        body = response.json()
        if isinstance(body, dict):
            api_message = body.get("message") or body.get("error")
            errors = body.get("errors") or {}
    except ValueError:  # plain text is Cliniko's sentence; an HTML page (a gateway's) is not repeated
        text = " ".join(response.text.split())
        api_message = text[:200] if text and not text.startswith("<") else None
    status = response.status_code
    # Cliniko's own sentence ends with a full stop; ours goes on after it.
    said = f": {str(api_message).strip().rstrip('.')}" if api_message else ""
    kind: type[APIError]
    if status == 401:
        kind, message = (
            AuthError,
            f"Cliniko did not accept the {key.name} (HTTP 401){said}. Check that the whole key was pasted, that it "
            f"has not been revoked, and that it belongs to the {key.shard} shard ({key.region}).",
        )
    elif status == 403:
        kind, message = (
            AccessError,
            f"The {key.name}'s user is not allowed to {method} {path} (HTTP 403){said}; an administrator's key is "
            "needed.",
        )
    elif status == 404:
        kind, message = NotFoundError, f"Cliniko has no {path} (HTTP 404){said}."
    elif status == 422:
        fields = "; ".join(f"{name} {', '.join(msgs)}" for name, msgs in errors.items())
        detail = f" ({fields})" if fields else ""
        kind, message = ValidationAPIError, f"Cliniko refused {method} {path}{said}{detail}."
    elif status in _GATEWAY and method not in ("GET", "HEAD"):
        # The gateway may have passed the write on before it failed: like a lost answer,
        # the caller looks for the record before sending it again (the transport never resends).
        return RetriableAPIError(
            f"Cliniko answered {method} {path} with HTTP {status}, a gateway error{said}; the write may or may "
            "not have been applied, so it was not sent again.",
            status=status,
            method=method,
            path=path,
            api_message=api_message,
            unconfirmed=True,
        )
    elif status == 429 or status >= 500:  # a GET is retried first; a write is sent once
        failed = "kept failing" if method == "GET" else "failed"
        kind, message = RetriableAPIError, f"Cliniko {failed} {method} {path} (HTTP {status}){said}."
    else:
        kind, message = FatalAPIError, f"Cliniko refused {method} {path} (HTTP {status}){said}."
    return kind(message, status=status, method=method, path=path, api_message=api_message, errors=errors)


#: Answers of a gateway in front of Cliniko: the request may or may not have reached it.
_GATEWAY = frozenset({502, 504})
