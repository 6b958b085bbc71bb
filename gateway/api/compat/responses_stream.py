"""The Responses API's stream events, written from the upstream's chat chunks (a Translation for gateway.api.relay).

A stored stream's response is remembered when the stream ends, as a whole answer's is.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.api.compat.blocks import Answer, Assembler, Step
from gateway.api.compat.responses import (
    ResponsesRequest,
    assistant_message,
    item_id,
    output_item,
    remember,
    response_object,
    text_part,
)
from gateway.errors import GatewayError


class ResponseStream:
    """Renders chat chunks as the Responses API's stream events, numbered by sequence_number."""

    def __init__(self, request: ResponsesRequest, response_id: str, owner: str,
                 history: list[dict[str, Any]]) -> None:
        self.request = request
        self.response_id = response_id
        self.created_at = int(time.time())
        self.owner = owner
        self.history = history
        self.assembler = Assembler()
        self.sequence = 0

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        payload = orjson.dumps({"type": kind, "sequence_number": self.sequence, **data})
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"

    def _response(self, status: str, answer: Answer | None = None, error: dict[str, Any] | None = None,
                  ) -> dict[str, Any]:
        blocks = self.assembler.answer.blocks if answer is not None else []
        output = [output_item(self.response_id, block) for block in blocks]
        return response_object(self.request, self.response_id, self.created_at, status=status, output=output,
                               answer=answer, error=error)

    def start(self) -> bytes:
        response = self._response("in_progress")
        return self._event("response.created", {"response": response}) + self._event(
            "response.in_progress", {"response": response})

    def keepalive(self) -> bytes:
        return b": keepalive\n\n"

    def feed(self, chunk: dict[str, Any]) -> bytes:
        return b"".join(self._render(step) for step in self.assembler.feed(chunk))

    async def end(self) -> bytes:
        closing = b"".join(self._render(step) for step in self.assembler.close())
        answer = self.assembler.answer
        response = self._response("completed", answer)
        if self.request.store:
            # Stored before the client hears "completed", so its next turn finds it.
            conversation = [*self.history, *self.request.input, assistant_message(answer)]
            await remember(response, self.owner, conversation)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return closing + self._event(kind, {"response": response})

    def error(self, error: GatewayError) -> bytes:
        detail = {"code": error.code or "server_error", "message": error.message}
        return self._event("response.failed", {"response": self._response("failed", error=detail)})

    def _render(self, step: Step) -> bytes:
        block = step.block
        where = {"item_id": item_id(self.response_id, block), "output_index": block.position}
        if block.kind == "text":
            part = {**where, "content_index": 0}
            if step.kind == "start":
                return self._event("response.output_item.added", {
                    "output_index": block.position, "item": output_item(self.response_id, block, "in_progress"),
                }) + self._event("response.content_part.added", {**part, "part": text_part("")})
            if step.kind == "delta":
                return self._event("response.output_text.delta", {**part, "delta": step.piece, "logprobs": []})
            return (
                self._event("response.output_text.done", {**part, "text": block.text, "logprobs": []})
                + self._event("response.content_part.done", {**part, "part": text_part(block.text)})
                + self._event("response.output_item.done", {
                    "output_index": block.position, "item": output_item(self.response_id, block)})
            )
        if step.kind == "start":
            return self._event("response.output_item.added", {
                "output_index": block.position, "item": output_item(self.response_id, block, "in_progress")})
        if step.kind == "delta":
            return self._event("response.function_call_arguments.delta", {**where, "delta": step.piece})
        return self._event("response.function_call_arguments.done", {
            **where, "name": block.name, "arguments": block.text,
        }) + self._event("response.output_item.done", {
            "output_index": block.position, "item": output_item(self.response_id, block)})
