"""Django's Redis cache backend with one client, and so one connection pool, per process.

Django hands every asyncio task its own cache object (`caches[...]` is context-local), and each object builds
its own RedisCacheClient with its own connection pool. Under ASGI that is a new Redis connection for nearly
every request that touches the cache, closed only when the garbage collector reaches it: the soak
(bench/soak.py) saw a web tier's Redis clients swing between 150 and 300 at 200 requests a second. Sharing
the client keeps a handful of pooled connections per worker.
"""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient
from django.utils.functional import cached_property


class RedisCache(DjangoRedisCache):
    # Set by Django's __init__ (not in its type stubs).
    _servers: list[str]
    _options: dict[str, Any]
    _class: type[RedisCacheClient]

    _clients: ClassVar[dict[tuple[Any, ...], RedisCacheClient]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @cached_property
    def _cache(self) -> RedisCacheClient:
        # Per process: a forked worker must not share its parent's sockets (redis-py resets them too).
        key = (os.getpid(), tuple(self._servers), repr(sorted(self._options.items())))
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = self._class(self._servers, **self._options)
        return client
