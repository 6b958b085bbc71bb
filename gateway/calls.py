"""What happened during one /v1 call, filled in as it goes and handed off when it ends."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from django.http import HttpRequest

from gateway.auth import Principal
from gateway.catalog import Route

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

    @classmethod
    def begin(cls, request: HttpRequest, endpoint: str) -> Call:
        return cls(request_id=request.request_id, endpoint=endpoint, client_ip=client_ip(request))  # type: ignore[attr-defined]

    def take_usage(self, usage: dict[str, Any] | None) -> None:
        if usage:
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = usage.get("completion_tokens", self.completion_tokens)

    def mark_first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

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


def client_ip(request: HttpRequest) -> str:
    # REMOTE_ADDR is the peer; deployments behind Nginx set the real IP there (see deploy/).
    return str(request.META.get("REMOTE_ADDR") or "")


def finish(call: Call) -> None:
    """The call is over (answered, failed, or the client left): hand its record off."""
    if call.ended is None:
        call.ended = time.monotonic()
    log.debug("call %s %s status=%s", call.request_id, call.model, call.status)
