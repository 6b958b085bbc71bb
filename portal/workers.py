"""The gunicorn worker class: uvicorn's, with its graceful shutdown ending before gunicorn's.

On SIGTERM uvicorn stops accepting, lets requests in flight finish, then runs the ASGI lifespan shutdown
(which writes buffered usage records and daily quota counts). Left alone it waits for the last stream however
long it runs, and gunicorn SIGKILLs the worker at `graceful_timeout`: streams cut without a word, and the
buffer lost. Here uvicorn stops waiting a few seconds earlier; the requests still running are cancelled (a
stream gets a last error event, see portal/asgi.py) and the shutdown has time to write everything.
"""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker as BaseUvicornWorker

# Kept for the lifespan shutdown after uvicorn stops waiting for requests: end the cut streams, then flush.
SHUTDOWN_RESERVE_SECONDS = 5.0


def request_budget(graceful_timeout: float) -> float:
    """Seconds requests in flight get to finish after SIGTERM: gunicorn's graceful timeout less the reserve,
    and at least half of it (a short graceful timeout still lets short streams finish)."""
    return max(graceful_timeout - SHUTDOWN_RESERVE_SECONDS, graceful_timeout / 2)


class UvicornWorker(BaseUvicornWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = request_budget(float(self.cfg.graceful_timeout))
