"""OpenAI's Responses API over OpenAI chat: input items in, output items and stream events out.

`previous_response_id` continues a conversation: each stored response keeps its whole conversation as
chat messages in the Django cache (Redis when several workers serve) for RESPONSES_TTL_SECONDS, owned by
the API key that created it. The instructions of earlier turns are not carried over, as in OpenAI's API.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache

from accounts.principal import Principal
from gateway.api.compat.blocks import Answer, Block, answer_of
from gateway.api.validation import expect
from gateway.api.validation import invalid as _invalid
from gateway.api.validation import number_in as _number_in
from gateway.errors import GatewayError, bad_request, not_found
from gateway.upstreams.media import Image, parse_image

STORE_KEY = "responses:{}"
_RESPONSE_ID = re.compile(r"resp_[A-Za-z0-9]{1,64}")


# --- requests ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponsesRequest:
    model: str
    stream: bool
    store: bool
    previous_response_id: str | None
    instructions: str | None
    input: list[dict[str, Any]]  # this turn's input as chat messages
    options: dict[str, Any]  # the chat body's other fields (max_tokens, tools, …)
    images: tuple[Image, ...]
    echo: dict[str, Any]  # the request's settings, as the response object repeats them

    def chat(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """The chat body: this turn's instructions, the stored conversation, then this turn's input."""
        system = [{"role": "system", "content": self.instructions}] if self.instructions else []
        return {"model": self.model, "messages": [*system, *history, *self.input], **self.options}


def parse_request(body: dict[str, Any]) -> ResponsesRequest:
    """Check a Responses request and translate it; a 400 names the offending field."""
    model = expect(body, "model", (str,), "a string", required=True)
    if not model.strip():
        raise _invalid("model", "must not be empty.")
    raw_input = expect(body, "input", (str, list), "a string or an array of input items", required=True)
    images: list[Image] = []
    messages = _input(raw_input, images)
    instructions = expect(body, "instructions", (str,), "a string") or None
    previous = expect(body, "previous_response_id", (str,), "a string") or None
    stream = bool(expect(body, "stream", (bool,), "a boolean"))
    store = expect(body, "store", (bool,), "a boolean") is not False
    options: dict[str, Any] = {"stream": True} if stream else {}
    max_output = expect(body, "max_output_tokens", (int,), "an integer")
    if max_output is not None:
        if max_output < 1:
            raise _invalid("max_output_tokens", f"must be at least 1, got {max_output}.")
        options["max_tokens"] = max_output
    temperature, top_p = _number_in(body, "temperature", 0, 2), _number_in(body, "top_p", 0, 1)
    options |= {k: v for k, v in (("temperature", temperature), ("top_p", top_p)) if v is not None}
    tools, tool_choice = _tools(body)
    parallel = expect(body, "parallel_tool_calls", (bool,), "a boolean")
    if tools:
        options["tools"] = tools
        if parallel is not None:
            options["parallel_tool_calls"] = parallel
    if tool_choice is not None:
        options["tool_choice"] = tool_choice
    text = expect(body, "text", (dict,), "an object") or {}
    if (response_format := _response_format(text)) is not None:
        options["response_format"] = response_format
    user = expect(body, "user", (str,), "a string")
    if user:
        options["user"] = user
    echo = {
        "instructions": instructions,
        "max_output_tokens": max_output,
        "metadata": expect(body, "metadata", (dict,), "an object") or {},
        "parallel_tool_calls": parallel is not False,
        "previous_response_id": previous,
        "reasoning": expect(body, "reasoning", (dict,), "an object") or {"effort": None, "summary": None},
        "store": store,
        "temperature": temperature,
        "text": {"format": {"type": "text"}, **text},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_p": top_p,
        "truncation": "disabled",
        "user": user,
    }
    return ResponsesRequest(model=model, stream=stream, store=store, previous_response_id=previous,
                            instructions=instructions, input=messages, options=options, images=tuple(images),
                            echo=echo)


def _input(value: str | list[Any], images: list[Image]) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not value:
        raise _invalid("input", "must contain at least one item.")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _invalid(where, "expected an input item object.")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            out.append(_message(item, where, images))
        elif kind == "function_call":
            _function_call(item, where, out)
        elif kind == "function_call_output":
            out.append(_function_call_output(item, where))
        elif kind == "reasoning":
            continue  # earlier reasoning items: OpenAI chat has no place for them
        else:
            raise _invalid(f"{where}.type", f"'{kind}' items are not supported; use message, function_call or "
                                            "function_call_output.")
    return out


ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = ("input_text", "output_text", "text")


def _message(item: dict[str, Any], where: str, images: list[Image]) -> dict[str, Any]:
    role = item.get("role")
    if role not in ROLES:
        raise _invalid(f"{where}.role", f"must be user, assistant, system or developer, got {role!r}.")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": ROLES[role], "content": content}
    if not isinstance(content, list):
        raise _invalid(f"{where}.content", "expected a string or an array of content parts.")
    parts = [_part(part, f"{where}.content[{j}]", images) for j, part in enumerate(content)]
    if all(part["type"] == "text" for part in parts):
        # Text only: one string, which every upstream takes (some refuse part arrays for system/assistant).
        return {"role": ROLES[role], "content": "".join(part["text"] for part in parts)}
    if role != "user":
        raise _invalid(f"{where}.content", "only user messages may contain images.")
    return {"role": "user", "content": parts}


def _part(part: Any, where: str, images: list[Image]) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in TEXT_PARTS or kind == "refusal":
        assert isinstance(part, dict)
        text = part.get("refusal" if kind == "refusal" else "text")
        if not isinstance(text, str):
            raise _invalid(f"{where}.text", "expected a string.")
        return {"type": "text", "text": text}
    if kind == "input_image":
        assert isinstance(part, dict)
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _invalid(f"{where}.image_url", "expected an https URL or a data: URL (file_id is not supported).")
        images.append(_image(url, f"{where}.image_url"))
        image_url = {"url": url} | ({"detail": part["detail"]} if isinstance(part.get("detail"), str) else {})
        return {"type": "image_url", "image_url": image_url}
    raise _invalid(f"{where}.type", f"'{kind}' parts are not supported; use input_text or input_image.")


def _image(url: str, where: str) -> Image:
    try:
        return parse_image(url, where)
    except GatewayError as e:
        # parse_image names chat's image_url.url; here image_url is the URL itself.
        raise bad_request(e.message.replace(f"'{where}.url'", f"'{where}'"), param=where, code=e.code) from None


def _string(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise _invalid(f"{where}.{name}", "expected a non-empty string.")
    return value


def _function_call(item: dict[str, Any], where: str, out: list[dict[str, Any]]) -> None:
    """A call the model made earlier; consecutive calls (and the text before them) form one assistant turn."""
    arguments = item.get("arguments", "")
    if not isinstance(arguments, str):
        raise _invalid(f"{where}.arguments", "expected a JSON string.")
    call = {"id": _string(item, "call_id", where), "type": "function",
            "function": {"name": _string(item, "name", where), "arguments": arguments}}
    if out and out[-1]["role"] == "assistant":
        out[-1].setdefault("tool_calls", []).append(call)
        out[-1]["content"] = out[-1].get("content") or None
    else:
        out.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _function_call_output(item: dict[str, Any], where: str) -> dict[str, Any]:
    output = item.get("output")
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
                raise _invalid(f"{where}.output[{j}]", "only text parts are supported in a function call output.")
            texts.append(part["text"])
        output = "".join(texts)
    if not isinstance(output, str):
        raise _invalid(f"{where}.output", "expected a string.")
    return {"role": "tool", "tool_call_id": _string(item, "call_id", where), "content": output}


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    tools = expect(body, "tools", (list,), "an array") or []
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _invalid(f"{where}.type", f"only function tools are supported here, got {kind!r}.")
        function = {"name": _string(tool, "name", where), "parameters": tool.get("parameters") or {
            "type": "object", "properties": {}}}
        for name in ("description", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        out.append({"type": "function", "function": function})
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none", "required"):
        return out, choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return out, {"type": "function", "function": {"name": _string(choice, "name", "tool_choice")}}
    raise _invalid("tool_choice", "expected 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}.")


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        assert isinstance(fmt, dict)
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise _invalid("text.format.type", f"must be text, json_object or json_schema, got {kind!r}.")


# --- answers -----------------------------------------------------------------------------------------------


def item_id(response_id: str, block: Block) -> str:
    return f"{'msg' if block.kind == 'text' else 'fc'}_{response_id.removeprefix('resp_')}_{block.position}"


def output_item(response_id: str, block: Block, status: str = "completed") -> dict[str, Any]:
    if block.kind == "text":
        content = [text_part(block.text)] if status != "in_progress" else []
        return {"id": item_id(response_id, block), "type": "message", "role": "assistant", "status": status,
                "content": content}
    return {"id": item_id(response_id, block), "type": "function_call", "status": status, "call_id": block.call_id,
            "name": block.name, "arguments": block.text if status != "in_progress" else ""}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def usage(answer: Answer) -> dict[str, Any]:
    u = answer.usage
    return {
        "input_tokens": u.prompt,
        "input_tokens_details": {"cached_tokens": u.cached, "cache_write_tokens": 0},
        "output_tokens": u.completion,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.prompt + u.completion,
    }


def response_object(request: ResponsesRequest, response_id: str, created_at: int, *, status: str,
                    output: list[dict[str, Any]], answer: Answer | None = None,
                    error: dict[str, Any] | None = None) -> dict[str, Any]:
    incomplete = None
    if answer is not None and answer.finish_reason in ("length", "content_filter"):
        status = "incomplete"
        incomplete = {"reason": "max_output_tokens" if answer.finish_reason == "length" else "content_filter"}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": request.model,
        "output": output,
        "usage": usage(answer) if answer is not None else None,
        **request.echo,
    }


def assistant_message(answer: Answer) -> dict[str, Any]:
    """The answer as the chat message stored in the conversation."""
    text = "".join(block.text for block in answer.blocks if block.kind == "text")
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    calls = [{"id": b.call_id, "type": "function", "function": {"name": b.name, "arguments": b.text}}
             for b in answer.blocks if b.kind == "tool"]
    if calls:
        message["tool_calls"] = calls
    elif not text:
        message["content"] = ""
    return message


def complete(request: ResponsesRequest, result: dict[str, Any], response_id: str) -> tuple[dict[str, Any], Answer]:
    """A chat.completion as a Response object."""
    answer = answer_of(result)
    output = [output_item(response_id, block) for block in answer.blocks]
    return response_object(request, response_id, int(time.time()), status="completed", output=output,
                           answer=answer), answer


# --- the store of conversations ----------------------------------------------------------------------------


def owner_of(principal: Principal) -> str:
    return "master" if principal.is_master else f"key:{principal.key_id}"


async def remember(response: dict[str, Any], owner: str, conversation: list[dict[str, Any]]) -> None:
    entry = {"owner": owner, "messages": conversation, "response": response}
    await cache.aset(STORE_KEY.format(response["id"]), entry, timeout=settings.RESPONSES_TTL_SECONDS)


async def recall(response_id: str, owner: str, param: str | None = None) -> dict[str, Any]:
    """A stored response of this owner, or a 404 that does not tell another key's responses from expired ones."""
    entry = await cache.aget(STORE_KEY.format(response_id)) if _RESPONSE_ID.fullmatch(response_id) else None
    if not isinstance(entry, dict) or entry.get("owner") != owner:
        raise not_found(
            f"Response with id '{response_id}' not found. Responses are kept for "
            f"{settings.RESPONSES_TTL_SECONDS} seconds, and only for the API key that created them.",
            code="previous_response_not_found" if param else "not_found", param=param,
        )
    return entry


async def forget(response_id: str, owner: str) -> None:
    await recall(response_id, owner)
    await cache.adelete(STORE_KEY.format(response_id))
