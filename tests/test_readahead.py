"""ReadAhead: the next lists are read while the current one is consumed, in order, bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from migrator.cliniko.readahead import ReadAhead


def _list(name: str, n: int, opened: list[str], delay: float = 0.0) -> Iterator[str]:
    opened.append(name)
    for i in range(n):
        time.sleep(delay)
        yield f"{name}{i}"


def test_items_come_out_in_list_order_whatever_the_threads_do() -> None:
    opened: list[str] = []
    lists = ReadAhead([lambda n=n: _list(n, 5, opened, delay=0.001) for n in "abcde"], ahead=2, buffer=2)
    out = [item for items in lists for item in items]
    assert out == [f"{n}{i}" for n in "abcde" for i in range(5)]


def test_the_next_lists_open_before_the_current_one_is_consumed() -> None:
    opened: list[str] = []
    release = threading.Event()

    def slow_first() -> Iterator[str]:
        opened.append("a")
        release.wait(5)
        yield "a0"

    lists = iter(
        ReadAhead([slow_first, lambda: _list("b", 1, opened), lambda: _list("c", 1, opened)], ahead=2)
    )
    first = next(lists)
    deadline = time.monotonic() + 5
    while len(opened) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(opened) == ["a", "b", "c"]  # b and c opened while a is still waiting
    release.set()
    assert list(first) == ["a0"]


def test_a_list_s_error_reaches_the_consumer_at_that_list() -> None:
    opened: list[str] = []

    def broken() -> Iterator[str]:
        yield "b0"
        raise RuntimeError("page 2 of b failed")

    lists = iter(ReadAhead([lambda: _list("a", 2, opened), broken], ahead=1))
    assert list(next(lists)) == ["a0", "a1"]
    items = next(lists)
    assert next(items) == "b0"
    with pytest.raises(RuntimeError, match="page 2 of b failed"):
        next(items)


def test_ahead_zero_reads_one_list_at_a_time_in_the_caller_s_thread() -> None:
    opened: list[str] = []
    lists = iter(ReadAhead([lambda: _list("a", 1, opened), lambda: _list("b", 1, opened)], ahead=0))
    assert list(next(lists)) == ["a0"]
    assert opened == ["a"]
    assert list(next(lists)) == ["b0"]


def test_stopping_early_stops_the_background_lists() -> None:
    produced: list[int] = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    lists = ReadAhead([endless, endless], ahead=1, buffer=3)
    for items in lists:
        assert next(items) == 0
        break
    lists.close()
    time.sleep(0.3)
    settled = len(produced)
    time.sleep(0.3)
    assert len(produced) == settled  # nothing runs on after close
    assert settled <= 2 * (3 + 2)  # each list stopped within its buffer
