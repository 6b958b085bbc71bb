"""Bad input on /v1 gets a clear OpenAI-style envelope with the right status, never HTML."""

from __future__ import annotations

import httpx
import openai
import pytest


@pytest.fixture
def post(portal, master_key, deployment):
    def post(body: bytes | dict, path: str = "/v1/chat/completions", **headers: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {master_key}", **headers}
        if isinstance(body, dict):
            return httpx.post(portal.url + path, json=body, headers=headers)
        return httpx.post(portal.url + path, content=body, headers={"Content-Type": "application/json", **headers})

    return post


def assert_envelope(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    return error


def test_invalid_json_is_a_400(post):
    error = assert_envelope(post(b'{"model": "test-model", '), 400)
    assert error["code"] == "invalid_json"


def test_a_body_that_is_not_an_object_is_a_400(post):
    assert_envelope(post(b"[1, 2]"), 400)


def test_an_empty_body_is_a_400(post):
    assert_envelope(post(b""), 400)


def test_a_missing_model_names_the_field(post):
    error = assert_envelope(post({"messages": [{"role": "user", "content": "x"}]}), 400)
    assert error["param"] == "model"
    assert "'model'" in error["message"]


def test_missing_messages_names_the_field(post):
    error = assert_envelope(post({"model": "test-model"}), 400)
    assert error["param"] == "messages"


@pytest.mark.parametrize(
    "field, value, param",
    [
        ("messages", "hello", "messages"),
        ("messages", [], "messages"),
        ("messages", ["hello"], "messages[0]"),
        ("messages", [{"content": "x"}], "messages[0].role"),
        ("messages", [{"role": "user", "content": 5}], "messages[0].content"),
        ("stream", "yes", "stream"),
        ("max_tokens", "ten", "max_tokens"),
        ("max_tokens", -1, "max_tokens"),
        ("max_tokens", True, "max_tokens"),
        ("temperature", "hot", "temperature"),
        ("temperature", 7, "temperature"),
        ("model", 42, "model"),
        ("stream_options", [], "stream_options"),
    ],
)
def test_a_wrong_typed_field_is_a_400_naming_it(post, field, value, param):
    body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}], field: value}
    error = assert_envelope(post(body), 400)
    assert error["param"] == param


def test_the_sdk_raises_bad_request_for_invalid_fields(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}],
                                       temperature=9)
    assert e.value.param == "temperature"


def test_a_body_over_the_limit_is_a_413(post, settings):
    settings.MAX_REQUEST_BODY_BYTES = 1000
    big = {"model": "test-model", "messages": [{"role": "user", "content": "x" * 5000}]}
    error = assert_envelope(post(big), 413)
    assert error["code"] == "request_too_large"


def test_a_wrong_method_is_a_405(portal, master_key, deployment):
    response = httpx.get(f"{portal.url}/v1/chat/completions", headers={"Authorization": f"Bearer {master_key}"})
    assert_envelope(response, 405)
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/chat/completion", "/v1", "/v1/models/x/y/z"])
def test_an_unknown_v1_route_is_a_json_404(portal, master_key, path):
    response = httpx.get(portal.url + path, headers={"Authorization": f"Bearer {master_key}"})
    assert_envelope(response, 404)


def test_errors_never_echo_the_callers_key(post):
    response = post({"model": "test-model"}, Authorization="Bearer sk-this-is-a-wrong-secret-key")
    assert response.status_code == 401
    assert "sk-this-is-a-wrong-secret-key" not in response.text


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/modelsXYZ", 404),
    ("GET", "/v1/models/x%0d%0aX", 404),
    ("GET", "/v1/nope", 404),
    ("DELETE", "/v1/chat/completions", 405),
    ("GET", "/chat/completionsXYZ", 404),
])
def test_an_error_from_any_layer_is_the_envelope_with_a_request_id(portal, master_key, method, path, status):
    response = httpx.request(method, portal.url + path, headers={"Authorization": f"Bearer {master_key}"})

    assert_envelope(response, status)
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/admin/nope/", "/keys/nope", "/api/nope", "/nope", "/admin/login/"])
def test_the_pages_answer_with_a_request_id_too(portal, path):
    assert httpx.get(portal.url + path).headers["x-request-id"]
