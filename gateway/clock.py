"""The portal's notion of "now" for quotas, which tests can move instead of sleeping.

In-process tests call `clock.advance()`. A test that runs the portal as a
separate process points PORTAL_FAKE_CLOCK_FILE at a file holding an offset in
seconds (test use only; unset in production, where this is plain time.time()).
"""

from __future__ import annotations

import os
import time

_offset = 0.0
_offset_file = os.environ.get("PORTAL_FAKE_CLOCK_FILE", "")


def now() -> float:
    """Unix time in seconds."""
    return time.time() + _offset + _file_offset()


def _file_offset() -> float:
    if not _offset_file:
        return 0.0
    try:
        with open(_offset_file) as f:
            return float(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0.0


def advance(seconds: float) -> None:
    global _offset
    _offset += seconds


def reset() -> None:
    global _offset
    _offset = 0.0
