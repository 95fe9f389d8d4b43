"""Reading the next lists while the current one is still being consumed.

A list's own pages are prefetched by :func:`~migrator.cliniko.pagination.iter_pages`,
but its first page cannot be: nothing is known about a list until page 1 answers. A
migration reads about twenty lists one after the other, most of them a page or two
long, so with real network latency (a few hundred milliseconds per answer) every list
boundary leaves the budget idle. :class:`ReadAhead` opens the next ``ahead`` lists in
background threads while the caller consumes the current one, buffering at most
``buffer`` pages per list. Items still come out in the original order, and the total
rate stays the client's: every request goes through the same per-key pacer.

>>> lists = ReadAhead([lambda: client.pages("patients"), lambda: client.pages("contacts")])  # doctest: +SKIP
>>> for pages in lists:                                                                   # doctest: +SKIP
...     for page in pages: ...
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

__all__ = ["ReadAhead"]

T = TypeVar("T")

_DONE = object()


class _Producer(Generic[T]):
    """One list driven in its own thread into a bounded queue."""

    def __init__(self, opener: Callable[[], Iterator[T]], buffer: int, cancelled: threading.Event) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=buffer)
        self._cancelled = cancelled
        self._thread = threading.Thread(target=self._run, args=(opener,), daemon=True, name="read-ahead")
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, opener: Callable[[], Iterator[T]]) -> None:
        try:
            iterator = opener()
            try:
                for item in iterator:
                    if not self._put(item):
                        return
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()  # a generator's cleanup (pending prefetches) runs in its own thread
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failure(exc))
            return
        self._put(_DONE)

    def items(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ReadAhead(Generic[T]):
    """Iterate over ``openers``' iterators in order, the next ``ahead`` already running.

    Args:
        openers: each returns one list's iterator (called in a background thread).
        ahead: how many lists beyond the current one may be read concurrently
            (``0`` reads strictly one list at a time, in the caller's thread).
        buffer: the most items held per list ahead of the consumer (bounds memory).

    An error raised by a list is raised to the consumer when it reaches that list.
    Closing the iterator early (``break``, an exception, :meth:`close`) stops every
    background list after its current item.
    """

    def __init__(
        self, openers: Sequence[Callable[[], Iterator[T]]], *, ahead: int = 2, buffer: int = 8
    ) -> None:
        self.openers = list(openers)
        self.ahead = ahead
        self.buffer = buffer
        self._cancelled = threading.Event()

    def close(self) -> None:
        """Stop every list still being read in the background."""
        self._cancelled.set()

    def __iter__(self) -> Iterator[Iterator[T]]:
        if self.ahead <= 0:
            for opener in self.openers:
                yield opener()
            return
        started: list[_Producer[T]] = []
        try:
            for index in range(len(self.openers)):
                while len(started) <= min(index + self.ahead, len(self.openers) - 1):
                    started.append(_Producer(self.openers[len(started)], self.buffer, self._cancelled))
                yield started[index].items()
        finally:
            self.close()
