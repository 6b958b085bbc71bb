"""Give memory back to the system after a burst of load.

A burst leaves the worker's C heap full of freed blocks (request objects, JSON buffers, the usage records'
batches) that glibc keeps for reuse; without a trim a worker's RSS stays at its peak for the rest of its life,
which is what a box sized for the idle figure runs out of. Two bounds:

- glibc makes up to 8 heaps ("arenas") per core, one more each time threads contend (the database and
  recorder threads, the sync_to_async pool). Two arenas are plenty for one event loop and a few helper threads,
  and fewer arenas hold fewer free blocks.
- A worker trims its heaps (`malloc_trim`) every TRIM_SECONDS, in a thread, returning freed pages at the top
  and inside each heap.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger(__name__)

TRIM_SECONDS = 30.0
M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018  (only glibc has it: musl and others have nothing to trim)
    except (OSError, AttributeError):
        return None
    return libc


libc = _libc()


def limit_arenas(arenas: int = 2) -> None:
    """Cap glibc's heaps; called in gunicorn's master before any worker thread exists (the workers inherit it)."""
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, arenas)


def trim() -> int:
    """Return freed heap pages to the system; 1 when some were."""
    return int(libc.malloc_trim(0)) if libc is not None else 0


async def trim_periodically(interval: float = TRIM_SECONDS) -> None:
    """The worker's trimmer: runs until cancelled (at shutdown)."""
    if libc is None:
        return
    while True:
        await asyncio.sleep(interval)
        # ctypes releases the GIL for the call, and the loop goes on serving meanwhile.
        await asyncio.to_thread(trim)
