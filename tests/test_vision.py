"""Images in chat messages: they reach vision models, are refused by the others, and are never fetched by us."""

from __future__ import annotations

import base64
import ipaddress
import socket

import openai
import pytest

from gateway.errors import GatewayError
from gateway.upstreams.media import is_internal_host, parse_image
from tests.catalog_setup import CREDENTIALS, load_builtin_catalog
from tests.mock_gemini import proto_field

# A real 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def with_image(url: str, text: str = "What is in this picture?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


@pytest.fixture
def builtin(portal, gemini, upstream, monkeypatch, tmp_path):
    """Gemini on its mock, LM Studio on the OpenAI mock."""
    load_builtin_catalog(
        monkeypatch,
        tmp_path,
        env={"GEMINI_API_KEY": CREDENTIALS["GEMINI_API_KEY"], "LM_STUDIO_API_BASE": upstream.base_url},
        bases={"gemini": gemini.base_url},
    )


def test_a_data_image_reaches_gemini_as_inline_data(client, gemini, builtin):
    client.chat.completions.create(model="google/gemini-2.5-flash", messages=with_image(PNG_URL))

    parts = gemini.requests[-1].json["contents"][0]["parts"]
    assert parts[0] == {"text": "What is in this picture?"}
    inline = proto_field(parts[1], "inlineData")
    assert proto_field(inline, "mimeType") == "image/png"
    assert base64.b64decode(inline["data"]) == PNG


def test_a_name_that_resolves_inside_our_network_is_not_fetched_for_gemini(client, gemini, upstream, builtin):
    # For Gemini, LiteLLM downloads image URLs itself; its guard resolves the name and refuses internal
    # addresses. This machine's own host name resolves to a loopback or private address (/etc/hosts, Docker).
    host = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    if any(ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses):
        pytest.skip(f"{host} resolves to a public address here")
    url = f"http://{host}:{upstream.port}/cat.png"

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="google/gemini-2.5-flash", messages=with_image(url))

    assert "Unable to fetch image" in caught.value.message
    assert upstream.requests == []  # the "image server" never saw a request
    assert gemini.requests == []


def test_a_data_image_reaches_an_openai_compatible_vision_model_unchanged(client, upstream, builtin):
    client.chat.completions.create(model="qwen3-vl-4b", messages=with_image(PNG_URL))

    sent = upstream.requests_for("/chat/completions")[-1]
    assert sent.json["model"] == "qwen/qwen3-vl-4b"
    assert sent.json["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": PNG_URL}}


def test_a_model_without_vision_refuses_images_with_a_400_that_says_so(client, upstream, builtin):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gemma-3-1b", messages=with_image(PNG_URL))
    assert caught.value.code == "model_not_vision_capable"
    assert "does not accept images" in caught.value.message
    assert upstream.requests == []


def test_the_same_model_without_images_still_works(client, upstream, builtin):
    result = client.chat.completions.create(model="gemma-3-1b", messages=[{"role": "user", "content": "hi"}])
    assert result.choices[0].message.content == "Hello from mock"


def test_images_go_only_to_the_deployments_that_see(client, gemini, upstream, builtin):
    from gateway.models import Deployment, Provider

    # A text-only deployment first in line for the name, a vision one behind it.
    Deployment.objects.create(public_name="google/gemini-2.5-flash", provider=Provider.objects.get(name="lm_studio"),
                              upstream_model="text-only", priority=-1, model_info={"supports_vision": False})

    client.chat.completions.create(model="google/gemini-2.5-flash", messages=with_image(PNG_URL))
    assert upstream.requests == []
    assert gemini.requests[-1].path.endswith("/gemini-2.5-flash:generateContent")

    client.chat.completions.create(model="google/gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}])
    assert upstream.requests[-1].json["model"] == "text-only"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/cat.png",
        "http://169.254.169.254/latest/meta-data/iam/",
    ],
)
def test_image_urls_on_local_or_private_addresses_are_refused(client, upstream, builtin, url):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="qwen3-vl-8b", messages=with_image(url))
    assert caught.value.code == "invalid_image_url"
    assert caught.value.param == "messages[0].content[1].image_url.url"
    assert upstream.requests == []


def test_a_public_address_is_passed_on_to_an_openai_compatible_provider(client, upstream, builtin):
    url = "http://93.184.215.14/cat.png"
    client.chat.completions.create(model="qwen3-vl-8b", messages=with_image(url))
    assert upstream.requests[-1].json["messages"][0]["content"][1]["image_url"]["url"] == url


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd", "ftp://example.com/cat.png", "data:text/html;base64,PGI+", "data:image/png,rawbytes",
        "https:///cat.png", "https://localhost:8443/cat.png", "http://[::ffff:127.0.0.1]/cat.png",
        "http://2130706433/cat.png", "gs://bucket/cat.png", "http://[::1/cat.png",
    ],
)
def test_only_public_http_urls_and_base64_image_data_urls_are_accepted(url):
    with pytest.raises(GatewayError) as caught:
        parse_image({"url": url}, "messages[0].content[1].image_url")
    assert (caught.value.status, caught.value.code) == (400, "invalid_image_url")


@pytest.mark.parametrize("url", [PNG_URL, "https://images.example.com/cat.png", "http://93.184.215.14/x"])
def test_public_urls_and_image_data_urls_are_accepted(url):
    assert parse_image({"url": url, "detail": "low"}, "x").url == url
    assert parse_image(url, "x").url == url  # the bare-string form some clients send


def test_an_image_part_without_url_names_the_field(client, upstream, builtin):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="qwen3-vl-8b", messages=messages)
    assert caught.value.param == "messages[0].content[0].image_url.url"


@pytest.mark.parametrize(
    ("host", "internal"),
    [
        ("localhost", True), ("LOCALHOST.", True), ("metadata.localhost", True), ("10.1.2.3", True),
        ("192.168.1.20", True), ("0.0.0.0", True), ("0x7f.1", True), ("127.0.0.53", True), ("::1", True),
        ("fe80::1%eth0", True),
        ("fd00::1", True), ("100.64.0.1", True), ("172.16.5.4", True), ("127.1", True), ("0177.0.0.1", True),
        ("example.com", False), ("8.8.8.8", False), ("2606:4700:4700::1111", False), ("1password.com", False),
    ],
)
def test_internal_hosts_are_recognised_in_any_spelling(host, internal):
    assert is_internal_host(host) is internal
