"""The transport seam: pacing, retries and the read-only guard wrap httpx's transport.

:class:`ResilientTransport` wraps any ``httpx.BaseTransport`` (the real one, or a
``MockTransport`` in tests) and, for each request:

1. refuses anything but GET when read-only, before a byte leaves;
2. waits for the key's :class:`~migrator.cliniko.pacing.RateLimiter`;
3. reads the whole body, so a dropped connection or a truncated body surfaces here;
4. answers 429 by pausing every caller of the key until ``X-RateLimit-Reset``,
   and 502/503/504, timeouts and broken connections with jittered exponential
   backoff, a bounded number of times; then raises :class:`RetriableAPIError`.

The transport it wraps by default, :class:`EnvironmentProxies`, sends each request
straight or through the proxy the environment names for its URL.

Writes (POST, PUT, PATCH, DELETE) are retried only when the request surely never
reached Cliniko (connection refused, 429): after a timeout or a dropped response
the write may have happened, and sending it again could create a duplicate, so
the caller gets the error and decides (the migration looks the record up first).
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from migrator.cliniko.pacing import RateLimiter
from migrator.errors import ConfigError, ReadOnlyError, RetriableAPIError

__all__ = ["EnvironmentProxies", "ResilientTransport", "RetryPolicy", "TransportStats", "proxy_for"]

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({502, 503, 504})
_NO_CONNECTION = "could not connect"
#: Where the environment names a proxy, as the sentences that blame one say.
_PROXY_VARIABLES = "HTTPS_PROXY, HTTP_PROXY or ALL_PROXY"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. ``attempts`` counts every try of one request, the first included."""

    attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_rate_limit_waits: int = 20

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full-jitter exponential backoff for the ``retry``-th retry (1-based)."""
        return rng.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (retry - 1)))


@dataclass
class TransportStats:
    """Counters a run reports: what was sent and what went wrong on the way."""

    requests: int = 0  # every request that left, retries and 429s included
    retries: int = 0
    rate_limited: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, what: str | None = None) -> None:
        """One request left; ``what`` names how it failed, if it did."""
        with self._lock:
            self.requests += 1
            if what:
                self.failures[what] = self.failures.get(what, 0) + 1

    def retried(self, what: str) -> None:
        """A request that got an answer is being sent again because of ``what``."""
        with self._lock:
            self.retries += 1
            self.failures[what] = self.failures.get(what, 0) + 1


class ResilientTransport(httpx.BaseTransport):
    """Pacing, retries and the read-only guard around an inner transport."""

    def __init__(
        self,
        inner: httpx.BaseTransport,
        limiter: RateLimiter,
        *,
        read_only: bool,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        self.inner = inner
        self.limiter = limiter
        self.read_only = read_only
        self.policy = policy or RetryPolicy()
        self.stats = TransportStats()
        self._sleep = sleep
        self._rng = random.Random(seed)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        method = request.method.upper()
        if self.read_only and method not in _SAFE_METHODS:
            raise ReadOnlyError(
                f"Refused to send {method} {request.url.path}: the source account is read-only "
                "and the migrator never writes to it."
            )
        retries = 0
        rate_waits = 0
        reason = ""
        while True:
            self.limiter.acquire()
            try:
                response = self.inner.handle_request(request)
                response.read()
            except httpx.TransportError as exc:
                reason = _describe(exc)
                self.stats.count(reason)
                never_arrived = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if method not in _SAFE_METHODS and not never_arrived:
                    raise self._give_up(request, reason, retries, may_have_happened=True) from exc
            else:
                status = response.status_code
                if status == 429 and rate_waits < self.policy.max_rate_limit_waits:
                    self.stats.count("rate limited (429)")
                    with self.stats._lock:
                        self.stats.rate_limited += 1
                    rate_waits += 1
                    pause = self.limiter.pause_until_epoch(_reset_epoch(response))
                    log.info(
                        "rate limited (429) on %s %s: every request of this key waits %.1fs for the limit to reset",
                        method,
                        request.url.path,
                        pause,
                    )
                    continue
                if status in _RETRY_STATUSES and (method in _SAFE_METHODS or status == 503):
                    reason = f"HTTP {status}"
                    self.stats.count(reason)
                    response.close()
                else:
                    self.stats.count()
                    return response
            retries += 1
            if retries >= self.policy.attempts:
                raise self._give_up(request, reason, retries, may_have_happened=False)
            with self.stats._lock:
                self.stats.retries += 1
            delay = self.policy.backoff(retries, self._rng)
            log.info(
                "retrying %s %s after %s (retry %d, %.2fs)", method, request.url.path, reason, retries, delay
            )
            self._sleep(delay)

    def close(self) -> None:
        self.inner.close()

    @staticmethod
    def _give_up(
        request: httpx.Request, reason: str, tries: int, *, may_have_happened: bool
    ) -> RetriableAPIError:
        path = request.url.path
        if may_have_happened:
            message = (
                f"Cliniko did not confirm {request.method} {path} ({reason}); the write may or may not "
                "have been applied, so it was not sent again."
            )
        else:
            message = (
                f"Cliniko could not answer {request.method} {path} after {tries} tries (last: {reason})."
            )
        return RetriableAPIError(
            message,
            method=request.method,
            path=path,
            unconfirmed=may_have_happened,
            unreachable=reason == _NO_CONNECTION,
        )


def _describe(exc: httpx.TransportError) -> str:
    if getattr(exc, "through_proxy", False) and isinstance(exc, httpx.ConnectError | httpx.ProxyError):
        return f"could not connect through the proxy that {_PROXY_VARIABLES} names"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection dropped mid-response"
    if isinstance(exc, httpx.ConnectError):
        return _NO_CONNECTION
    return type(exc).__name__


def _reset_epoch(response: httpx.Response) -> float:
    """``X-RateLimit-Reset`` as epoch seconds; a missing or bad header means 'wait a second'."""
    try:
        return float(response.headers["X-RateLimit-Reset"])
    except (KeyError, ValueError):
        return time.time() + 1.0


def proxy_for(url: httpx.URL) -> str | None:
    """The proxy the environment names for ``url``, or ``None`` to go straight.

    ``HTTPS_PROXY`` / ``HTTP_PROXY`` (by the URL's scheme, else ``ALL_PROXY``) and
    ``NO_PROXY``, either case, read as the standard library reads them
    (``urllib.request.getproxies`` and ``proxy_bypass``: a ``NO_PROXY`` entry matches its
    host and the host's subdomains, ``*`` matches every host). A proxy given without a
    scheme is an ``http://`` one, as curl takes it. A loopback host (``localhost``,
    ``127.x.x.x``, ``::1``: the demo clinic's sandbox) is always reached straight, as
    browsers do: a proxy elsewhere could not reach this machine's loopback.
    """
    if _loopback(url.host):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy:
        return None
    host = url.host if url.port is None else f"{url.host}:{url.port}"
    if urllib.request.proxy_bypass(host):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost" or host.lower().endswith(".localhost")


class EnvironmentProxies(httpx.BaseTransport):
    """httpx's own transport, through the proxy the environment names for each URL (:func:`proxy_for`).

    httpx reads the proxy variables only when a client builds its own transport, and a
    :class:`~migrator.cliniko.client.ClinikoClient` hands it one (pacing and retries wrap
    it), so without this its requests would ignore them. A Cliniko destination's uploads
    to file storage go through one too, so both follow the same rules. Each scheme and
    host is routed once, when first asked for: the environment is read as the client
    starts using a host. A failure through a proxy says so (``through_proxy`` on the
    error), so the sentence a user reads names the proxy rather than Cliniko.
    """

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        self._direct = httpx.HTTPTransport(limits=limits)
        self._proxied: dict[str, httpx.HTTPTransport] = {}
        self._routes: dict[tuple[str, str, int | None], httpx.BaseTransport] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        transport = self._routes.get((url.scheme, url.host, url.port))
        if transport is None:
            transport = self._route(url)
        try:
            return transport.handle_request(request)
        except httpx.TransportError as exc:
            exc.through_proxy = transport is not self._direct  # type: ignore[attr-defined]
            raise

    def _route(self, url: httpx.URL) -> httpx.BaseTransport:
        proxy = proxy_for(url)
        with self._lock:
            transport: httpx.BaseTransport = self._direct
            if proxy is not None:
                if proxy not in self._proxied:
                    self._proxied[proxy] = _proxied_transport(proxy, self._limits, url)
                transport = self._proxied[proxy]
            self._routes[(url.scheme, url.host, url.port)] = transport
        return transport

    def close(self) -> None:
        self._direct.close()
        for transport in self._proxied.values():
            transport.close()


def _proxied_transport(proxy: str, limits: httpx.Limits, url: httpx.URL) -> httpx.HTTPTransport:
    """httpx's transport through ``proxy``; one it cannot use is refused in a sentence that leaves it out."""
    try:
        return httpx.HTTPTransport(limits=limits, proxy=proxy)
    # A scheme httpx does not speak, SOCKS without socksio, a URL it cannot read.
    except (ValueError, ImportError) as exc:
        raise ConfigError(
            f"The proxy that {_PROXY_VARIABLES} names for {url.scheme}://{url.host} cannot be "
            "used: give an http:// or https:// proxy (SOCKS is not supported), or list the host in NO_PROXY."
        ) from exc
