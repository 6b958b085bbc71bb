"""/v1 calls to GitHub Copilot deployments, through the openai SDK, against the mock GitHub + Copilot API."""

from __future__ import annotations

import openai
import pytest
from django.core.cache import cache

from gateway import clock
from gateway.models import CopilotAuth, Provider
from gateway.upstreams import copilot
from tests.conftest import make_deployment

SYSTEM = {"role": "system", "content": "You are terse. Answer in one line."}
USER = {"role": "user", "content": "Say hello"}
MODEL = "copilot/gpt-4.1"


def connect(github, provider):
    """The state after an operator connected the provider on the admin page."""
    CopilotAuth.for_provider(provider).connect(github.issue_github_token(), source="device_flow")


@pytest.fixture(autouse=True)
def both_paths(upstream_path):
    """Every test runs over the passthrough and over LiteLLM: Copilot is served by either."""
    return upstream_path


@pytest.fixture
def provider(portal):
    return Provider.objects.create(name="copilot", kind="github_copilot")


@pytest.fixture
def deployment(provider):
    return make_deployment(provider, public_name=MODEL, upstream_model="gpt-4.1", model_info={"supports_vision": True})


@pytest.fixture
def connected(github, provider, deployment):
    connect(github, provider)
    return deployment


def chat_calls(github):
    return github.calls("/chat/completions")


def exchanges(github):
    return github.calls("/copilot_internal/v2/token")


def test_a_chat_call_reaches_copilot_with_the_copilot_token_and_the_editor_headers(client, github, connected):
    result = client.chat.completions.create(model=MODEL, messages=[SYSTEM, USER])

    assert result.choices[0].message.content == "Hello from Copilot"
    (exchange,) = exchanges(github)
    (github_token,) = github.github_tokens
    assert exchange.headers["authorization"] == f"token {github_token}"
    (sent,) = chat_calls(github)
    (copilot_token,) = github.copilot_tokens
    assert sent.headers["authorization"] == f"Bearer {copilot_token}"
    assert sent.headers["editor-version"] == copilot.EDITOR_VERSION
    assert sent.headers["editor-plugin-version"] == copilot.EDITOR_PLUGIN_VERSION
    assert sent.headers["copilot-integration-id"] == "vscode-chat"
    assert sent.headers["user-agent"] == copilot.USER_AGENT
    assert sent.headers["x-initiator"] == "user"
    assert sent.json["model"] == "gpt-4.1"


def test_system_messages_stay_system_messages(client, github, connected):
    client.chat.completions.create(model=MODEL, messages=[SYSTEM, USER])

    (sent,) = chat_calls(github)
    assert [m["role"] for m in sent.json["messages"]] == ["system", "user"]
    assert sent.json["messages"][0]["content"] == SYSTEM["content"]


def test_it_streams(client, github, connected):
    stream = client.chat.completions.create(model=MODEL, messages=[USER], stream=True)

    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello from Copilot"
    assert chat_calls(github)[0].json["stream"] is True


def test_images_and_follow_ups_carry_copilots_hints(client, github, connected):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]},
        {"role": "assistant", "content": "A pixel."},
        {"role": "user", "content": "Sure?"},
    ]
    client.chat.completions.create(model=MODEL, messages=messages)

    (sent,) = chat_calls(github)
    assert sent.headers["copilot-vision-request"] == "true"
    assert sent.headers["x-initiator"] == "agent"


def test_the_copilot_token_is_fetched_once_and_reused(client, github, connected):
    for _ in range(3):
        client.chat.completions.create(model=MODEL, messages=[USER])

    assert len(exchanges(github)) == 1
    assert len({call.headers["authorization"] for call in chat_calls(github)}) == 1


def test_a_token_about_to_expire_is_replaced(client, github, connected):
    client.chat.completions.create(model=MODEL, messages=[USER])

    clock.advance(github.token_ttl - copilot.REFRESH_MARGIN + 1)
    client.chat.completions.create(model=MODEL, messages=[USER])

    assert len(exchanges(github)) == 2
    first, second = (call.headers["authorization"] for call in chat_calls(github))
    assert first != second


def test_another_worker_or_a_restart_uses_the_token_in_the_database(client, github, connected):
    client.chat.completions.create(model=MODEL, messages=[USER])

    copilot.forget_all()  # a fresh process: nothing in memory
    cache.clear()  # nor in the shared cache
    client.chat.completions.create(model=MODEL, messages=[USER])

    assert len(exchanges(github)) == 1
    auth = CopilotAuth.objects.get(provider=connected.provider)
    (copilot_token,) = github.copilot_tokens
    assert copilot_token not in auth.copilot_token_encrypted
    assert auth.copilot_api_base == github.url


def test_a_revoked_login_gives_a_clear_401_telling_the_operator_to_reconnect(client, github, connected):
    github.revoke_all()

    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=MODEL, messages=[USER])

    error = caught.value.body
    assert caught.value.status_code == 401
    assert error["code"] == "copilot_reconnect_required"
    assert "reconnect" in error["message"] and "Connect GitHub Copilot" in error["message"]
    assert CopilotAuth.objects.get(provider=connected.provider).revoked_at is not None
    # Known revoked: later calls fail the same way without asking GitHub again.
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=[USER])
    assert len(exchanges(github)) == 1
    assert chat_calls(github) == []


def test_a_provider_never_connected_gives_a_503_telling_the_operator_to_connect(client, github, deployment):
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=[USER])

    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "copilot_not_connected"
    assert "Connect GitHub Copilot" in caught.value.body["message"]
    # A /v1 request never starts a device flow: that needs a human at the admin page.
    assert github.requests == []


def test_once_connected_the_provider_answers_within_seconds_on_every_worker(client, github, deployment):
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=[USER])

    connect(github, deployment.provider)  # as the admin page does, maybe in another worker
    clock.advance(copilot.UNUSABLE_SECONDS)
    result = client.chat.completions.create(model=MODEL, messages=[USER])

    assert result.choices[0].message.content == "Hello from Copilot"


def test_an_unconnected_provider_is_not_looked_up_again_on_every_request(client, github, deployment, settings):
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=[USER])
    # A token dir appears; a lookup would adopt it, but for a few seconds the answer is remembered.
    settings.GITHUB_COPILOT_TOKEN_DIR.mkdir(parents=True)
    (settings.GITHUB_COPILOT_TOKEN_DIR / "access-token").write_text(github.issue_github_token())

    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=[USER])

    assert caught.value.body["code"] == "copilot_not_connected"
    assert not CopilotAuth.objects.filter(provider=deployment.provider).exists()


def test_an_account_without_copilot_gives_a_503(client, github, connected):
    github.token_status = 403

    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=[USER])

    assert caught.value.status_code == 503
    assert "no Copilot access" in caught.value.body["message"]


def test_a_copilot_token_copilot_rejects_is_replaced_and_the_call_made_again(client, github, connected):
    client.chat.completions.create(model=MODEL, messages=[USER])
    github.expire_copilot_tokens()  # Copilot answers 401 "unauthorized: token expired" to the token we hold

    result = client.chat.completions.create(model=MODEL, messages=[USER])

    assert result.choices[0].message.content == "Hello from Copilot"
    assert len(exchanges(github)) == 2
    assert [call.headers["authorization"] == chat_calls(github)[0].headers["authorization"]
            for call in chat_calls(github)] == [True, True, False]


def test_a_seat_that_refuses_fresh_tokens_too_gives_a_clear_401(client, github, connected):
    github.reject_all_copilot_tokens = True

    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=MODEL, messages=[USER], stream=True)

    assert caught.value.body["code"] == "copilot_token_rejected"
    assert "Copilot seat" in caught.value.body["message"]
    assert len(exchanges(github)) == 2  # tried once more with a fresh token, then gave up


def test_an_existing_litellm_token_dir_works_without_connecting(client, github, deployment, settings):
    settings.GITHUB_COPILOT_TOKEN_DIR.mkdir(parents=True)
    (settings.GITHUB_COPILOT_TOKEN_DIR / "access-token").write_text(github.issue_github_token())

    result = client.chat.completions.create(model=MODEL, messages=[USER])

    assert result.choices[0].message.content == "Hello from Copilot"
    assert CopilotAuth.objects.get(provider=deployment.provider).source == "token_dir"


def test_no_secret_reaches_the_client_in_an_error(client, github, connected):
    client.chat.completions.create(model=MODEL, messages=[USER])
    github.reject_all_copilot_tokens = True

    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=MODEL, messages=[USER])

    text = str(caught.value.body)
    (github_token,) = github.github_tokens
    assert github.copilot_tokens and github_token not in text
    for copilot_token in github.copilot_tokens:
        assert copilot_token not in text and copilot_token.split(";")[0] not in text
