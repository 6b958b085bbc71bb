"""What happened during one /v1 call, filled in as it goes and handed off when it ends."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from django.http import HttpRequest

from accounts.principal import Principal
from gateway import quota, redact
from gateway.catalog import Route
from gateway.quota import Admission
from tracking import recorder
from tracking.events import UsageEvent

log = logging.getLogger(__name__)


@dataclass
class Call:
    request_id: str
    endpoint: str
    started_at: float = field(default_factory=time.time)  # wall clock, for records
    started: float = field(default_factory=time.monotonic)  # for durations
    client_ip: str = ""
    principal: Principal | None = None
    model: str = ""
    route: Route | None = None
    attempts: int = 0
    streamed: bool = False
    status: int = 0
    error_code: str | None = None
    error_message: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_at: float | None = None
    ended: float | None = None
    client_disconnected: bool = False
    tags: dict[str, Any] = field(default_factory=dict)
    request_body: dict[str, Any] | None = None
    response_body: Any = None
    finished: bool = False
    # Quota admissions, one per deployment tried; the last one is the deployment that answered.
    admissions: list[Admission] = field(default_factory=list)
    # Content streamed so far: the usage record counts it when the upstream's usage never came (client left).
    stream_text: list[str] = field(default_factory=list)

    @classmethod
    def begin(cls, request: HttpRequest, endpoint: str) -> Call:
        call = cls(
            request_id=request.request_id,  # type: ignore[attr-defined]
            endpoint=endpoint,
            client_ip=client_ip(request),
        )
        # The view wrapper finishes a call its view left unfinished (an unexpected error, a cancellation).
        request.call = call  # type: ignore[attr-defined]
        return call

    def take_usage(self, usage: dict[str, Any] | None) -> None:
        if usage:
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = usage.get("completion_tokens", self.completion_tokens)

    def take_body(self, body: dict[str, Any]) -> None:
        """Keep the request for the usage record: a copy of the top level and of `metadata` (the user's tags),
        which LiteLLM writes its own bookkeeping into."""
        self.request_body = dict(body)
        if isinstance(metadata := body.get("metadata"), dict):
            self.request_body["metadata"] = dict(metadata)

    def take_chunk(self, chunk: dict[str, Any]) -> None:
        """A streamed chunk: its usage, if any, and its text (a list append; counted later, off the loop)."""
        self.take_usage(chunk.get("usage"))
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and isinstance(content := delta.get("content"), str) and content:
                self.stream_text.append(content)

    def mark_first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def rate_headers(self) -> list[tuple[bytes, bytes]]:
        return self.admissions[-1].headers() if self.admissions else []

    def usage_event(self) -> UsageEvent:
        """What tracking records of this call: plain values, none of the gateway's types."""
        principal, route = self.principal, self.route
        return UsageEvent(
            request_id=self.request_id, endpoint=self.endpoint, started_at=self.started_at,
            latency_ms=self.latency_ms, ttft_ms=self.ttft_ms, client_ip=self.client_ip,
            key_id=principal.key_id if principal else None, key_name=principal.key_name if principal else "",
            user_id=principal.user_id if principal else None, username=principal.username if principal else "",
            key_tags=principal.tags if principal else {},
            model=self.model, deployment_id=route.id if route else None,
            provider=route.provider_name if route else "", upstream_model=route.upstream_model if route else "",
            litellm_model=route.litellm_model if route else "",
            status=self.status, error_code=self.error_code, error_message=self.error_message,
            streamed=self.streamed, client_disconnected=self.client_disconnected, attempts=self.attempts,
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, tags=self.tags,
            request_body=self.request_body, response_body=self.response_body, stream_text=self.stream_text,
        )

    @property
    def latency_ms(self) -> float | None:
        return None if self.ended is None else (self.ended - self.started) * 1000

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token_at is None else (self.first_token_at - self.started) * 1000

    @property
    def total_tokens(self) -> int | None:
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


SHUTDOWN_MESSAGE = "Stopped by the portal's shutdown."


def mark_client_left(request: HttpRequest) -> None:
    """The client went away: the cancellation that follows is its doing. Any other cancellation of a request is
    the server's (the end of a restart's graceful time), and its record says so."""
    request.client_left = True  # type: ignore[attr-defined]
    if (call := getattr(request, "call", None)) is not None:
        call.client_disconnected = True


def cancelled(request: HttpRequest) -> None:
    """Record a call its cancellation ended: the client left (499), or the server cut it (503)."""
    if getattr(request, "client_left", False):
        finish_unfinished(request, 499, "client_disconnected")
    else:
        finish_unfinished(request, 503, "server_shutting_down", SHUTDOWN_MESSAGE)


def finish_unfinished(request: HttpRequest, status: int, code: str | None, message: str = "") -> None:
    """Record a call whose view ended without finishing it (so every /v1 request has its record)."""
    call = getattr(request, "call", None)
    if call is None or call.finished:
        return  # no call (e.g. a 405), or already recorded
    call.status, call.error_code, call.error_message = status, code, message
    call.client_disconnected = code == "client_disconnected"
    finish(call)


def client_ip(request: HttpRequest) -> str:
    # REMOTE_ADDR is the peer; deployments behind Nginx set the real IP there (see deploy/).
    return str(request.META.get("REMOTE_ADDR") or "")


def finish(call: Call) -> None:
    """The call is over (answered, failed, or the client left): settle its quota and hand its record off.

    Exactly once per call: a second finish (the view wrapper's safety net) does nothing.
    """
    if call.finished:
        return
    call.finished = True
    if call.ended is None:
        call.ended = time.monotonic()
    if call.route is None and call.model:
        # Refused before any deployment was chosen: the "model" may be anything a client pasted there, a key
        # included. It goes into the usage record and the log line below, so it is scrubbed first.
        call.model = redact.redact(call.model)
    if call.admissions:
        _settle(call)
    # A deque append: the record is written in batches by tracking's background writer.
    recorder.record(call.usage_event())
    log.debug("call %s %s status=%s", call.request_id, call.model, call.status)


def _settle(call: Call) -> None:
    # Deployments that failed served no tokens: give their estimate back; the one that answered
    # is corrected to its real usage.
    answered = call.status == 200
    # The key's budget is counted on the first admission only (once per request, not per attempt): it pays
    # the real cost of the deployment that answered, whichever admission that was.
    usd = _real_usd(call) if answered and any(a.plan.usd for a in call.admissions) else 0
    for admission in call.admissions[:-1]:
        quota.settle(admission, 0, usd)
    quota.settle(call.admissions[-1], call.total_tokens if answered else 0, usd)


def _real_usd(call: Call) -> int | None:
    """The call's cost in micro-dollars; None when unknown (the estimate stands)."""
    if call.route is None or call.route.price is None:
        return None
    return quota.micro_usd(call.route.price.cost(call.prompt_tokens, call.completion_tokens).usd)
