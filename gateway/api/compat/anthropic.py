"""Anthropic's Messages API over OpenAI chat: requests, answers and errors (its stream: anthropic_stream.py).

Our own translator rather than LiteLLM's AnthropicAdapter: the adapter goes through LiteLLM's pydantic
types (slow on every chunk, and it changes between LiteLLM releases), its errors would not name the
offending field, and we need the router in the middle anyway (quotas, fallback, usage), so the adapter's
call path is of no use. The mapping itself is small: the code below is all of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from django.http import HttpResponse

from gateway.api.compat.blocks import Answer, Block, answer_of
from gateway.api.validation import expect
from gateway.api.validation import invalid as _invalid
from gateway.api.validation import number_in as _number_in
from gateway.errors import GatewayError, bad_request
from gateway.upstreams.media import Image, parse_image

log = logging.getLogger(__name__)

# Anthropic's error type per status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}


# --- errors ------------------------------------------------------------------------------------------------


def error_body(error: GatewayError) -> dict[str, Any]:
    kind = ERROR_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def error_response(error: GatewayError, request_id: str) -> HttpResponse:
    """Anthropic's envelope, with the status and headers (Retry-After, rate limits) of the portal's error."""
    body = {**error_body(error), "request_id": request_id}
    response = HttpResponse(orjson.dumps(body), status=error.status, content_type="application/json")
    for name, value in error.headers.items():
        response[name] = value
    return response


# --- requests ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessagesRequest:
    model: str
    stream: bool
    chat: dict[str, Any]  # the OpenAI chat body sent through the router
    images: tuple[Image, ...]
    stop_sequences: tuple[str, ...]


def parse_request(body: dict[str, Any], *, counting: bool = False) -> MessagesRequest:
    """Check an Anthropic request and translate it to an OpenAI chat body; a 400 names the offending field.

    `counting` is for /v1/messages/count_tokens, where max_tokens is not required.
    """
    model = expect(body, "model", (str,), "a string", required=True)
    if not model.strip():
        raise _invalid("model", "must not be empty.")
    max_tokens = expect(body, "max_tokens", (int,), "an integer", required=not counting)
    if max_tokens is not None and max_tokens < 1:
        raise _invalid("max_tokens", f"must be at least 1, got {max_tokens}.")
    raw_messages = expect(body, "messages", (list,), "an array", required=True)
    if not raw_messages:
        raise _invalid("messages", "must contain at least one message.")
    images: list[Image] = []
    messages = [*_system(body), *_messages(raw_messages, images)]
    chat: dict[str, Any] = {"model": model, "messages": messages}
    if max_tokens is not None:
        chat["max_tokens"] = max_tokens
    stream = bool(expect(body, "stream", (bool,), "a boolean"))
    if stream:
        chat["stream"] = True
    for name in ("temperature", "top_p"):
        if (value := _number_in(body, name, 0, 1)) is not None:
            chat[name] = value
    # top_k has no OpenAI equivalent; it is checked but not forwarded (an OpenAI upstream would reject it).
    expect(body, "top_k", (int,), "an integer")
    stops = tuple(_stop_sequences(body))
    if stops:
        chat["stop"] = list(stops)
    chat |= _tools(body)
    if (response_format := _output_format(body)) is not None:
        chat["response_format"] = response_format
    metadata = expect(body, "metadata", (dict,), "an object") or {}
    user = metadata.get("user_id")
    if user is not None and not isinstance(user, str):
        raise bad_request("Invalid type for 'metadata.user_id': expected a string.", param="metadata.user_id",
                          code="invalid_type")
    if user:
        chat["user"] = user
    return MessagesRequest(model=model, stream=stream, chat=chat, images=tuple(images), stop_sequences=stops)


def _stop_sequences(body: dict[str, Any]) -> list[str]:
    stops = expect(body, "stop_sequences", (list,), "an array of strings") or []
    for i, stop in enumerate(stops):
        if not isinstance(stop, str) or not stop:
            raise _invalid(f"stop_sequences[{i}]", "expected a non-empty string.")
    return stops


def _output_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """Structured output (output_config.format) as OpenAI's json_schema response_format."""
    config = expect(body, "output_config", (dict,), "an object") or {}
    fmt = config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise _invalid("output_config.format", 'expected {"type": "json_schema", "schema": {...}}.')
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


def _system(body: dict[str, Any]) -> list[dict[str, Any]]:
    system = expect(body, "system", (str, list), "a string or an array of text blocks")
    if isinstance(system, list):
        texts = []
        for i, block in enumerate(system):
            where = f"system[{i}]"
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise _invalid(where, "expected a text block {\"type\": \"text\", \"text\": ...}.")
            texts.append(block["text"])
        system = "\n\n".join(texts)
    return [{"role": "system", "content": system}] if system else []


def _messages(messages: list[Any], images: list[Image]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid(where, "expected an object with 'role' and 'content'.")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise _invalid(f"{where}.role", f"must be 'user' or 'assistant', got {role!r}.")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif not isinstance(content, list):
            raise _invalid(f"{where}.content", "expected a string or an array of content blocks.")
        elif role == "assistant":
            out.append(_assistant(content, where))
        else:
            out.extend(_user(content, where, images))
    return out


def _block_type(block: Any, where: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _invalid(where, "expected a content block with a 'type'.")
    return str(block["type"])


def _text_of(block: dict[str, Any], where: str) -> str:
    if not isinstance(block.get("text"), str):
        raise _invalid(f"{where}.text", "expected a string.")
    return str(block["text"])


def _image_part(block: dict[str, Any], where: str, images: list[Image]) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") not in ("base64", "url"):
        raise _invalid(f"{where}.source", "expected a source of type 'base64' or 'url'.")
    if source["type"] == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not media_type.startswith("image/"):
            raise _invalid(f"{where}.source.media_type", "expected an image type such as image/png.")
        if not isinstance(data, str) or not data:
            raise _invalid(f"{where}.source.data", "expected base64 image data.")
        url = f"data:{media_type};base64,{data}"
    else:
        raw = source.get("url")
        if not isinstance(raw, str) or not raw:
            raise _invalid(f"{where}.source.url", "expected an https URL.")
        url = raw
    images.append(parse_image(url, f"{where}.source"))
    return {"type": "image_url", "image_url": {"url": url}}


def _user(blocks: list[Any], where: str, images: list[Image]) -> list[dict[str, Any]]:
    """One user turn: its tool results become OpenAI tool messages (they must follow the assistant's calls),
    the rest one user message after them."""
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = _block_type(block, at)
        if kind == "text":
            parts.append({"type": "text", "text": _text_of(block, at)})
        elif kind == "image":
            parts.append(_image_part(block, at, images))
        elif kind == "tool_result":
            tool_messages.append(_tool_result(block, at, images, parts))
        else:
            raise _invalid(f"{at}.type", f"'{kind}' blocks are not supported here; use text, image or tool_result.")
    out = tool_messages
    if len(parts) == 1 and parts[0]["type"] == "text":
        out.append({"role": "user", "content": parts[0]["text"]})
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _tool_result(block: dict[str, Any], where: str, images: list[Image], parts: list[dict[str, Any]]) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{where}.tool_use_id", "expected the id of the tool_use block this answers.")
    content = block.get("content", "")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, inner in enumerate(content):
            at = f"{where}.content[{k}]"
            kind = _block_type(inner, at)
            if kind == "text":
                texts.append(_text_of(inner, at))
            elif kind == "image":
                # OpenAI tool messages carry text only: the image goes to the user message that follows.
                parts.append(_image_part(inner, at, images))
            else:
                raise _invalid(f"{at}.type", f"'{kind}' is not supported in a tool result; use text or image.")
    elif content is not None:
        raise _invalid(f"{where}.content", "expected a string or an array of text and image blocks.")
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _assistant(blocks: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = _block_type(block, at)
        if kind == "text":
            texts.append(_text_of(block, at))
        elif kind == "tool_use":
            calls.append(_tool_use(block, at))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's earlier reasoning: OpenAI chat has no place for it
        else:
            raise _invalid(f"{at}.type", f"'{kind}' blocks are not supported here; use text or tool_use.")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _tool_use(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{where}.id", "expected a string.")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{where}.name", "expected a string.")
    if not isinstance(arguments, dict):
        raise _invalid(f"{where}.input", "expected an object.")
    function = {"name": name, "arguments": orjson.dumps(arguments).decode()}
    return {"id": call_id, "type": "function", "function": function}


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    """tools and tool_choice as OpenAI function tools."""
    tools = expect(body, "tools", (list,), "an array")
    choice = expect(body, "tool_choice", (dict,), "an object")
    out: dict[str, Any] = {}
    if tools:
        out["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    if choice is not None:
        kind = choice.get("type")
        if kind == "auto":
            out["tool_choice"] = "auto"
        elif kind == "any":
            out["tool_choice"] = "required"
        elif kind == "none":
            out["tool_choice"] = "none"
        elif kind == "tool":
            if not isinstance(choice.get("name"), str) or not choice["name"]:
                raise _invalid("tool_choice.name", "expected the name of one of the tools.")
            out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            raise _invalid("tool_choice.type", f"must be 'auto', 'any', 'tool' or 'none', got {kind!r}.")
        if choice.get("disable_parallel_tool_use") is True and tools:
            out["parallel_tool_calls"] = False
    return out


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise _invalid(where, "expected a tool object.")
    if tool.get("type") not in (None, "custom"):
        raise _invalid(f"{where}.type", f"server tools ('{tool['type']}') are not supported; define client tools "
                                        "with a name and an input_schema.")
    name, schema, description = tool.get("name"), tool.get("input_schema"), tool.get("description")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{where}.name", "expected a string.")
    if not isinstance(schema, dict):
        raise _invalid(f"{where}.input_schema", "expected a JSON schema object.")
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if isinstance(description, str) and description:
        function["description"] = description
    return {"type": "function", "function": function}


# --- answers -----------------------------------------------------------------------------------------------


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as Anthropic's input object."""
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        # The model wrote invalid JSON: pass it on rather than lose it, so the agent can say what went wrong.
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"_value": value}


def stop_reason(answer: Answer, stop_sequences: tuple[str, ...]) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). OpenAI says only "stop" for a stop sequence; some upstreams (vLLM) name it."""
    if answer.has_tool_calls:
        return "tool_use", None
    if answer.finish_reason == "stop" and answer.matched_stop in stop_sequences:
        return "stop_sequence", answer.matched_stop
    return STOP_REASONS.get(answer.finish_reason or "stop", "end_turn"), None


def usage(answer: Answer) -> dict[str, int]:
    # Anthropic counts cache reads apart from input_tokens; OpenAI's prompt_tokens include them.
    cached = answer.usage.cached
    return {
        "input_tokens": max(answer.usage.prompt - cached, 0),
        "output_tokens": answer.usage.completion,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def content_block(block: Block) -> dict[str, Any]:
    if block.kind == "text":
        return {"type": "text", "text": block.text}
    return {"type": "tool_use", "id": block.call_id, "name": block.name, "input": tool_input(block.text)}


def message(result: dict[str, Any], request: MessagesRequest, message_id: str) -> dict[str, Any]:
    """A chat.completion as Anthropic's Message."""
    answer = answer_of(result)
    reason, sequence = stop_reason(answer, request.stop_sequences)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": [content_block(block) for block in answer.blocks],
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(answer),
    }


# --- streams -----------------------------------------------------------------------------------------------


# --- count_tokens ------------------------------------------------------------------------------------------


def count_tokens(litellm_model: str, chat: dict[str, Any]) -> int:
    """LiteLLM's tokenizer for the model (tiktoken when it knows none). Blocking: run it off the event loop."""
    try:
        import litellm

        return int(litellm.token_counter(model=litellm_model, messages=chat["messages"], tools=chat.get("tools")))
    except Exception:
        log.debug("token_counter failed for %s; estimating", litellm_model, exc_info=True)
        return len(orjson.dumps([chat["messages"], chat.get("tools")])) // 4 + 1
