"""Walking a Cliniko list page by page.

The paginator only knows how to find the next page; filters and incremental
cursors (``updated_at:>...``) are the caller's business. It follows
``links.next`` as the docs advise, and refuses to fetch the same page twice, so a
server that links a page to itself cannot trap a run in a loop.

Latency hiding: page 1 says how many records there are (``total_entries``) and
what the next link looks like. When that link differs from page 1's only by its
``page`` parameter, the following pages' links are known in advance, and up to
``prefetch`` of them are fetched concurrently, still yielded in order. Every
page's own ``next`` link is checked against the expected one; at the first
surprise (records added mid-read, a server that paginates differently) the
paginator drops what it guessed and goes back to plain link following.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import httpx

from migrator.errors import FatalAPIError

__all__ = ["PER_PAGE", "Page", "iter_pages"]

log = logging.getLogger(__name__)

PER_PAGE = 100  # Cliniko's maximum

Fetch = Callable[[str, list[tuple[str, str]] | None], dict[str, Any]]


@dataclass(frozen=True)
class Page:
    """One page of a list: its raw records and where it sits."""

    number: int
    records: list[dict[str, Any]]
    total_entries: int | None
    next_url: str | None


def _normalise(
    url: str, params: list[tuple[str, str]] | None = None
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A page's identity: its route below the API's ``/v1`` and its sorted query.

    Host and scheme are ignored, so a link back to page 1 is caught whether it is
    written relative or absolute.
    """
    parsed = httpx.URL(url)
    route = parsed.path.rstrip("/")
    if "/v1/" in route:
        route = "/" + route.split("/v1/", 1)[1]
    query = params if params is not None else parsed.params.multi_items()
    return route, tuple(sorted(query))


def _page_param(url: str) -> str | None:
    return httpx.URL(url).params.get("page")


def iter_pages(
    fetch: Fetch,
    path: str,
    params: list[tuple[str, str]],
    collection: str,
    *,
    per_page: int = PER_PAGE,
    executor: Executor | None = None,
    prefetch: int = 3,
) -> Iterator[Page]:
    """Yield every page of ``path`` in order.

    Args:
        fetch: ``fetch(url_or_path, params)`` returns the decoded JSON of one GET.
        path: the list route, e.g. ``/patients`` or ``/patients/archived``.
        params: query parameters of the first page (``q[]`` filters, ``sort``...).
        collection: the envelope key holding the records (the resource name).
        per_page: page size asked for (Cliniko caps it at 100).
        executor: threads for concurrent page fetches; ``None`` fetches one at a time.
        prefetch: how many pages may be in flight ahead of the consumer.

    Raises:
        FatalAPIError: a page lacks the collection key, or links back to a page
            already fetched.
    """
    first_params = [*params, ("page", "1"), ("per_page", str(per_page))]
    page = _to_page(1, fetch(path, first_params), collection, path)
    yield page
    seen = {_normalise(path, first_params)}
    next_url = page.next_url
    if (
        next_url
        and executor is not None
        and prefetch > 1
        and page.total_entries
        and _page_param(next_url) == "2"
    ):
        page_size = int(httpx.URL(next_url).params.get("per_page") or per_page)
        last = math.ceil(page.total_entries / page_size)
        template = httpx.URL(next_url)
        guessed = {k: str(template.copy_set_param("page", str(k))) for k in range(2, last + 1)}
        next_url = yield from _prefetched(fetch, collection, executor, prefetch, guessed, last, seen)
    while next_url:
        key = _normalise(next_url)
        if key in seen:
            raise FatalAPIError(
                f"Cliniko's list {path} links back to a page already read ({next_url}); stopped to avoid a loop."
            )
        seen.add(key)
        number = int(_page_param(next_url) or 0)
        page = _to_page(number, fetch(next_url, None), collection, path)
        if not page.records and page.next_url:
            log.warning("empty page %s of %s links onwards; stopping there", number, path)
            return
        yield page
        next_url = page.next_url


def _prefetched(
    fetch: Fetch,
    collection: str,
    executor: Executor,
    prefetch: int,
    guessed: dict[int, str],
    last: int,
    seen: set[tuple[str, tuple[tuple[str, str], ...]]],
) -> Generator[Page, None, str | None]:
    """Fetch the guessed pages ahead of need; returns the link to follow afterwards (or None)."""
    pending: deque[tuple[int, Future[dict[str, Any]]]] = deque()
    upcoming = iter(range(2, last + 1))

    def submit_next() -> None:
        number = next(upcoming, None)
        if number is not None:
            pending.append((number, executor.submit(fetch, guessed[number], None)))

    fetched: list[str] = []  # guessed links read so far; added to `seen` only if we fall back
    try:
        for _ in range(prefetch):
            submit_next()
        while pending:
            number, future = pending.popleft()
            page = _to_page(number, future.result(), collection, guessed[number])
            fetched.append(guessed[number])
            submit_next()
            yield page
            expected = guessed.get(number + 1)
            # The same text is the same page; only links spelled differently need parsing.
            if page.next_url != expected and (page.next_url and _normalise(page.next_url)) != (
                expected and _normalise(expected)
            ):
                # The server's pagination is not what page 1 suggested: trust its link.
                seen.update(_normalise(url) for url in fetched)
                return page.next_url
        return None
    finally:
        for _, future in pending:
            future.cancel()


def _to_page(number: int, body: dict[str, Any], collection: str, where: str) -> Page:
    try:
        records = body[collection]
    except (KeyError, TypeError):
        raise FatalAPIError(
            f"Cliniko's answer for {where} has no {collection!r} list; its format is not the expected one."
        ) from None
    links = body.get("links") or {}
    total = body.get("total_entries")
    try:
        total = int(total) if total is not None else None
    except (TypeError, ValueError):
        total = None  # the docs show a string id pasted in here once: ignore rather than trust it
    return Page(number=number, records=records, total_entries=total, next_url=links.get("next"))
