"""Images, speech and embeddings: the checks and conversions around the calls that are not plain chat.

Images: a data: URL travels inline; an http(s) URL is passed on, and either the provider fetches it
(OpenAI-style providers) or LiteLLM downloads and inlines it (Gemini). LiteLLM's download is async and
guarded (it resolves the name once, refuses private, loopback and link-local addresses and connects to
the address it checked); before that, URLs that name such an address outright are refused here with a
400 that says why, so nothing is ever fetched from inside the portal's network.
"""

from __future__ import annotations

import io
import ipaddress
import re
import socket
import wave
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.catalog import Route
from gateway.errors import GatewayError, bad_request
from gateway.models import ProviderKind

# --- Images ---------------------------------------------------------------------------------------

_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)
_IPV4_SHORTHAND = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


@dataclass(frozen=True)
class Image:
    url: str


def iter_images(messages: list[Any]) -> Iterator[tuple[str, Any]]:
    """(where, image_url value) for every image part of every message."""
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                yield f"messages[{i}].content[{j}].image_url", part.get("image_url")


def parse_image(value: Any, where: str) -> Image:
    """Check one image_url value ({"url": ...} or a bare string) and return it; a 400 names what is wrong."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise bad_request(f"Missing required parameter: '{where}.url'.", param=f"{where}.url",
                          code="missing_required_parameter")
    if url[:5].lower() == "data:":
        if not _DATA_URL.match(url):
            raise bad_request(f"Invalid '{where}.url': a data URL must look like data:image/png;base64,<data>.",
                              param=f"{where}.url", code="invalid_image_url")
        return Image(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        raise bad_request(f"Invalid '{where}.url': not a valid URL.", param=f"{where}.url",
                          code="invalid_image_url") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise bad_request(
            f"Invalid '{where}.url': send an https URL or a data: URL (base64), not '{parts.scheme}:'.",
            param=f"{where}.url",
            code="invalid_image_url",
        )
    if not host:
        raise bad_request(f"Invalid '{where}.url': the URL has no host.", param=f"{where}.url",
                          code="invalid_image_url")
    if is_internal_host(host):
        raise bad_request(
            f"Invalid '{where}.url': images are not fetched from local, private or link-local addresses "
            f"({host}). Send the image inline as a data: URL instead.",
            param=f"{where}.url",
            code="invalid_image_url",
        )
    return Image(url)


def is_internal_host(host: str) -> bool:
    """localhost names, and IP literals (in any spelling a resolver accepts) that are not globally routable.

    Names are not resolved here (that would block the event loop, and the answer could change before
    the fetch): LiteLLM's fetcher resolves and checks them itself where it downloads (Gemini), and the
    OpenAI-style providers fetch from their own networks.
    """
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if not _IPV4_SHORTHAND.match(host):
            return False
        try:
            # 127.1, 2130706433, 0x7f.0.0.1: spellings inet_aton (and so most HTTP clients) accept.
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def routes_for_images(routes: tuple[Route, ...], images: tuple[Image, ...], model: str) -> tuple[Route, ...]:
    """The deployments that can see images (all of them when there are none); a 400 when none can."""
    if not images:
        return routes
    seeing = tuple(r for r in routes if r.supports_vision is not False)
    if not seeing:
        raise GatewayError(
            400,
            f"The model '{model}' does not accept images (no vision support). Send text only, or use a model "
            "that supports vision.",
            param="messages",
            code="model_not_vision_capable",
        )
    return seeing


# --- Speech ---------------------------------------------------------------------------------------

# response_format -> content type, for what Gemini TTS gives (24 kHz signed 16-bit mono PCM).
SPEECH_CONTENT_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm"}
SAMPLE_RATE = 24000


def wav(pcm: bytes, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Wrap raw signed 16-bit little-endian mono PCM (Gemini's audio/L16) in a WAV container."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return out.getvalue()


def speech_routes(routes: tuple[Route, ...], model: str, response_format: str) -> tuple[Route, ...]:
    """The deployments that can say it in this format: Gemini text-to-speech models, wav or pcm."""
    speaking = tuple(r for r in routes if r.kind == ProviderKind.GEMINI and r.mode in ("", "audio_speech"))
    if not speaking:
        raise bad_request(
            f"The model '{model}' is not a text-to-speech model. Use one whose mode is audio_speech "
            "(e.g. google/gemini-2.5-flash-tts).",
            param="model",
            code="model_not_tts_capable",
        )
    if response_format not in SPEECH_CONTENT_TYPES:
        raise bad_request(
            f"response_format '{response_format}' is not supported by '{model}': Gemini text-to-speech produces "
            f"raw 24 kHz PCM, served as {' or '.join(SPEECH_CONTENT_TYPES)}.",
            param="response_format",
            code="unsupported_response_format",
        )
    return speaking


# model_info.mode -> (what to call it, the endpoint that serves it)
_MODES = {
    "audio_speech": ("text-to-speech", "/v1/audio/speech"),
    "embedding": ("embedding", "/v1/embeddings"),
    "chat": ("chat", "/v1/chat/completions"),
}


def refuse_other_modes(routes: tuple[Route, ...], model: str, endpoint: str, allowed: tuple[str, ...]) -> None:
    """A 400 when every deployment of the model is declared for another endpoint (e.g. a TTS model on chat)."""
    if routes and all(r.mode and r.mode not in allowed for r in routes):
        label, use = _MODES.get(routes[0].mode, (routes[0].mode, "another endpoint"))
        raise bad_request(
            f"The model '{model}' is a {label} model; it cannot serve {endpoint}. Use {use}.",
            param="model",
            code="wrong_model_mode",
        )


# --- Calls the router can retry -------------------------------------------------------------------


class Operation:
    """A non-chat call (speech, embeddings) presented as the router's `complete`, so it gets the same
    quota checks, fallback and retries as chat completions."""

    def __init__(self, call: Callable[[Route, dict[str, Any]], Awaitable[dict[str, Any]]]) -> None:
        self._call = call

    async def complete(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(route, body)

    def stream(self, route: Route, body: dict[str, Any]) -> Any:
        raise NotImplementedError("only chat completions stream")
