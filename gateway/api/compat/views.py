"""POST /v1/messages (Anthropic), POST /v1/responses (OpenAI Responses): the chat path, translated at both ends.

Each endpoint is a Job for gateway.api.pipeline (which authenticates, routes, admits, calls the upstream, relays
and records, as for chat completions); what is its own is parsing its request into a chat request, and writing
the answer, or the stream through the one relay, in its own shape.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from accounts.principal import Principal
from gateway.api.calls import Call
from gateway.api.compat import anthropic, anthropic_stream, responses, responses_stream
from gateway.api.pipeline import Job, gateway_view, json_response, model_view, route
from gateway.api.validation import json_body
from gateway.api.views import CHAT_MODES
from gateway.upstreams import default_upstream, media

# --- Anthropic Messages ------------------------------------------------------------------------------------


async def _message(body: dict[str, Any], call: Call) -> Job:
    parsed = anthropic.parse_request(body)
    message_id = f"msg_{call.request_id}"

    async def answer(result: dict[str, Any]) -> tuple[HttpResponseBase, Any]:
        message = anthropic.message(result, parsed, message_id)
        return json_response(message), message

    return Job(
        parsed.model, parsed.chat, default_upstream(), "messages", CHAT_MODES, answer,
        stream=anthropic_stream.MessageStream(parsed, message_id) if parsed.stream else None,
        narrow=lambda routes: media.routes_for_images(routes, parsed.images, parsed.model),
    )


def anthropic_view(*methods: str) -> Any:
    """gateway_view with Anthropic's envelope, and the request id where Anthropic's SDK looks for it."""
    return gateway_view(*methods, render=anthropic.error_response, id_header="request-id")


messages = model_view("messages", _message, render=anthropic.error_response, id_header="request-id")


@anthropic_view("POST")
async def count_tokens(request: HttpRequest, principal: Principal) -> HttpResponse:
    """An estimate of the prompt's size with the model's tokenizer; no upstream call, no quota spent."""
    parsed = anthropic.parse_request(json_body(request), counting=True)
    _, routes = await route(principal, parsed.model)
    # Tokenizing a long conversation takes milliseconds of CPU: off the event loop, not on the one sync thread.
    count = await sync_to_async(anthropic.count_tokens, thread_sensitive=False)(routes[0].litellm_model, parsed.chat)
    return json_response({"input_tokens": count})


# --- OpenAI Responses --------------------------------------------------------------------------------------


async def _response(body: dict[str, Any], call: Call) -> Job:
    assert call.principal is not None
    parsed = responses.parse_request(body)
    owner = responses.owner_of(call.principal)
    history: list[dict[str, Any]] = []
    if parsed.previous_response_id:
        entry = await responses.recall(parsed.previous_response_id, owner, param="previous_response_id")
        history = entry["messages"]
    response_id = f"resp_{call.request_id}"

    async def answer(result: dict[str, Any]) -> tuple[HttpResponseBase, Any]:
        response, said = responses.complete(parsed, result, response_id)
        if parsed.store:
            await responses.remember(response, owner, [*history, *parsed.input, responses.assistant_message(said)])
        return json_response(response), response

    return Job(
        parsed.model, parsed.chat(history), default_upstream(), "responses", CHAT_MODES, answer,
        stream=responses_stream.ResponseStream(parsed, response_id, owner, history) if parsed.stream else None,
        narrow=lambda routes: media.routes_for_images(routes, parsed.images, parsed.model),
    )


create_response = model_view("responses", _response)


@gateway_view("GET", "DELETE")
async def response_detail(request: HttpRequest, principal: Principal, response_id: str) -> HttpResponse:
    """A stored response (GET), or forget it (DELETE); only for the key that created it."""
    owner = responses.owner_of(principal)
    if request.method == "DELETE":
        await responses.forget(response_id, owner)
        return json_response({"id": response_id, "object": "response", "deleted": True})
    entry = await responses.recall(response_id, owner)
    return json_response(entry["response"])
