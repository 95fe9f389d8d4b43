"""Pacing: spend an API key's request budget evenly, never in bursts.

Cliniko allows 200 requests per minute per user. A :class:`RateLimiter` hands out
send times one at a time (a token bucket of depth one, kept as "the next free
slot"), so every thread sharing a key queues on the same schedule. Two slots per
window are left spare: a server that counts in fixed minute windows would
otherwise see the ``limit + 1``-th request whenever network jitter nudges one
across a window boundary, and 429s cost more than the 1% they save.

After a 429 every thread waits until the server's reset time, not just the one
that was refused.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
import time
from collections.abc import Callable, Mapping

from migrator.errors import ConfigError

__all__ = ["DEFAULT_REQUESTS_PER_MINUTE", "RATE_ENV", "RateLimiter", "limiter_for", "pace_from_env"]

DEFAULT_REQUESTS_PER_MINUTE = 200

#: The environment variable that sets each key's pace, for the CLI, the console and notebooks alike.
RATE_ENV = "MIGRATOR_REQUESTS_PER_MINUTE"


def pace_from_env(environ: Mapping[str, str] | None = None) -> float:
    """Each key's pace from :data:`RATE_ENV`: requests per minute, ``0`` for unpaced (the sandbox).

    Unset or blank, Cliniko's published limit (:data:`DEFAULT_REQUESTS_PER_MINUTE`).

    Raises:
        ConfigError: not a number, negative, not finite, or under :data:`MIN_REQUESTS_PER_MINUTE`.
    """
    raw = (os.environ if environ is None else environ).get(RATE_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_REQUESTS_PER_MINUTE
    try:
        pace = float(raw)
    except ValueError:
        raise ConfigError(f"{RATE_ENV} must be a number of requests per minute; got {raw!r}.") from None
    return checked_pace(pace, RATE_ENV)


def checked_pace(pace: float, name: str) -> float:
    """``pace`` (requests per minute, ``0`` for unpaced) if it is one to take; ``name`` is what set it.

    Raises:
        ConfigError: negative, not finite, or under :data:`MIN_REQUESTS_PER_MINUTE`.
    """
    if isinstance(pace, bool) or not isinstance(pace, numbers.Real):  # numpy's numbers are Real too
        raise ConfigError(f"{name} must be a number of requests per minute (0 for unpaced); got {pace!r}.")
    if pace < 0:
        raise ConfigError(f"{name} cannot be negative; use 0 to send requests unpaced.")
    if not math.isfinite(pace):
        raise ConfigError(f"{name} must be a number of requests per minute (0 for unpaced); got {pace!r}.")
    if 0 < pace < MIN_REQUESTS_PER_MINUTE:
        raise ConfigError(
            f"{name} is {pace:g} requests a minute; at under {MIN_REQUESTS_PER_MINUTE} even a small "
            f"clinic would take hours. Use at least {MIN_REQUESTS_PER_MINUTE}, or 0 for unpaced."
        )
    return pace


#: The slowest pace taken: below it a run crawls (a few requests a minute, less the spare ones).
MIN_REQUESTS_PER_MINUTE = 10


#: Requests per window left unused as a guard against window-edge jitter.
SPARE_PER_WINDOW = 2


class RateLimiter:
    """A thread-safe pacer for one API key.

    Args:
        limit: requests allowed per ``window`` seconds (``0`` or less: unpaced).
        window: the window length in seconds (Cliniko's is a minute).
        spare: requests per window deliberately left unused (see module docstring).
        clock, sleep: injectable for tests.
    """

    def __init__(
        self,
        limit: float = DEFAULT_REQUESTS_PER_MINUTE,
        window: float = 60.0,
        *,
        spare: float = SPARE_PER_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limit = limit
        self.window = window
        paced = max(limit - spare, limit * 0.9) if limit > 0 else 0
        self.interval = window / paced if paced > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self._paused_until = 0.0
        self.waited = 0.0  # total seconds callers spent waiting, for reports

    def acquire(self) -> float:
        """Block until this caller may send one request; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot, self._paused_until)
            self._next_slot = slot + self.interval
        delay = slot - now
        if delay > 0:
            self._sleep(delay)
            self.waited += delay
        return max(delay, 0.0)

    def pause_until_epoch(self, reset_epoch: float) -> float:
        """Hold every caller until ``reset_epoch`` (UNIX seconds, as in ``X-RateLimit-Reset``).

        Returns the seconds of the pause (clamped as below).
        """
        # A reset in the past or absurdly far ahead (clock skew, a bad header) is
        # clamped: wait at least a moment and at most one window.
        delay = min(max(reset_epoch - time.time(), 0.05), self.window)
        with self._lock:
            until = self._clock() + delay
            self._paused_until = max(self._paused_until, until)
            self._next_slot = max(self._next_slot, until)
        return delay


_LIMITERS: dict[tuple[str, float, float], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter_for(fingerprint: str, limit: float, window: float = 60.0) -> RateLimiter:
    """The process-wide limiter of one key, so every client of that key shares one budget."""
    with _LIMITERS_LOCK:
        key = (fingerprint, float(limit), float(window))
        if key not in _LIMITERS:
            _LIMITERS[key] = RateLimiter(limit, window)
        return _LIMITERS[key]
