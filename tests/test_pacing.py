"""The rate limiter's schedule, on a fake clock."""

from __future__ import annotations

import time

import pytest

import migrator
from migrator.cliniko.pacing import RateLimiter, limiter_for
from migrator.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_requests_are_spread_evenly_with_spare_slots() -> None:
    clock = FakeClock()
    limiter = RateLimiter(62, 60, spare=2, clock=clock, sleep=clock.sleep)
    for _ in range(4):
        limiter.acquire()
    assert clock.slept == [1.0, 1.0, 1.0]  # 60 requests per 60 s: one a second, the first at once
    assert limiter.waited == 3.0


def test_idle_time_is_not_banked_into_a_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(62, 60, spare=2, clock=clock, sleep=clock.sleep)
    limiter.acquire()
    clock.now += 30  # idle
    limiter.acquire()
    limiter.acquire()
    assert clock.slept == [1.0]


def test_a_429_holds_every_caller_until_reset() -> None:
    clock = FakeClock()
    limiter = RateLimiter(62, 60, clock=clock, sleep=clock.sleep)
    limiter.acquire()
    limiter.pause_until_epoch(time.time() + 5)
    limiter.acquire()
    assert 4.9 <= clock.slept[0] <= 5.01


def test_unpaced_limiter_never_waits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0, 60, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        limiter.acquire()
    assert clock.slept == []


def test_one_limiter_per_key_and_pace() -> None:
    assert limiter_for("abc", 200) is limiter_for("abc", 200)
    assert limiter_for("abc", 200) is not limiter_for("def", 200)


@pytest.mark.parametrize(
    "pace, said",
    [(-1, "requests_per_minute cannot be negative"), (5, "requests_per_minute is 5 requests a minute")],
)
def test_a_notebooks_pace_is_held_to_the_environment_variables_rule(pace: float, said: str) -> None:
    """``migrator.connect(requests_per_minute=...)`` refuses what MIGRATOR_REQUESTS_PER_MINUTE refuses, before any request."""
    with pytest.raises(ConfigError, match=said):
        migrator.connect(
            "MS-not-checked-yet-au1", url_template="http://127.0.0.1:9/{shard}/v1", requests_per_minute=pace
        )
