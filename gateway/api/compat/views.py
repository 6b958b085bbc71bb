"""POST /v1/messages (Anthropic), POST /v1/responses (OpenAI Responses): thin async views over the chat path.

Each view follows gateway.api.views.chat_completions step for step (authenticate, validate, route, the router's
quota admission and fallback, usage recording through finish()), with a translation at both ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from gateway import router
from gateway.api.calls import Call, finish
from gateway.api.compat import anthropic, responses
from gateway.api.validation import json_body
from gateway.api.views import (
    CHAT_MODES,
    _with_keepalive,
    gateway_view,
    json_response,
    routes_for,
    sse_response,
    with_rate_headers,
)
from gateway.auth import authenticate
from gateway.errors import GatewayError
from gateway.upstreams import UpstreamError, default_upstream, media

log = logging.getLogger(__name__)


def _internal_error() -> GatewayError:
    return GatewayError(500, "Internal error in the portal.", code="internal_error")


class Renderer(Protocol):
    """Turns the upstream's chat chunks into one API's stream events."""

    def start(self) -> bytes: ...

    def feed(self, chunk: dict[str, Any]) -> bytes: ...

    def keepalive(self) -> bytes: ...

    async def end(self) -> bytes: ...

    def error(self, error: GatewayError) -> bytes: ...


async def translated_events(
    call: Call, renderer: Renderer, first: dict[str, Any] | None, chunks: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[bytes]:
    """gateway.api.views.sse_events with a translation: the stream's generator owns the call and finishes it."""
    call.status = 200
    try:
        yield renderer.start()
        if first is not None:
            call.mark_first_token()
            call.take_chunk(first)
            if out := renderer.feed(first):
                yield out
        # Closed before `chunks` (finally, below) however this generator ends: its read must be stopped first.
        async with contextlib.aclosing(_with_keepalive(chunks)) as relayed:
            async for chunk in relayed:
                if chunk is None:
                    yield renderer.keepalive()
                    continue
                call.take_chunk(chunk)
                if out := renderer.feed(chunk):
                    yield out
        yield await renderer.end()
    except UpstreamError as e:
        # Headers (200) are already sent: the error travels in-band, never as a silent success.
        call.error_code, call.error_message = e.code, e.message
        yield renderer.error(e)
    except (asyncio.CancelledError, GeneratorExit):
        call.client_disconnected = True
        call.error_code = "client_disconnected"
        raise
    except Exception:
        log.error("translating the stream of %s failed", call.request_id, exc_info=True)
        error = _internal_error()
        call.error_code, call.error_message = error.code, error.message
        yield renderer.error(error)
    finally:
        try:
            await chunks.aclose()  # type: ignore[attr-defined]
        finally:
            finish(call)


# --- Anthropic Messages ------------------------------------------------------------------------------------


def anthropic_view(*methods: str) -> Any:
    """gateway_view's guarantees (method check, request id, every failure an envelope and every call recorded)
    with Anthropic's envelope, and the request id where Anthropic's SDK looks for it."""
    return gateway_view(*methods, render=anthropic.error_response, id_header="request-id")


@anthropic_view("POST")
async def messages(request: HttpRequest) -> HttpResponseBase:
    call = Call.begin(request, "messages")  # a failure below is recorded by the view wrapper
    call.principal = await authenticate(request)
    body = json_body(request)
    call.take_body(body)
    parsed = anthropic.parse_request(body)
    call.model, call.streamed = parsed.model, parsed.stream
    routes = await routes_for(call.principal, parsed.model)
    media.refuse_other_modes(routes, parsed.model, "messages", CHAT_MODES)
    routes = media.routes_for_images(routes, parsed.images, parsed.model)
    upstream = default_upstream()
    message_id = f"msg_{call.request_id}"
    if parsed.stream:
        first, chunks = await router.open_stream(upstream, routes, parsed.chat, call)
        # From here the stream's generator owns the call and finishes it.
        stream = anthropic.MessageStream(parsed, message_id)
        response = sse_response(translated_events(call, stream, first, chunks))
        return with_rate_headers(response, call)
    result = await router.complete(upstream, routes, parsed.chat, call)
    call.take_usage(result.get("usage"))
    message = anthropic.message(result, parsed, message_id)
    call.status = 200
    call.response_body = message
    finish(call)
    return with_rate_headers(json_response(message), call)


@anthropic_view("POST")
async def count_tokens(request: HttpRequest) -> HttpResponse:
    """An estimate of the prompt's size with the model's tokenizer; no upstream call, no quota spent."""
    principal = await authenticate(request)
    parsed = anthropic.parse_request(json_body(request), counting=True)
    routes = await routes_for(principal, parsed.model)
    # Tokenizing a long conversation takes milliseconds of CPU: off the event loop, not on the one sync thread.
    count = await sync_to_async(anthropic.count_tokens, thread_sensitive=False)(routes[0].litellm_model, parsed.chat)
    return json_response({"input_tokens": count})


# --- OpenAI Responses --------------------------------------------------------------------------------------


@gateway_view("POST")
async def create_response(request: HttpRequest) -> HttpResponseBase:
    call = Call.begin(request, "responses")  # a failure below is recorded by the view wrapper
    call.principal = await authenticate(request)
    body = json_body(request)
    call.take_body(body)
    parsed = responses.parse_request(body)
    call.model, call.streamed = parsed.model, parsed.stream
    routes = await routes_for(call.principal, parsed.model)
    media.refuse_other_modes(routes, parsed.model, "responses", CHAT_MODES)
    routes = media.routes_for_images(routes, parsed.images, parsed.model)
    owner = responses.owner_of(call.principal)
    history: list[dict[str, Any]] = []
    if parsed.previous_response_id:
        entry = await responses.recall(parsed.previous_response_id, owner, param="previous_response_id")
        history = entry["messages"]
    chat = parsed.chat(history)
    upstream = default_upstream()
    response_id = f"resp_{call.request_id}"
    if parsed.stream:
        first, chunks = await router.open_stream(upstream, routes, chat, call)
        # From here the stream's generator owns the call and finishes it.
        stream = responses.ResponseStream(parsed, response_id, owner, history)
        return with_rate_headers(sse_response(translated_events(call, stream, first, chunks)), call)
    result = await router.complete(upstream, routes, chat, call)
    call.take_usage(result.get("usage"))
    response, answer = responses.complete(parsed, result, response_id)
    if parsed.store:
        await responses.remember(response, owner, [*history, *parsed.input, responses.assistant_message(answer)])
    call.status = 200
    call.response_body = response
    finish(call)
    return with_rate_headers(json_response(response), call)


@gateway_view("GET", "DELETE")
async def response_detail(request: HttpRequest, response_id: str) -> HttpResponse:
    """A stored response (GET), or forget it (DELETE); only for the key that created it."""
    owner = responses.owner_of(await authenticate(request))
    if request.method == "DELETE":
        await responses.forget(response_id, owner)
        return json_response({"id": response_id, "object": "response", "deleted": True})
    entry = await responses.recall(response_id, owner)
    return json_response(entry["response"])
