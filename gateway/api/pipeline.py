"""The one request pipeline every /v1 view goes through.

`gateway_view` is what every view shares: the method check, the request id, authentication (the one place the
gateway calls it), and the guarantee that every failure is an error envelope and every call is recorded. A view
that calls a model hands the rest to `serve`, which reads forward, each step once:

    auth → validate → route → admit → call upstream → relay → record

An endpoint says only what is its own, as a `Job`: how its body parses, which deployments may serve it, what the
upstream is sent, and how the answer (or the stream, through `relay`'s translation) is written back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from accounts.auth import authenticate
from accounts.principal import AuthRefused, Principal
from gateway import catalog, health, router
from gateway.api.calls import Call, cancelled, finish, finish_unfinished
from gateway.api.relay import Translation, relay, sse_response
from gateway.api.validation import json_body
from gateway.catalog import Route
from gateway.errors import GatewayError, not_found, refused
from gateway.upstreams import Upstream, media
from tracking import tags as usage_tags

log = logging.getLogger(__name__)

View = Callable[..., Awaitable[HttpResponseBase]]
Render = Callable[[GatewayError, str], HttpResponseBase]


def json_response(data: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json")


def openai_error(error: GatewayError, request_id: str) -> HttpResponseBase:
    return error.response()


def gateway_view(
    *methods: str, record: str = "", public: bool = False, render: Render = openai_error, id_header: str = ""
) -> Callable[[View], Any]:
    """Method check, request id, authentication, and the guarantee that every failure is an error envelope
    (OpenAI's, or the one `render` makes) and every call the view began is recorded, however it ended.

    The view is called as `view(request, principal, ...)`; `public` views (health, unknown URLs) get None.
    With `record` (the usage record's endpoint), the call is begun before authentication, so a refused key is
    recorded too. Django's stubs type views as sync; async views are awaited by Django all the same.
    """
    allowed = ", ".join(methods)

    def decorator(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            # From `random` (reseeded in each forked worker), not uuid4's os.urandom: an id names a request, it
            # guards nothing, and a system call per request is not free.
            request_id = f"{random.getrandbits(128):032x}"
            request.request_id = request_id  # type: ignore[attr-defined]
            try:
                if request.method not in methods:
                    raise GatewayError(405, f"Method {request.method} is not allowed here; use {allowed}.",
                                       code="method_not_allowed", headers={"Allow": allowed})
                call = Call.begin(request, record) if record else None
                principal = None if public else await authenticate(request)
                if call is not None:
                    call.principal = principal
                    call.tags = usage_tags.from_headers(request.META)
                response = await view(request, principal, *args, **kwargs)
            except (GatewayError, AuthRefused) as e:
                error = e if isinstance(e, GatewayError) else refused(e)
                response = render(error, request_id)
                # Records the call its view refused or failed (its code as is, None included).
                finish_unfinished(request, error.status, error.code, error.message)
            except health.UNREACHABLE_ERRORS as e:
                log.error("%s on %s: a backing service is unreachable", type(e).__name__, request.path)
                error = health.unreachable(e)
                response = render(error, request_id)
                finish_unfinished(request, error.status, error.code or "unavailable", error.message)
            except asyncio.CancelledError:
                cancelled(request)
                raise
            except Exception:
                log.error("unhandled error on %s", request.path, exc_info=True)
                error = GatewayError(500, "Internal error in the portal.", code="internal_error")
                response = render(error, request_id)
                finish_unfinished(request, error.status, error.code, error.message)
            response["x-request-id"] = request_id
            if id_header:
                response[id_header] = request_id
            return response

        return wrapper

    return decorator


Answer = Callable[[dict[str, Any]], Awaitable[tuple[HttpResponseBase, Any]]]


@dataclass(slots=True)
class Job:
    """One model call as its endpoint understood it: what `serve` needs to know that differs per endpoint."""

    model: str
    body: dict[str, Any]  # what the upstream is sent (the chat shape for the translated APIs)
    upstream: Upstream
    # What the endpoint is called in an error, and the model_info.mode values it serves ("" = undeclared).
    label: str
    modes: tuple[str, ...]
    # The answer written back, and what of it the usage record keeps.
    answer: Answer
    stream: Translation | None = None
    # The deployments able to take this particular request (e.g. only those that see images).
    narrow: Callable[[tuple[Route, ...]], tuple[Route, ...]] | None = None


Parse = Callable[[dict[str, Any], Call], Awaitable[Job]]


def model_view(endpoint: str, parse: Parse, *, render: Render = openai_error, id_header: str = "") -> Any:
    """A POST endpoint that calls a model: `parse` turns its body into a Job, `serve` does the rest."""

    @gateway_view("POST", record=endpoint, render=render, id_header=id_header)
    async def view(request: HttpRequest, principal: Principal) -> HttpResponseBase:
        return await serve(request.call, json_body(request), parse)  # type: ignore[attr-defined]

    return view


async def serve(call: Call, body: dict[str, Any], parse: Parse) -> HttpResponseBase:
    """Validate, route, admit, call the upstream, relay, record: the path of every model call."""
    assert call.principal is not None
    call.take_body(body)
    job = await parse(body, call)
    call.model, call.streamed = job.model, job.stream is not None
    snapshot, routes = await route(call.principal, job.model)
    media.refuse_other_modes(routes, job.model, job.label, job.modes)
    if job.narrow is not None:
        routes = job.narrow(routes)
    plan = router.plan(snapshot, job.model, routes, call.principal)
    response: HttpResponseBase
    if job.stream is not None:
        # The router admits a deployment and opens its stream; from here the relay owns the call and records it.
        first, chunks = await router.open_stream(job.upstream, plan, job.body, call)
        response = sse_response(relay(call, job.stream, first, chunks))
        response.translation = job.stream  # type: ignore[attr-defined]  # for a shutdown's last event (asgi.py)
    else:
        result = await router.complete(job.upstream, plan, job.body, call)
        call.status = 200
        call.take_usage(result.get("usage"))
        response, call.response_body = await job.answer(result)
        finish(call)
    # x-ratelimit-* of the call's admission, encoded; portal/asgi.py adds them as they are (our own names and
    # numbers, which need none of Django's per-header checks).
    response.rate_headers = call.rate_headers()  # type: ignore[attr-defined]
    return response


async def find(model: str) -> tuple[catalog.Snapshot, tuple[Route, ...]]:
    """The catalog and the model's deployments, or the 404.

    A model that is not there may have been created a moment ago: before the 404, the catalog's version is
    checked again (by a check begun after this request looked), so a new model answers from its first request.
    """
    since = time.monotonic()
    snapshot = await catalog.get()
    if not (routes := snapshot.routes(model)):
        snapshot = await catalog.recheck(since)
        if not (routes := snapshot.routes(model)):
            raise not_found(f"The model '{model}' does not exist or is not enabled.", code="model_not_found",
                            param="model")
    return snapshot, routes


async def route(principal: Principal, model: str) -> tuple[catalog.Snapshot, tuple[Route, ...]]:
    """`find`, for a caller who must be allowed the model (403 otherwise)."""
    snapshot, routes = await find(model)
    if not principal.may_use(model):
        raise GatewayError(403, f"This API key may not use the model '{model}'.", code="model_not_allowed",
                           param="model")
    return snapshot, routes
