"""gunicorn settings for the portal (ASGI via uvicorn workers), driven by env vars."""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '4000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = "uvicorn_worker.UvicornWorker"
# Import Django (and LiteLLM) once in the master; workers fork with it loaded.
preload_app = True
# Streams can be long; the worker heartbeat is separate from request time under uvicorn.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "30"))
keepalive = 75
accesslog = "-" if os.environ.get("ACCESS_LOG", "false").lower() in ("1", "true", "yes") else None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
