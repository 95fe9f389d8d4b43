"""Rate limiting, fault injection and request statistics.

Rate limit (``CLINIKO_API.md`` §1.6): a budget per **user** (two keys of one user
share it) in fixed windows: the window of an instant ``t`` is
``floor(t / window)``; it ends at ``(floor(t / window) + 1) * window``, which is the
``X-RateLimit-Reset`` of a 429 (absolute epoch seconds, rounded up to an integer).
Choices where the docs are silent:

- **A 429 does not count toward the budget.** A client that waits as told gets
  its full budget in the next window; one that hammers through a 429 is not
  punished further. (Cliniko may count them; a client that honours the header
  behaves the same either way.)
- Requests refused before authentication (400 without ``User-Agent``, 401) count
  toward no one's budget: there is no user to charge.
- Injected faults *do* count: the request reached the server and was charged.

Faults: with probability ``p`` per authenticated API request, decided by a
``random.Random(seed)`` stream (the same sequence of decisions for the same seed
and request order), one of :data:`FAULT_KINDS`:

- ``"502"`` / ``"503"``: an error status (502 with an HTML body, as a gateway
  would send; 503 with a JSON message);
- ``"stall"``: the answer is held for ``stall`` seconds, then sent normally;
- ``"drop"``: response headers are sent, then the connection is closed with no body;
- ``"truncate"``: a ``Content-Length`` larger than the body, part of the body,
  then the connection is closed.

Clients see ``drop`` and ``truncate`` as ``httpx.RemoteProtocolError``.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAULT_KINDS", "FaultInjector", "RateLimiter", "Stats", "fingerprint"]

FAULT_KINDS = ("502", "503", "stall", "drop", "truncate")


def fingerprint(key: str) -> str:
    """A short non-reversible tag of a key (the same as ``ApiKey.fingerprint``)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class RateLimiter:
    """Fixed-window request budgets per user.

    Args:
        limit: requests per window per user; ``0`` disables the limit.
        window: the window length in seconds.
        clock: the time source (tests may pass a fake one).
    """

    def __init__(self, limit: int, window: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._counts: dict[Any, tuple[int, int]] = {}  # user -> (window index, requests)

    def check(self, user: Any) -> int | None:
        """Charge one request to ``user``; ``None`` if allowed, else the reset epoch second."""
        if self.limit <= 0:
            return None
        now = self.clock()
        index = math.floor(now / self.window)
        current, used = self._counts.get(user, (index, 0))
        if current != index:
            used = 0
        if used >= self.limit:
            return math.ceil((index + 1) * self.window)
        self._counts[user] = (index, used + 1)
        return None


class FaultInjector:
    """Decides, request by request, whether and how to misbehave."""

    def __init__(self, probability: float, seed: int = 1, kinds: tuple[str, ...] = FAULT_KINDS) -> None:
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError("the fault probability must be between 0 and 1")
        self.probability = probability
        self.kinds = tuple(kinds) or FAULT_KINDS
        self._random = random.Random(seed)

    def draw(self) -> str | None:
        """The fault for the next request, or ``None``."""
        if self.probability <= 0.0:
            return None
        # Always draw both numbers so the sequence does not depend on outcomes.
        roll, pick = self._random.random(), self._random.randrange(len(self.kinds))
        return self.kinds[pick] if roll < self.probability else None


@dataclass
class _Tally:
    requests: int = 0
    writes: int = 0  # requests other than GET: lets a test prove the source was never written
    rate_limited: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "writes": self.writes,
            "rate_limited": self.rate_limited,
            "faults": dict(self.faults),
        }


class Stats:
    """What the server did, per key (by fingerprint) and per account."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.keys: dict[str, _Tally] = {}
        self.accounts: dict[str, _Tally] = {}
        self.key_info: dict[str, dict[str, str]] = {}

    def _tallies(self, fp: str, account: str) -> tuple[_Tally, _Tally]:
        return self.keys.setdefault(fp, _Tally()), self.accounts.setdefault(account, _Tally())

    def served(self, fp: str, account: str, role: str, method: str = "GET") -> None:
        self.key_info.setdefault(fp, {"account": account, "role": role})
        for tally in self._tallies(fp, account):
            tally.requests += 1
            if method != "GET":
                tally.writes += 1

    def limited(self, fp: str, account: str, role: str) -> None:
        self.key_info.setdefault(fp, {"account": account, "role": role})
        for tally in self._tallies(fp, account):
            tally.rate_limited += 1

    def fault(self, fp: str, account: str, kind: str) -> None:
        for tally in self._tallies(fp, account):
            tally.faults[kind] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_requests": self.total,
            "keys": {fp: {**self.key_info.get(fp, {}), **t.as_dict()} for fp, t in self.keys.items()},
            "accounts": {name: t.as_dict() for name, t in self.accounts.items()},
        }
