"""Parse and check /v1 request bodies, naming the offending field in a 400."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest
from django.http.request import RawPostDataException

from gateway.errors import GatewayError, bad_request
from gateway.upstreams.media import Image, iter_images, parse_image


def json_body(request: HttpRequest) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413 envelope."""
    length = request.META.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > settings.MAX_REQUEST_BODY_BYTES:
        raise too_large()
    try:
        # read(), not .body: Django checks .body against DATA_UPLOAD_MAX_MEMORY_SIZE, the admin's (smaller) limit.
        raw = request.read()
    except (RequestDataTooBig, RawPostDataException):
        raise too_large() from None
    if len(raw) > settings.MAX_REQUEST_BODY_BYTES:
        raise too_large()
    if not raw.strip():
        raise bad_request("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise bad_request(f"The request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    # Fewer brackets than the limit cannot nest deeper than it: the walk runs only for bodies that might.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _depth_exceeds(data, MAX_JSON_DEPTH):
        raise bad_request(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.",
                          code="invalid_json")
    return data


# Deeper JSON is refused: orjson (which writes the body upstream and into usage records) stops at 254 levels,
# and no real request comes near this.
MAX_JSON_DEPTH = 128


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def too_large() -> GatewayError:
    limit = settings.MAX_REQUEST_BODY_BYTES
    return GatewayError(413, f"The request body is larger than the limit of {limit} bytes.", code="request_too_large")


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def expect(body: dict[str, Any], name: str, kinds: tuple[type, ...], label: str, required: bool = False) -> Any:
    """Return body[name] if it has one of `kinds` (bool is never a number), else a 400 naming it."""
    if name not in body or body[name] is None:
        if required:
            raise bad_request(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
        return None
    value = body[name]
    is_bool = isinstance(value, bool)
    if not isinstance(value, kinds) or (is_bool and bool not in kinds):
        raise bad_request(
            f"Invalid type for '{name}': expected {label}, but got {_type_name(value)}.",
            param=name,
            code="invalid_type",
        )
    return value


def invalid(where: str, message: str) -> GatewayError:
    """400 for a field whose value is wrong (the compat APIs' fields, named with their path)."""
    return bad_request(f"Invalid '{where}': {message}", param=where, code="invalid_value")


def number_in(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = expect(body, name, (int, float), "a number")
    if value is not None and not low <= value <= high:
        raise invalid(name, f"must be between {low} and {high}, got {value}.")
    return value


def _check_range(body: dict[str, Any], name: str, low: float | None, high: float | None) -> None:
    value = body.get(name)
    if value is None:
        return
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise bad_request(f"Invalid value for '{name}': must be {bounds}, got {value}.", param=name,
                          code="invalid_value")


@dataclass(frozen=True)
class ChatRequest:
    model: str
    stream: bool
    include_usage: bool
    images: tuple[Image, ...] = ()


def _check_messages(messages: list[Any]) -> None:
    if not messages:
        raise bad_request("'messages' must contain at least one message.", param="messages", code="invalid_value")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"Invalid type for '{where}': expected an object, but got {_type_name(message)}.",
                              param=where, code="invalid_type")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise bad_request(f"Missing required parameter: '{where}.role'.", param=f"{where}.role",
                              code="missing_required_parameter")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(
                f"Invalid type for '{where}.content': expected a string or an array of parts, "
                f"but got {_type_name(content)}.",
                param=f"{where}.content",
                code="invalid_type",
            )
        if isinstance(content, list):
            _check_parts(content, f"{where}.content", user=role == "user")


RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def _check_tools(tools: list[Any]) -> None:
    """OpenAI's shape, {"type": "function", "function": {"name": ...}}: LiteLLM fails on others in ways that
    look like the provider failing."""
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise bad_request(f"Invalid '{where}': expected an object with a 'type'.", param=f"{where}.type",
                              code="invalid_value")
        function = tool.get("function")
        if tool["type"] == "function" and not (isinstance(function, dict) and isinstance(function.get("name"), str)):
            raise bad_request(f"Invalid '{where}.function': expected an object with a 'name'.",
                              param=f"{where}.function.name", code="invalid_value")


# The content part types a user message may hold (OpenAI's, and those LiteLLM knows; it refuses others).
USER_PART_TYPES = frozenset({"text", "image_url", "input_audio", "audio_url", "document", "guarded_text",
                             "grounding_source", "query", "video_url", "file"})


def _check_parts(parts: list[Any], where: str, *, user: bool) -> None:
    """Each part an object with a known "type" (and a string "text" for text parts): a malformed part must be
    a 400 here, not an exception inside LiteLLM that would look like the provider failing."""
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str) or (user and kind not in USER_PART_TYPES):
            raise bad_request(f"Invalid '{at}': each part must be an object with a 'type' "
                              f"({', '.join(sorted(USER_PART_TYPES)) if user else 'e.g. text'}).",
                              param=f"{at}.type", code="invalid_value")
        if kind == "text" and not isinstance(part.get("text"), str):
            raise bad_request(f"Invalid '{at}.text': expected a string.", param=f"{at}.text", code="invalid_type")


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    model = expect(body, "model", (str,), "a string", required=True)
    if not model.strip():
        raise bad_request("'model' must not be empty.", param="model", code="invalid_value")
    _check_messages(expect(body, "messages", (list,), "an array", required=True))
    stream = bool(expect(body, "stream", (bool,), "a boolean"))
    options = expect(body, "stream_options", (dict,), "an object") or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request("Invalid type for 'stream_options.include_usage': expected a boolean.",
                          param="stream_options.include_usage", code="invalid_type")
    for name in ("max_tokens", "max_completion_tokens", "n", "seed"):
        expect(body, name, (int,), "an integer")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        expect(body, name, (int, float), "a number")
    _check_range(body, "max_tokens", 1, None)
    _check_range(body, "max_completion_tokens", 1, None)
    _check_range(body, "n", 1, 128)
    _check_range(body, "temperature", 0, 2)
    _check_range(body, "top_p", 0, 1)
    expect(body, "stop", (str, list), "a string or an array")
    _check_tools(expect(body, "tools", (list,), "an array") or [])
    expect(body, "tool_choice", (str, dict), "a string or an object")
    response_format = expect(body, "response_format", (dict,), "an object")
    if response_format is not None and response_format.get("type") not in RESPONSE_FORMATS:
        raise bad_request(f"Invalid 'response_format.type': use one of {', '.join(RESPONSE_FORMATS)}.",
                          param="response_format.type", code="invalid_value")
    expect(body, "user", (str,), "a string")
    expect(body, "metadata", (dict,), "an object")
    images = tuple(parse_image(value, where) for where, value in iter_images(body["messages"]))
    return ChatRequest(model=model, stream=stream, include_usage=include_usage, images=images)


@dataclass(frozen=True)
class SpeechRequest:
    model: str
    input: str
    voice: str
    response_format: str


# What OpenAI's /v1/audio/speech accepts; which of them a deployment can produce is checked when it is chosen.
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MAX_SPEECH_INPUT = 4096  # characters, as OpenAI


def parse_speech(body: dict[str, Any]) -> SpeechRequest:
    model = expect(body, "model", (str,), "a string", required=True)
    text = expect(body, "input", (str,), "a string", required=True)
    if not text.strip():
        raise bad_request("'input' must not be empty.", param="input", code="invalid_value")
    if len(text) > MAX_SPEECH_INPUT:
        raise bad_request(f"'input' is longer than {MAX_SPEECH_INPUT} characters.", param="input",
                          code="invalid_value")
    voice = expect(body, "voice", (str,), "a string", required=True)
    fmt = expect(body, "response_format", (str,), "a string") or "wav"
    if fmt not in SPEECH_FORMATS:
        raise bad_request(f"Invalid value for 'response_format': {fmt!r}; supported values are "
                          f"{', '.join(SPEECH_FORMATS)}.", param="response_format", code="invalid_value")
    speed = expect(body, "speed", (int, float), "a number")
    if speed is not None and speed != 1:
        raise bad_request("'speed' is not supported: the speech models here speak at their own pace; leave it "
                          "out or send 1.0.", param="speed", code="unsupported_parameter")
    for name in ("instructions", "stream_format"):
        if body.get(name) not in (None, "", "audio"):
            raise bad_request(f"'{name}' is not supported by the speech models here.", param=name,
                              code="unsupported_parameter")
    return SpeechRequest(model=model, input=text, voice=voice, response_format=fmt)


@dataclass(frozen=True)
class EmbeddingsRequest:
    model: str
    base64: bool


# OpenAI's documented limit of inputs per embeddings request (a single token array is one input).
MAX_EMBEDDING_INPUTS = 2048


def _check_embedding_input(value: Any) -> None:
    if isinstance(value, list) and len(value) > MAX_EMBEDDING_INPUTS and not isinstance(value[0], int):
        raise bad_request(f"Invalid 'input': array too long. Expected an array with maximum length "
                          f"{MAX_EMBEDDING_INPUTS}, but got an array with length {len(value)} instead.",
                          param="input", code="array_above_max_length")
    ok = isinstance(value, str) and value != ""
    if isinstance(value, list) and value:
        kinds = {type(item) for item in value}
        ok = (kinds == {str} and all(value)) or kinds == {int} or (
            kinds == {list} and all(item and all(type(t) is int for t in item) for item in value)
        )
    if not ok:
        raise bad_request("Invalid 'input': send a non-empty string, an array of non-empty strings, an array of "
                          "token ids, or an array of token-id arrays.", param="input", code="invalid_value")


def parse_embeddings(body: dict[str, Any]) -> EmbeddingsRequest:
    model = expect(body, "model", (str,), "a string", required=True)
    _check_embedding_input(expect(body, "input", (str, list), "a string or an array", required=True))
    encoding = expect(body, "encoding_format", (str,), "a string") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request(f"Invalid value for 'encoding_format': {encoding!r}; use 'float' or 'base64'.",
                          param="encoding_format", code="invalid_value")
    expect(body, "dimensions", (int,), "an integer")
    _check_range(body, "dimensions", 1, None)
    expect(body, "user", (str,), "a string")
    return EmbeddingsRequest(model=model, base64=encoding == "base64")
