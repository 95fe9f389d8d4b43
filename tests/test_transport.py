"""Retries, rate-limit waits, typed errors and the read-only guard, with the transport swapped out."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

import httpx
import pytest

from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.cliniko.transport import RetryPolicy
from migrator.errors import (
    AccessError,
    AuthError,
    ConfigError,
    FatalAPIError,
    NotFoundError,
    ReadOnlyError,
    RetriableAPIError,
    ValidationAPIError,
)

KEY = "MSunitTestKey0123456789abcdefghij-uk1"
FAST = ClientConfig(
    requests_per_minute=0,
    url_template="http://cliniko.test/{shard}/v1",
    retry=RetryPolicy(attempts=4, backoff_base=0.001, backoff_max=0.01),
    concurrency=1,
)


def client_with(handler: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> ClinikoClient:
    return ClinikoClient(KEY, config=FAST, transport=httpx.MockTransport(handler), **kwargs)  # type: ignore[arg-type]


def scripted(*steps: object) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    """A handler that plays ``steps`` in order: a Response, or an exception to raise."""
    seen: list[httpx.Request] = []
    queue = list(steps)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = queue.pop(0)
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, httpx.Response)
        return step

    return handler, seen


OK = httpx.Response(200, json={"id": 1})


def test_requests_carry_basic_auth_user_agent_and_accept() -> None:
    handler, seen = scripted(OK)
    with client_with(handler) as client:
        assert client.get("/user") == {"id": 1}
    request = seen[0]
    assert request.url == "http://cliniko.test/uk1/v1/user"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"] == "Cliniko Migrator (migrator@example.com)"


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(502),
        httpx.Response(503),
        httpx.Response(504),
        httpx.ReadTimeout("stalled"),
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
        httpx.ConnectError("refused"),
        httpx.Response(200, content=b'{"patients": [{"id": 1}, {"id"'),  # truncated, no Content-Length check
    ],
    ids=["502", "503", "504", "timeout", "dropped", "connect", "truncated"],
)
def test_transient_failures_are_retried_then_succeed(failure: object) -> None:
    handler, seen = scripted(failure, failure, OK)
    with client_with(handler) as client:
        assert client.get("/patients/1") == {"id": 1}
        assert len(seen) == 3
        assert client.stats.requests == 3


def test_retries_are_bounded_and_end_in_a_typed_error() -> None:
    handler, seen = scripted(*[httpx.Response(503)] * 4)
    with client_with(handler) as client, pytest.raises(RetriableAPIError) as info:
        client.get("/patients")
    assert len(seen) == 4
    assert "after 4 tries" in str(info.value)
    assert KEY not in str(info.value)


def test_429_waits_until_the_reset_time_then_retries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="migrator")
    reset = int(time.time()) + 1
    handler, seen = scripted(httpx.Response(429, headers={"X-RateLimit-Reset": str(reset)}), OK)
    with client_with(handler) as client:
        assert client.get("/patients") == {"id": 1}
        assert time.time() >= reset - 0.02  # it slept until the server's reset second
        assert len(seen) == 2
        assert client.stats.rate_limited == 1
        assert client.stats.retries == 0  # a rate-limit wait is not a failure
    # -v shows the wait, so a long silent pause has its reason on the terminal.
    assert "rate limited (429) on GET /uk1/v1/patients: every request of this key waits" in caplog.text


@pytest.mark.parametrize(
    ("status", "body", "error", "says"),
    [
        (401, {"message": "Unauthorized"}, AuthError, "did not accept the API key"),
        (403, {"message": "Forbidden"}, AccessError, "not allowed"),
        (404, {"message": "Not found"}, NotFoundError, "Cliniko has no /uk1/v1/patients/9"),
        (400, {"message": "User-Agent required"}, FatalAPIError, "User-Agent required"),
    ],
)
def test_other_4xx_become_typed_errors_with_the_api_message(
    status: int, body: dict, error: type, says: str
) -> None:
    handler, seen = scripted(httpx.Response(status, json=body))
    with client_with(handler) as client, pytest.raises(error) as info:
        client.get("/patients/9")
    assert len(seen) == 1  # never retried
    assert says in str(info.value)
    assert info.value.status == status
    assert info.value.api_message == body["message"]
    assert KEY not in str(info.value) and KEY.split("-")[0] not in repr(info.value)


def test_422_carries_field_errors() -> None:
    body = {"message": "Validation failed", "errors": {"first_name": ["can't be blank"]}}
    handler, _ = scripted(httpx.Response(422, json=body))
    with client_with(handler, writable=True) as client, pytest.raises(ValidationAPIError) as info:
        client.post("/patients", {"last_name": "Nguyen"})
    assert info.value.errors == {"first_name": ["can't be blank"]}
    assert "first_name can't be blank" in str(info.value)


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_the_source_client_refuses_writes_before_sending(method: str) -> None:
    handler, seen = scripted()
    with client_with(handler) as client:
        with pytest.raises(ReadOnlyError, match="read-only"):
            if method == "delete":
                client.delete("/patients/1")
            else:
                getattr(client, method)("/patients/1", {"first_name": "A"})
        # Even past the facade, the transport itself refuses.
        with pytest.raises(ReadOnlyError):
            client._http.request(method.upper(), "/patients/1", content=b"{}")
    assert seen == []


def test_a_write_whose_answer_was_lost_is_not_sent_twice() -> None:
    handler, seen = scripted(httpx.ReadTimeout("stalled"), OK)
    with (
        client_with(handler, writable=True) as client,
        pytest.raises(RetriableAPIError, match="may or may not"),
    ):
        client.post("/patients", {"first_name": "A", "last_name": "B"})
    assert len(seen) == 1


@pytest.mark.parametrize("status", [502, 504])
def test_a_gateway_error_on_a_write_is_unconfirmed_and_its_html_page_is_not_repeated(status: int) -> None:
    page = "<html><body><h1>502 Bad Gateway</h1><hr><center>nginx</center></body></html>"
    handler, seen = scripted(httpx.Response(status, text=page, headers={"Content-Type": "text/html"}), OK)
    with client_with(handler, writable=True) as client, pytest.raises(RetriableAPIError) as raised:
        client.post("/patients", {"first_name": "A", "last_name": "B"})
    assert len(seen) == 1  # not sent again: the gateway may have passed it on
    assert raised.value.unconfirmed  # so the migration looks for the record before sending it again
    assert str(raised.value) == (
        f"Cliniko answered POST /uk1/v1/patients with HTTP {status}, a gateway error; the write may or may not "
        "have been applied, so it was not sent again."
    )


def test_a_plain_text_error_body_is_kept_as_clinikos_sentence() -> None:
    handler, _ = scripted(httpx.Response(500, text="Something went wrong.\n"))
    with client_with(handler, writable=True) as client, pytest.raises(RetriableAPIError) as raised:
        client.put("/patients/1", {"first_name": "A"})
    assert str(raised.value) == "Cliniko failed PUT /uk1/v1/patients/1 (HTTP 500): Something went wrong."
    assert not raised.value.unconfirmed


@pytest.mark.parametrize(("shard", "refused"), [("xx9", ConfigError), ("uk1", RetriableAPIError)])
def test_a_host_never_reached_on_an_unlisted_shard_blames_the_key(shard: str, refused: type) -> None:
    """A key cut short can end in a made-up shard: its host is never reached, and the sentence says why."""
    key = f"MSunitTestKey0123456789abcdefghij-{shard}"
    failing = [httpx.ConnectError("[Errno -2] Name or service not known")] * FAST.retry.attempts
    handler, seen = scripted(*failing)
    with (
        ClinikoClient(key, config=FAST, transport=httpx.MockTransport(handler)) as client,
        pytest.raises(refused) as raised,
    ):
        client.get("/user")
    assert len(seen) == FAST.retry.attempts
    if shard == "xx9":
        assert str(raised.value) == (
            "http://cliniko.test/xx9/v1 could not be reached: the key ends in -xx9, a shard Cliniko does not "
            "list. Check that the whole key was pasted (the part after its last '-' names the shard), or the "
            "network if Cliniko has added that shard since."
        )
    else:  # a listed shard: Cliniko (or the network) is down, and a later try may work
        assert "after 4 tries (last: could not connect)" in str(raised.value)
    assert "abcdefghij" not in str(raised.value)


def test_a_write_that_never_connected_is_retried() -> None:
    handler, seen = scripted(httpx.ConnectError("refused"), httpx.Response(201, json={"id": 5}))
    with client_with(handler, writable=True) as client:
        assert client.post("/patients", {"first_name": "A", "last_name": "B"}) == {"id": 5}
    assert len(seen) == 2
    assert json.loads(seen[1].content) == {"first_name": "A", "last_name": "B"}


def test_key_never_in_client_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    handler, _ = scripted(httpx.Response(503), OK)
    with client_with(handler) as client:
        client.get("/patients")
        text = repr(client) + repr(client.key) + caplog.text
    body = KEY.split("-")[0]
    assert body not in text
    assert base64.b64encode(f"{KEY}:".encode()).decode() not in text


def test_user_agent_must_name_a_contact_email() -> None:
    with pytest.raises(ConfigError, match="App name"):
        ClientConfig(user_agent="python-httpx")
