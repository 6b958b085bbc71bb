"""The brakes on guessing count in a sliding window: no span of the window ever lets more than the limit through.

A fixed window let 40 wrong keys of a limit of 20 through within 3 s, 20 at the end of one window and 20 at
the start of the next. The fake clock (gateway.clock) moves the portal through window boundaries.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from django.test import Client

from gateway import clock

GUESSER = "203.0.113.9"
LIMIT, WINDOW = 20, 60.0


@pytest.fixture
def limit(settings: Any) -> None:
    settings.AUTH_FAILURE_LIMIT = LIMIT
    settings.AUTH_FAILURE_WINDOW = WINDOW


def wrong_key(portal: Any, n: int) -> int:
    headers = {"X-Forwarded-For": GUESSER, "Authorization": f"Bearer sk-abcdefgh.{'y' * 30}{n:05d}"}
    return httpx.get(f"{portal.url}/v1/models", headers=headers, timeout=30).status_code


def to_just_before_a_boundary(seconds_before: float) -> None:
    clock.advance(WINDOW - clock.now() % WINDOW - seconds_before)


def test_a_burst_on_each_side_of_a_window_boundary_gets_the_limit_and_no_more(portal, limit):
    to_just_before_a_boundary(1.5)
    before = [wrong_key(portal, n) for n in range(LIMIT)]
    clock.advance(3)  # now just after the boundary: a fixed window would start counting again
    after = [wrong_key(portal, n) for n in range(LIMIT)]
    assert before == [401] * LIMIT
    assert after == [429] * LIMIT


def test_no_span_of_the_window_lets_more_than_the_limit_through(portal, limit):
    # A steady guesser, one wrong key every 1.3 s of (fake) time for three and a half windows.
    to_just_before_a_boundary(7)
    answered: list[tuple[float, int]] = []
    for n in range(int(3.5 * WINDOW / 1.3)):
        answered.append((clock.now(), wrong_key(portal, n)))
        clock.advance(1.3)
    plain = [at for at, status in answered if status == 401]
    assert {status for _, status in answered} == {401, 429}
    busiest = max(sum(1 for t in plain if start <= t < start + WINDOW) for start in plain)
    # Exactly the limit: a failure is held for up to one slice (6 s) more than the window, never less.
    assert busiest == LIMIT
    # And the guesser is not shut out for good: over 3.5 windows it got about the limit per window and a slice.
    assert len(plain) > 2 * LIMIT


def test_failed_logins_are_counted_across_a_window_boundary(settings, personas):
    settings.LOGIN_RATE = "3/m"
    to_just_before_a_boundary(0.5)

    def attempt() -> int:
        return Client().post("/keys/login/", {"username": "alice", "password": "wrong"},
                             REMOTE_ADDR="10.1.2.3").status_code

    assert [attempt() for _ in range(3)] == [200] * 3
    clock.advance(1)
    assert attempt() == 429
