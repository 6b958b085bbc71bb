"""The admin's playground: chat with any enabled model over the real /v1 path, with the operator's rights.

The browser never sees the master key. The page posts (staff session + CSRF token) to `relay`, which calls the
portal's own `POST /v1/chat/completions` over loopback HTTP with the master key — so the call is admitted,
routed, quota-counted, recorded and priced exactly like an app's — and relays the answer as server-sent
events, chunk by chunk, framed by two events of its own:

- `event: meta`: the /v1 response's status, `x-request-id` and `x-ratelimit-*` headers;
- the /v1 stream's own `data:` chunks, as they arrive;
- `event: summary`: time to first token and in total (as the relay saw them), the token usage, and from
  the call's usage record (written by the portal's recorder within a second) the deployment that served it
  and its cost.

A browser that leaves cancels the relay, which closes the loopback request, which cancels the upstream call.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest
from django.urls import reverse

from gateway import db

log = logging.getLogger(__name__)

MAX_TOKENS_CAP = 32_768
MAX_MESSAGES = 100
# How long the summary waits for the call's usage record (the recorder writes every USAGE_FLUSH_SECONDS).
RECORD_WAIT_SECONDS = 5.0
RECORD_POLL_SECONDS = 0.2


class PlaygroundError(ValueError):
    """A request the page should not have sent (shown to the operator as is)."""


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    temperature: float | None
    max_tokens: int | None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": self.messages, "stream": True,
                                "stream_options": {"include_usage": True}}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body


def model_choices() -> list[dict[str, Any]]:
    """Every public name with an enabled deployment of an enabled provider, and how many serve it (a name
    with several is a group: routing picks among them)."""
    from gateway.models import Deployment

    counts: dict[str, int] = {}
    rows = Deployment.objects.filter(enabled=True, provider__enabled=True).values_list("public_name", flat=True)
    for name in rows:
        counts[name] = counts.get(name, 0) + 1
    return [{"name": name, "deployments": n} for name, n in sorted(counts.items())]


def parse(raw: bytes, allowed: set[str]) -> ChatRequest:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise PlaygroundError("The request is not JSON.") from None
    if not isinstance(data, dict):
        raise PlaygroundError("The request is not a JSON object.")
    model = data.get("model")
    if model not in allowed:
        raise PlaygroundError("Choose an enabled model.")
    messages = []
    system = data.get("system")
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    history = data.get("messages")
    if not isinstance(history, list) or not history or len(history) > MAX_MESSAGES:
        raise PlaygroundError("Write a message.")
    for message in history:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise PlaygroundError("Messages are {role: user|assistant, content: text}.")
        messages.append({"role": message["role"], "content": message["content"]})
    return ChatRequest(model, messages, _number(data.get("temperature"), 0, 2, float, "Temperature"),
                       _number(data.get("max_tokens"), 1, MAX_TOKENS_CAP, int, "Max tokens"))


def _number(value: Any, low: float, high: float, kind: type, label: str) -> Any:
    if value in (None, ""):
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise PlaygroundError(f"{label} must be a number.") from None
    if not low <= number <= high:
        raise PlaygroundError(f"{label} must be between {low} and {high}.")
    return number


def api_base(request: HttpRequest) -> str:
    """The portal's own address: PLAYGROUND_API_BASE, else the socket this request came in on (the ASGI
    server's; a wildcard bind is reached on loopback)."""
    if settings.PLAYGROUND_API_BASE:
        return str(settings.PLAYGROUND_API_BASE)
    host, port = request.META.get("SERVER_NAME", ""), request.META.get("SERVER_PORT", "")
    if host in ("", "unknown", "0.0.0.0", "::"):  # noqa: S104  (a wildcard bind, reached on loopback)
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port or settings.PORT}"


def event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def relay(chat: ChatRequest, base: str, operator: str) -> AsyncIterator[bytes]:
    """The /v1 call's stream, framed by `meta` and `summary` events (see the module's docstring)."""
    headers = {
        "Authorization": f"Bearer {settings.MASTER_KEY}",
        # Tags on the usage record: these calls are the playground's, and whose.
        "x-portal-tags": json.dumps({"source": "playground", "operator": operator}),  # ASCII-safe for a header
    }
    started = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] | None = None
    request_id = ""
    timeout = httpx.Timeout(settings.UPSTREAM_TIMEOUT + 10, connect=10)
    try:
        async with httpx.AsyncClient(timeout=timeout) as client, \
                client.stream("POST", f"{base}/v1/chat/completions", json=chat.body(), headers=headers) as response:
            request_id = response.headers.get("x-request-id", "")
            yield event("meta", {
                "status": response.status_code,
                "request_id": request_id,
                "ratelimit": {k: v for k, v in response.headers.items() if k.lower().startswith("x-ratelimit-")},
                "retry_after": response.headers.get("retry-after"),
            })
            if response.status_code != 200:
                body = await response.aread()
                yield event("failure", _error_of(body, response.status_code))
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload != "[DONE]":
                        if first is None and _has_content(payload):
                            first = time.perf_counter()
                        usage = _usage_of(payload) or usage
                    yield f"data: {payload}\n\n".encode()
    except httpx.HTTPError as e:
        # The portal's own /v1 out of reach (a wrong PLAYGROUND_API_BASE) or gone mid-stream: say so on the page.
        log.warning("playground: calling %s/v1 failed: %s", base, type(e).__name__)
        message = f"The playground could not call {base}/v1 ({type(e).__name__}); see PLAYGROUND_API_BASE."
        yield event("failure", {"status": 502, "message": message, "code": "playground_unreachable"})
    total = time.perf_counter() - started
    summary = {
        "ttft_ms": round((first - started) * 1000, 1) if first is not None else None,
        "total_ms": round(total * 1000, 1),
        "usage": usage,
        # Not thread-sensitive: the wait must not hold the thread the admin's sync views run on.
        "record": await sync_to_async(db.managed(wait_for_record), thread_sensitive=False)(request_id)
        if request_id else None,
    }
    yield event("summary", summary)


def _has_content(payload: str) -> bool:
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    for choice in chunk.get("choices") or () if isinstance(chunk, dict) else ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and (delta.get("content") or delta.get("reasoning_content")):
            return True
    return False


def _usage_of(payload: str) -> dict[str, Any] | None:
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    usage = chunk.get("usage") if isinstance(chunk, dict) else None
    return usage if isinstance(usage, dict) else None


def _error_of(body: bytes, status: int) -> dict[str, Any]:
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    if not isinstance(error, dict):
        error = {"message": f"HTTP {status}", "code": None}
    return {"status": status, "message": error.get("message"), "code": error.get("code")}


def wait_for_record(request_id: str) -> dict[str, Any] | None:
    """The call's usage record as the summary shows it; None when it is not written in time."""
    from gateway.models import Deployment
    from tracking.models import UsageRecord

    deadline = time.monotonic() + RECORD_WAIT_SECONDS
    while True:
        record = UsageRecord.objects.filter(request_id=request_id).first()
        if record is not None:
            break
        if time.monotonic() > deadline:
            return None
        time.sleep(RECORD_POLL_SECONDS)
    deployment = Deployment.objects.filter(pk=record.deployment_id).first() if record.deployment_id else None
    return {
        "deployment": str(deployment) if deployment else "",
        "deployment_url": reverse("admin:gateway_deployment_change", args=[deployment.pk]) if deployment else "",
        "provider": record.provider,
        "upstream_model": record.upstream_model,
        "status": record.status,
        "attempts": record.attempts,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cost_usd": None if record.cost_usd is None else str(record.cost_usd),
        "list_cost_usd": None if record.list_cost_usd is None else str(record.list_cost_usd),
        "record_url": reverse("admin:tracking_usagerecord_change", args=[record.pk]),
    }
