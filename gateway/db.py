"""Database work from the async gateway paths.

The lean gateway handler (portal/asgi.py) sends no request_started/request_finished signals, so nothing
closes database connections behind it. Every sync function the gateway runs through sync_to_async is
wrapped here instead: stale or broken connections are dropped before the work, and with CONN_MAX_AGE=0
the connection is closed after it (with DB_CONN_MAX_AGE > 0 it is kept and health-checked).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")


def managed(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        tidy()
        try:
            return fn(*args, **kwargs)
        finally:
            tidy()

    return wrapper


def tidy() -> None:
    """Django's close_old_connections, except inside a transaction (a caller's atomic block, or a test's)."""
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()
