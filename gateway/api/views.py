"""The OpenAI-compatible /v1 endpoints and the health checks: thin async views over gateway.api.pipeline."""

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from accounts.principal import Principal
from gateway import catalog, db, health, quota, redact
from gateway.api.calls import Call
from gateway.api.pipeline import Job, find, gateway_view, json_response, model_view
from gateway.api.relay import OpenAIChunks
from gateway.api.validation import parse_chat, parse_embeddings, parse_speech
from gateway.catalog import Route
from gateway.errors import not_found
from gateway.upstreams import default_upstream, media

# model_info.mode values a chat completion may go to ("" = not declared).
CHAT_MODES = ("chat", "completion", "responses")


async def _answer_json(result: dict[str, Any]) -> tuple[HttpResponseBase, Any]:
    return json_response(result), result


async def _chat(body: dict[str, Any], call: Call) -> Job:
    chat = parse_chat(body)
    return Job(
        chat.model, body, default_upstream(), "chat completions", CHAT_MODES, _answer_json,
        stream=OpenAIChunks(chat.include_usage) if chat.stream else None,
        narrow=lambda routes: media.routes_for_images(routes, chat.images, chat.model),
    )


async def _speech(body: dict[str, Any], call: Call) -> Job:
    """OpenAI's text-to-speech: the audio bytes, with their content type."""
    speech = parse_speech(body)

    async def answer(result: dict[str, Any]) -> tuple[HttpResponseBase, Any]:
        response = HttpResponse(result["audio"], content_type=result["content_type"])
        return response, {"content_type": result["content_type"], "bytes": len(result["audio"])}

    return Job(
        speech.model, {**body, "response_format": speech.response_format},
        media.Operation(default_upstream().speech), "text-to-speech", ("audio_speech",), answer,
        narrow=lambda routes: media.speech_routes(routes, speech.model, speech.response_format),
    )


async def _answer_embeddings(result: dict[str, Any]) -> tuple[HttpResponseBase, Any]:
    return json_response(result), None  # the vectors are not worth keeping in the usage record


async def _embeddings(body: dict[str, Any], call: Call) -> Job:
    model = parse_embeddings(body).model
    return Job(model, body, media.Operation(default_upstream().embeddings), "embeddings", ("embedding",),
               _answer_embeddings)


chat_completions = model_view("chat.completions", _chat)
audio_speech = model_view("audio.speech", _speech)
embeddings = model_view("embeddings", _embeddings)


@gateway_view("GET")
async def list_models(request: HttpRequest, principal: Principal) -> HttpResponse:
    snapshot = await catalog.get()
    data = [
        _model_object(name, snapshot.routes(name), snapshot.created)
        for name in snapshot.names()
        if principal.may_use(name)
    ]
    return json_response({"object": "list", "data": data})


@gateway_view("GET")
async def retrieve_model(request: HttpRequest, principal: Principal, model: str) -> HttpResponse:
    snapshot, routes = await find(model)
    if not principal.may_use(model):
        raise not_found(f"The model '{model}' does not exist or is not enabled.", code="model_not_found",
                        param="model")
    return json_response(_model_object(model, routes, snapshot.created))


def _model_object(name: str, routes: tuple[Route, ...], created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": routes[0].provider_name}


@gateway_view("GET")
async def quota_status(request: HttpRequest, principal: Principal) -> HttpResponse:
    """The caller's remaining quota per model: its key's own limits and the providers' behind each model."""
    snapshot = await catalog.get()
    names = [name for name in snapshot.names() if principal.may_use(name)]
    if model := request.GET.get("model"):
        names = [name for name in names if name == model]
    data = await sync_to_async(_quota_report)(principal, snapshot, names)
    return json_response({"object": "list", "data": data})


def _quota_report(principal: Principal, snapshot: catalog.Snapshot, names: list[str]) -> list[dict[str, Any]]:
    out = []
    for name in names:
        deployments = [
            {"deployment": route.id, "provider": route.provider_name, "limits": quota.usage_of(list(route.limits))}
            for route in snapshot.routes(name)
        ]
        key = quota.usage_of(quota.key_limits(principal, name))
        out.append({"model": name, "key_limits": key, "deployments": deployments})
    return out


@gateway_view("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", public=True)
async def v1_not_found(request: HttpRequest, principal: None, rest: str = "") -> HttpResponse:
    raise not_found(f"Unknown endpoint: {request.method} {request.path}.", code="unknown_url")


# --- health ---


@gateway_view("GET", "HEAD", public=True)
async def liveliness(request: HttpRequest, principal: None) -> HttpResponse:
    return json_response({"status": "alive"})


def _check_db() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as e:
        connection.close()
        return f"error: {redact.redact(type(e).__name__)}"


async def _check_cache() -> str:
    try:
        await cache.aset("health:probe", 1, timeout=10)
        return "ok" if await cache.aget("health:probe") == 1 else "error: read back failed"
    except Exception as e:
        return f"error: {type(e).__name__}"


@gateway_view("GET", "HEAD", public=True)
async def readiness(request: HttpRequest, principal: None) -> HttpResponse:
    # Concurrently: a dead service must not make the probe wait for each check in turn.
    db_state, cache_state, broker_state = await asyncio.gather(
        sync_to_async(db.managed(_check_db))(), _check_cache(), health.check_broker()
    )
    ready = db_state == cache_state == broker_state == "ok"
    return json_response(
        {
            "status": "ready" if ready else "unavailable",
            "db": db_state,
            "cache": cache_state,
            "cache_backend": "redis" if settings.REDIS_URL else "in-process",
            "broker": broker_state,
        },
        status=200 if ready else 503,
    )
