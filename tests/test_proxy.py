"""The API client goes through the proxy HTTPS_PROXY / HTTP_PROXY name, and straight where NO_PROXY says.

The proxy here is a real forward proxy on loopback. It knows the sandbox as
``sandbox.invalid``, a name no resolver answers, so a request that reaches the
sandbox under that name can only have gone through it.
"""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.cliniko.transport import RetryPolicy, proxy_for
from migrator.errors import ConfigError, RetriableAPIError
from tests.conftest import RunningSandbox

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-authorization", "proxy-connection"}


class _ForwardProxy(ThreadingHTTPServer):
    """Forwards absolute-form GETs, mapping ``sandbox.invalid`` to loopback; notes what it forwarded."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.seen: list[tuple[str, bool]] = []  # (the URL asked for, whether it carried an Authorization)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ForwardProxy

    def do_GET(self) -> None:
        target = urllib.parse.urlsplit(self.path)
        self.server.seen.append((self.path, "Authorization" in self.headers))
        host = "127.0.0.1" if target.hostname == "sandbox.invalid" else target.hostname
        upstream = http.client.HTTPConnection(host or "", target.port or 80, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream.request("GET", target.path + (f"?{target.query}" if target.query else ""), headers=headers)
        answer = upstream.getresponse()
        body = answer.read()
        upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[_ForwardProxy]:
    server = _ForwardProxy()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def _refused_port() -> Iterator[int]:
    """A loopback port bound but not listening, so connecting to it is refused at once."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment naming no proxy, whatever the machine has."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def _client(sandbox: RunningSandbox, *, host: str = "127.0.0.1", attempts: int = 2) -> ClinikoClient:
    config = ClientConfig(
        url_template=sandbox.url_template.replace("127.0.0.1", host),
        requests_per_minute=0,
        retry=RetryPolicy(attempts=attempts, backoff_base=0.01, backoff_max=0.02),
    )
    return ClinikoClient(sandbox.key("source"), config=config)


def test_every_request_goes_through_the_proxy_http_proxy_names(
    tiny_sandbox: RunningSandbox, proxy: _ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with _client(tiny_sandbox, host="sandbox.invalid") as client:
        patients = [r["id"] for page in client.pages("patients") for r in page.records]
        total = client.count("patients")
        sent = client.stats.requests
    assert total == tiny_sandbox.totals()["patients"] == len(patients)
    # Every request the client counted (paced and retried as ever) went through the proxy, key and all.
    assert len(proxy.seen) == sent >= 2
    assert all(url.startswith("http://sandbox.invalid:") and auth for url, auth in proxy.seen)


def test_no_proxy_sends_its_hosts_straight(
    tiny_sandbox: RunningSandbox, proxy: _ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.com,sandbox.invalid")
    # Straight, the name resolves nowhere: the client fails without asking the proxy.
    with (
        _client(tiny_sandbox, host="sandbox.invalid", attempts=1) as client,
        pytest.raises(RetriableAPIError) as caught,
    ):
        client.count("patients")
    assert str(caught.value).endswith("after 1 tries (last: could not connect).")
    assert proxy.seen == []


def test_loopback_is_never_proxied(
    tiny_sandbox: RunningSandbox, proxy: _ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo clinic's sandbox listens on loopback, which no proxy elsewhere could reach."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with _client(tiny_sandbox) as client:
        assert client.count("patients") == tiny_sandbox.totals()["patients"]
    assert proxy.seen == []
    assert proxy_for(httpx.URL("http://localhost:8765/au1/v1")) is None
    assert proxy_for(httpx.URL("http://[::1]:8765/au1/v1")) is None
    assert proxy_for(httpx.URL("http://127.0.0.2/au1/v1")) is None
    assert proxy_for(httpx.URL("http://10.0.0.2/au1/v1")) == proxy.url


def test_a_proxy_that_cannot_be_reached_is_named_without_its_password(
    tiny_sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _refused_port() as port:
        monkeypatch.setenv("HTTP_PROXY", f"http://support:s3cret-pass@127.0.0.1:{port}")
        with (
            _client(tiny_sandbox, host="sandbox.invalid") as client,
            pytest.raises(RetriableAPIError) as caught,
        ):
            client.count("patients")
    shard = tiny_sandbox.account("source")["shard"]
    assert str(caught.value) == (
        f"Cliniko could not answer GET /{shard}/v1/patients after 2 tries "
        "(last: could not connect through the proxy that HTTPS_PROXY, HTTP_PROXY or ALL_PROXY names)."
    )


@pytest.mark.parametrize(
    "proxy_url", ["ftp://support:s3cret-pass@proxy.example:21", "socks5://proxy.example:1080"]
)
def test_a_proxy_httpx_cannot_use_is_refused_in_a_sentence(
    tiny_sandbox: RunningSandbox, proxy_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    with _client(tiny_sandbox, host="sandbox.invalid") as client, pytest.raises(ConfigError) as caught:
        client.count("patients")
    assert str(caught.value) == (
        "The proxy that HTTPS_PROXY, HTTP_PROXY or ALL_PROXY names for http://sandbox.invalid cannot be used: "
        "give an http:// or https:// proxy (SOCKS is not supported), or list the host in NO_PROXY."
    )


def test_which_proxy_a_url_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    api = httpx.URL("https://api.au1.cliniko.com/v1/patients")
    assert proxy_for(api) is None
    monkeypatch.setenv("HTTP_PROXY", "http://plain.example:3128")
    assert proxy_for(api) is None  # an https URL takes HTTPS_PROXY, not HTTP_PROXY
    monkeypatch.setenv("ALL_PROXY", "every.example:8080")
    assert proxy_for(api) == "http://every.example:8080"  # no scheme: an http:// proxy
    monkeypatch.setenv("https_proxy", "https://secure.example:443")
    assert proxy_for(api) == "https://secure.example:443"
    monkeypatch.setenv("NO_PROXY", ".cliniko.com")
    assert proxy_for(api) is None
    assert proxy_for(httpx.URL("https://uploads.example/bucket")) == "https://secure.example:443"
    monkeypatch.setenv("NO_PROXY", "*")
    assert proxy_for(httpx.URL("https://uploads.example/bucket")) is None
