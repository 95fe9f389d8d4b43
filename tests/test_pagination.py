"""Pagination: every record exactly once, in order, with or without prefetch; loops refused."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest

from migrator.cliniko.client import ClientConfig, ClinikoClient
from migrator.cliniko.transport import RetryPolicy
from migrator.errors import FatalAPIError

KEY = "MSpaginationTestKey0123456789abcdef-au2"
BASE = "http://cliniko.test/au2/v1"


def paging_server(
    total: int,
    *,
    next_for: Callable[[int, int, int], str | None] | None = None,
    grow_after: int | None = None,
) -> tuple[Callable[[httpx.Request], httpx.Response], list[str]]:
    """A /patients list of ``total`` records; ``next_for(page, per_page, last)`` may bend its links."""
    records = [{"id": 514810972972521916 + i, "first_name": f"P{i}"} for i in range(total)]
    asked: list[str] = []
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            asked.append(str(request.url))
            if grow_after is not None and len(asked) == grow_after:
                records.extend({"id": 9_000_000 + i, "first_name": "New"} for i in range(3))
            count = len(records)
        page = int(request.url.params.get("page", "1"))
        per_page = min(int(request.url.params.get("per_page", "50")), 100)
        last = max(1, -(-count // per_page))
        chunk = records[(page - 1) * per_page : page * per_page]
        links = {"self": f"{BASE}/patients?page={page}&per_page={per_page}"}
        nxt = (
            next_for(page, per_page, last)
            if next_for
            else (f"{BASE}/patients?page={page + 1}&per_page={per_page}" if page < last else None)
        )
        if nxt:
            links["next"] = nxt
        return httpx.Response(200, json={"patients": chunk, "total_entries": count, "links": links})

    return handler, asked


def make_client(handler: Callable[[httpx.Request], httpx.Response], concurrency: int) -> ClinikoClient:
    config = ClientConfig(
        requests_per_minute=0,
        url_template="http://cliniko.test/{shard}/v1",
        concurrency=concurrency,
        retry=RetryPolicy(attempts=2, backoff_base=0.001),
    )
    return ClinikoClient(KEY, config=config, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("total", [0, 1, 100, 101, 1234])
def test_every_record_once_in_order(total: int, concurrency: int) -> None:
    handler, asked = paging_server(total)
    with make_client(handler, concurrency) as client:
        pages = list(client.pages("patients"))
    ids = [r["id"] for p in pages for r in p.records]
    assert ids == [514810972972521916 + i for i in range(total)]
    assert [p.number for p in pages] == list(range(1, max(1, -(-total // 100)) + 1))
    assert len(asked) == len(pages)  # no page fetched twice, none wasted
    assert "per_page=100" in asked[0] and "page=1" in asked[0]


def test_records_added_during_the_read_are_followed() -> None:
    handler, _ = paging_server(250, grow_after=2)
    with make_client(handler, 4) as client:
        ids = [r["id"] for p in client.pages("patients") for r in p.records]
    assert len(ids) == 253 and len(set(ids)) == 253


def test_a_server_with_other_links_is_followed_link_by_link() -> None:
    def cursor_links(page: int, per_page: int, last: int) -> str | None:
        return f"{BASE}/patients?page={page + 1}&per_page={per_page}&cursor=c{page}" if page < last else None

    handler, asked = paging_server(350, next_for=cursor_links)
    with make_client(handler, 4) as client:
        ids = [r["id"] for p in client.pages("patients") for r in p.records]
    assert len(ids) == 350 and len(set(ids)) == 350
    assert all("cursor" in url for url in asked[1:])


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_page_that_links_to_itself_is_refused(concurrency: int) -> None:
    def loop(page: int, per_page: int, last: int) -> str:
        return f"{BASE}/patients?per_page={per_page}&page={min(page + 1, 2)}"

    handler, asked = paging_server(500, next_for=loop)
    with make_client(handler, concurrency) as client, pytest.raises(FatalAPIError, match="already read"):
        list(client.pages("patients"))
    assert len(asked) <= 2 + concurrency


def test_links_spelled_differently_keep_the_prefetch() -> None:
    # The same page with its query in another order (and absolute): still the expected link.
    def reordered(page: int, per_page: int, last: int) -> str | None:
        return f"{BASE}/patients?per_page={per_page}&page={page + 1}" if page < last else None

    handler, asked = paging_server(1234, next_for=reordered)
    with make_client(handler, 4) as client:
        ids = [r["id"] for p in client.pages("patients") for r in p.records]
    assert len(ids) == 1234 and len(set(ids)) == 1234
    assert len(asked) == 13  # no page asked for twice: the guesses held


def test_a_link_back_to_a_prefetched_page_is_refused() -> None:
    # Pages 2 to 5 come from guessed links; page 5 then points back at page 3.
    def back(page: int, per_page: int, last: int) -> str | None:
        target = 3 if page == 5 else page + 1
        return f"{BASE}/patients?page={target}&per_page={per_page}" if page < last else None

    handler, asked = paging_server(1000, next_for=back)
    with make_client(handler, 4) as client, pytest.raises(FatalAPIError, match="already read"):
        list(client.pages("patients"))
    assert len(asked) == len(set(asked))  # refused at once, not after reading pages 3 to 5 again


def test_a_link_back_to_page_one_is_refused() -> None:
    handler, _ = paging_server(
        300, next_for=lambda page, pp, last: f"http://elsewhere.test/au2/v1/patients?page=1&per_page={pp}"
    )
    with make_client(handler, 1) as client, pytest.raises(FatalAPIError, match="already read"):
        list(client.pages("patients"))


def test_count_is_one_request() -> None:
    handler, asked = paging_server(1234)
    with make_client(handler, 4) as client:
        assert client.count("patients") == 1234
    assert len(asked) == 1 and "per_page=1" in asked[0]


def test_missing_collection_key_is_a_clear_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"total_entries": 0, "links": {}})

    with make_client(handler, 1) as client, pytest.raises(FatalAPIError, match="no 'patients' list"):
        list(client.pages("patients"))
