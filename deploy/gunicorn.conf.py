"""gunicorn settings for the portal (ASGI via uvicorn workers), driven by env vars."""

import gc
import os
import sys
from pathlib import Path

# The operator's .env (or PORTAL_ENV_FILE) before PORT, HOST and WEB_CONCURRENCY are read below: gunicorn reads
# this file before it loads Django, whose settings read the .env for everything else.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from portal import envfile
from portal.memory import limit_arenas

envfile.load()

# Before the master starts any thread; the workers inherit it (portal/memory.py says why).
limit_arenas()

# All interfaces by default: in a container, Nginx reaches the portal over the compose network.
bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '4000')}"  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# uvicorn's worker, ending its graceful shutdown a few seconds before gunicorn's (portal/workers.py).
worker_class = "portal.workers.UvicornWorker"
# Import Django and the app once in the master; workers fork with it loaded. (LiteLLM is imported later,
# in the background, only by workers whose catalog needs it: see gateway.upstreams.ensure_litellm.)
preload_app = True
# Streams can be long; the worker heartbeat is separate from request time under uvicorn.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
# After SIGTERM: requests in flight get graceful_timeout - 5 s to finish (streams still running then end with an
# error event), the last seconds write buffered usage records and daily counts; then gunicorn SIGKILLs.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "30"))
keepalive = 75
# The real client address behind Nginx: uvicorn (proxy_headers is on) replaces the peer address with
# X-Forwarded-For, and so REMOTE_ADDR, only when the peer is one of these addresses, i.e. Nginx.
# Comma-separated IPs or networks; "*" would let any client forge its address.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# No runtime control socket ($HOME/.gunicorn/gunicorn.ctl, gunicorn >= 25.1): two portals on one host
# would fight over the path, and a container user's home may be read-only.
control_socket_disable = True
accesslog = "-" if os.environ.get("ACCESS_LOG", "false").lower() in ("1", "true", "yes") else None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


def pre_fork(server: object, worker: object) -> None:
    # Objects loaded by the master (Django, the app) move to a permanent generation, so the workers' garbage
    # collector never touches them and their memory pages stay shared with the master instead of copied.
    gc.freeze()
    # The default thresholds (700, 10, 10) ran ~1,600 young, ~140 middle and a dozen full collections per
    # 10,000 requests in the benchmark, about 90 us of CPU per request: most objects a request allocates die
    # by reference counting anyway. These cut it to ~60 us (measured with gc.callbacks under `make bench`).
    gc.set_threshold(10_000, 50, 100)


def child_exit(server: object, worker: object) -> None:
    # The worker's place on the connection board (portal/workers.py) goes back to the master's pool.
    from portal.workers import board

    board.release(getattr(worker, "slot", -1))
