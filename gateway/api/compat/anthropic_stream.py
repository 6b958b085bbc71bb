"""Anthropic's stream events, written from the upstream's chat chunks (a Translation for gateway.api.relay)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.api.compat.anthropic import MessagesRequest, error_body, stop_reason
from gateway.api.compat.blocks import Assembler, Step
from gateway.errors import GatewayError


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


PING = event("ping", {})


class MessageStream:
    """Renders chat chunks as Anthropic's stream: message_start, ping, content blocks, message_delta,
    message_stop (https://docs.anthropic.com/en/docs/build-with-claude/streaming)."""

    def __init__(self, request: MessagesRequest, message_id: str) -> None:
        self.request = request
        self.message_id = message_id
        self.assembler = Assembler()

    def start(self) -> bytes:
        # The upstream reports input tokens only at the end: an estimate now, the real count in message_delta.
        estimate = len(orjson.dumps(self.request.chat["messages"])) // 4 + 1
        message: dict[str, Any] = {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.request.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": estimate, "output_tokens": 0},
        }
        return event("message_start", {"message": message}) + PING

    def keepalive(self) -> bytes:
        return PING

    def feed(self, chunk: dict[str, Any]) -> bytes:
        return b"".join(self._render(step) for step in self.assembler.feed(chunk))

    async def end(self) -> bytes:
        answer = self.assembler.answer
        closing = b"".join(self._render(step) for step in self.assembler.close())
        reason, sequence = stop_reason(answer, self.request.stop_sequences)
        counts: dict[str, int] = {"output_tokens": answer.usage.completion}
        if answer.usage.prompt:  # the real count replaces message_start's estimate
            counts |= {"input_tokens": max(answer.usage.prompt - answer.usage.cached, 0),
                       "cache_read_input_tokens": answer.usage.cached}
        delta = {"delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": counts}
        return closing + event("message_delta", delta) + event("message_stop", {})

    def error(self, error: GatewayError) -> bytes:
        # Anthropic's own mid-stream failure: an error event, which its SDK raises as an APIStatusError.
        return event("error", {"error": error_body(error)["error"]})

    def _render(self, step: Step) -> bytes:
        block = step.block
        if step.kind == "start":
            start = {"type": "text", "text": ""} if block.kind == "text" else {
                "type": "tool_use", "id": block.call_id, "name": block.name, "input": {}}
            return event("content_block_start", {"index": block.position, "content_block": start})
        if step.kind == "delta":
            delta = {"type": "text_delta", "text": step.piece} if block.kind == "text" else {
                "type": "input_json_delta", "partial_json": step.piece}
            return event("content_block_delta", {"index": block.position, "delta": delta})
        return event("content_block_stop", {"index": block.position})
