"""The gateway: the OpenAI-compatible /v1 API and everything behind it.

    api/        the /v1 endpoints: one request pipeline (pipeline.py), one SSE relay (relay.py), the views,
                the Anthropic and Responses translations (compat/), validation, and a call's record (calls.py)
    catalog/    the in-memory snapshot of enabled deployments, the built-in catalog, LiteLLM config import/export
    router.py   which deployment takes a request: admission in order, fallback, retries, timeouts, parking
    quota/      limits and windows, admission, the Redis store (Lua scripts in .lua files) and its leases, the
                in-process store, the durable daily ledger, reporting
    upstreams/  the Upstream interface, the pooled HTTP client (proxies), passthrough and LiteLLM paths,
                provider kinds, media, Copilot (login, token, headers)

A request reads forward through them, each step once:

    portal/asgi.py (body cap, request id) → api.pipeline (method, accounts.auth.authenticate)
    → api.validation → catalog.get() → router.plan → router.complete / open_stream
      (quota.try_admit per deployment, then the upstreams call; fallback on failure)
    → api.relay for streams → api.calls.finish (quota.settle, tracking.recorder.record)

The app depends on accounts and tracking, never the other way round (see `lint-imports`).
"""
