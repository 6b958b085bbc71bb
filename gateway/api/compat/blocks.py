"""An OpenAI chat answer as an ordered list of content blocks (text, tool calls).

Both translations render the same blocks: Anthropic as content blocks, the Responses API as output
items. A stream is assembled chunk by chunk into Steps (a block starts, grows, stops), so each
renderer only maps three kinds of step to its own events.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

BlockKind = Literal["text", "tool"]


@dataclass
class Block:
    kind: BlockKind
    position: int  # order among the answer's blocks
    call_id: str = ""  # tool calls only
    name: str = ""  # tool calls only
    parts: list[str] = field(default_factory=list)  # the text, or a tool call's JSON arguments, as received

    @property
    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""


@dataclass
class Usage:
    prompt: int = 0
    completion: int = 0
    cached: int = 0  # prompt tokens served from the provider's cache
    reasoning: int = 0

    @classmethod
    def of(cls, usage: dict[str, Any] | None) -> Usage:
        usage = usage or {}
        details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            prompt=int(usage.get("prompt_tokens") or 0),
            completion=int(usage.get("completion_tokens") or 0),
            cached=int(details.get("cached_tokens") or 0),
            reasoning=int(completion_details.get("reasoning_tokens") or 0),
        )


@dataclass
class Answer:
    blocks: list[Block] = field(default_factory=list)
    finish_reason: str | None = None
    # The stop sequence that ended the answer, when the upstream names it (vLLM-style choice.stop_reason).
    matched_stop: str | None = None
    usage: Usage = field(default_factory=Usage)

    @property
    def has_tool_calls(self) -> bool:
        return any(block.kind == "tool" for block in self.blocks)


@dataclass(frozen=True)
class Step:
    kind: Literal["start", "delta", "stop"]
    block: Block
    piece: str = ""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _matched_stop(choice: dict[str, Any]) -> str | None:
    found = choice.get("stop_reason")
    if not isinstance(found, str):
        found = (choice.get("provider_specific_fields") or {}).get("stop_reason")
    return found if isinstance(found, str) else None


def answer_of(result: dict[str, Any]) -> Answer:
    """A complete chat.completion as blocks: its text first, then its tool calls."""
    answer = Answer(usage=Usage.of(result.get("usage")))
    choices = result.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    answer.finish_reason = choice.get("finish_reason")
    answer.matched_stop = _matched_stop(choice)
    content = message.get("content")
    if isinstance(content, list):  # some providers answer with parts
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    if isinstance(content, str) and content:
        answer.blocks.append(Block("text", 0, parts=[content]))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        answer.blocks.append(Block(
            "tool", len(answer.blocks), call_id=call.get("id") or new_call_id(), name=function.get("name") or "",
            parts=[function.get("arguments") or ""],
        ))
    return answer


class Assembler:
    """Turns streamed chat chunks into block steps, one block open at a time, in the order they arrive."""

    def __init__(self) -> None:
        self.answer = Answer()
        self._open: Block | None = None
        self._tools: dict[int, Block] = {}  # OpenAI's tool_call index -> its block

    def feed(self, chunk: dict[str, Any]) -> list[Step]:
        if chunk.get("usage"):
            self.answer.usage = Usage.of(chunk["usage"])
        steps: list[Step] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # n > 1 is not part of either API
            delta = choice.get("delta") or {}
            if isinstance(text := delta.get("content"), str) and text:
                self._text(text, steps)
            for call in delta.get("tool_calls") or ():
                self._tool(call, steps)
            if choice.get("finish_reason"):
                self.answer.finish_reason = choice["finish_reason"]
                self.answer.matched_stop = _matched_stop(choice) or self.answer.matched_stop
        return steps

    def close(self) -> list[Step]:
        """The stream ended: stop the open block."""
        steps: list[Step] = []
        self._stop(steps)
        return steps

    def _stop(self, steps: list[Step]) -> None:
        if self._open is not None:
            steps.append(Step("stop", self._open))
            self._open = None

    def _start(self, block: Block, steps: list[Step]) -> None:
        self._stop(steps)
        self.answer.blocks.append(block)
        self._open = block
        steps.append(Step("start", block))

    def _text(self, text: str, steps: list[Step]) -> None:
        if self._open is None or self._open.kind != "text":
            self._start(Block("text", len(self.answer.blocks)), steps)
        assert self._open is not None
        self._open.parts.append(text)
        steps.append(Step("delta", self._open, text))

    def _tool(self, call: dict[str, Any], steps: list[Step]) -> None:
        index = call.get("index", 0)
        function = call.get("function") or {}
        block = self._tools.get(index)
        if block is None:
            block = Block("tool", len(self.answer.blocks), call_id=call.get("id") or new_call_id(),
                          name=function.get("name") or "")
            self._tools[index] = block
            self._start(block, steps)
        if isinstance(arguments := function.get("arguments"), str) and arguments:
            block.parts.append(arguments)
            # A late piece of an earlier call (interleaved calls) still goes to its own block.
            steps.append(Step("delta", block, arguments))
