"""No configured secret in any log line or response: provoked on purpose, then searched for.

The session-wide tap (tests/secret_guard.py) keeps every log record of the run; it fails the run at the end
if any holds a secret. Here the paths most likely to leak are driven on purpose, through both upstream paths
and with the portal's loggers at DEBUG: a provider whose errors echo the portal's credential, a stream whose
error event does, clients that paste keys into the wrong fields. Then the records and every response are
searched for the master key, SECRET_KEY, the provider's secret and the users' keys in full.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from tests.conftest import make_deployment, make_provider
from tests.mock_upstream import Behaviour
from tests.personas import issue
from tests.secret_guard import PROVIDER_TEST_SECRET, configured_secrets, leaks, mask, tap

HELLO = [{"role": "user", "content": "hi"}]
ECHO = f"Incorrect API key provided: {PROVIDER_TEST_SECRET}. Authorization: Bearer {PROVIDER_TEST_SECRET}"


@pytest.fixture
def debug_logs(caplog: Any) -> None:
    """The portal's own loggers at DEBUG, as LOG_LEVEL=DEBUG runs them in production."""
    for name in ("gateway", "accounts", "tracking", "portal"):
        caplog.set_level(logging.DEBUG, logger=name)


@pytest.fixture
def setup(portal: Any, upstream: Any, personas: Any, debug_logs: None) -> dict[str, Any]:
    provider = make_provider(upstream)
    make_deployment(provider, public_name="test-model")
    make_deployment(provider, public_name="embed-model", upstream_model="text-embedding-3-small",
                    model_info={"mode": "embedding"})
    _, alice = issue(personas.alice)
    return {"portal": portal, "upstream": upstream, "alice": alice}


class Seen:
    """The responses of a test, and the secrets none of them (nor any log line) may hold."""

    def __init__(self, *user_keys: str) -> None:
        self.responses: list[tuple[str, str]] = []
        self.user_keys = user_keys

    def secrets(self) -> dict[str, str]:
        return {**configured_secrets(), **{f"user key {n}": key for n, key in enumerate(self.user_keys)}}

    def take(self, what: str, response: httpx.Response) -> httpx.Response:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.responses.append((what, f"{headers}\n\n{response.text}"))
        return response

    def assert_clean(self) -> None:
        secrets = self.secrets()
        dirty = [(what, hits) for what, text in self.responses if (hits := leaks(text, secrets))]
        assert not dirty, f"secrets in responses: {dirty}"
        logged = [(hits, mask(line, secrets)[:300]) for line in tap.snapshot() if (hits := leaks(line, secrets))]
        assert not logged, f"secrets in log records: {logged[:5]}"


def post(portal: Any, path: str, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{portal.url}{path}", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", **headers})


@pytest.mark.usefixtures("upstream_path")
@pytest.mark.parametrize("status", [400, 401, 429, 500])
def test_a_provider_error_echoing_the_portals_key_never_reaches_the_client_or_the_log(setup, master_key, status):
    portal, upstream = setup["portal"], setup["upstream"]
    seen = Seen(setup["alice"])
    upstream.behaviour = Behaviour(status=status, error_body={"error": {"message": ECHO, "type": "x", "code": None}})
    for key in (master_key, setup["alice"]):
        response = seen.take("chat", post(portal, "/v1/chat/completions", key,
                                          {"model": "test-model", "messages": HELLO}))
        assert response.status_code >= 400
        seen.take("stream", post(portal, "/v1/chat/completions", key,
                                 {"model": "test-model", "messages": HELLO, "stream": True}))
        seen.take("messages", post(portal, "/v1/messages", key,
                                   {"model": "test-model", "max_tokens": 5, "messages": HELLO}))
    # Plain text, not JSON: the provider's whole body is what an error message would quote.
    upstream.behaviour = Behaviour(status=status, error_body=ECHO.encode())
    seen.take("text", post(portal, "/v1/chat/completions", master_key, {"model": "test-model", "messages": HELLO}))
    seen.take("embeddings", post(portal, "/v1/embeddings", master_key, {"model": "embed-model", "input": "x"}))
    seen.assert_clean()


@pytest.mark.usefixtures("upstream_path")
def test_an_error_event_echoing_the_portals_key_is_scrubbed(setup, master_key):
    portal, upstream = setup["portal"], setup["upstream"]
    seen = Seen(setup["alice"])
    upstream.behaviour = Behaviour(error_in_200={"message": ECHO, "type": "server_error"})
    for body in ({"model": "test-model", "messages": HELLO}, {"model": "test-model", "messages": HELLO,
                                                              "stream": True}):
        response = seen.take("200 with error", post(portal, "/v1/chat/completions", master_key, body))
        assert "error" in response.text
    seen.assert_clean()


def test_keys_pasted_into_the_wrong_place_are_not_echoed(setup, master_key):
    portal = setup["portal"]
    alice = setup["alice"]
    seen = Seen(alice)
    for key in (master_key, alice, PROVIDER_TEST_SECRET):
        # As the model name, in the wrong header, as a key of the wrong kind, in a field of the wrong type.
        seen.take("model", post(portal, "/v1/chat/completions", master_key, {"model": key, "messages": HELLO}))
        seen.take("model", post(portal, "/v1/messages", master_key,
                                {"model": key, "max_tokens": 5, "messages": HELLO}))
        seen.take("model", post(portal, "/v1/embeddings", master_key, {"model": key, "input": "x"}))
        seen.take("type", post(portal, "/v1/chat/completions", master_key,
                               {"model": "test-model", "messages": key}))
        seen.take("retrieve", httpx.get(f"{portal.url}/v1/models/{key}", timeout=30,
                                        headers={"Authorization": f"Bearer {master_key}"}))
        seen.take("response id", httpx.get(f"{portal.url}/v1/responses/{key}", timeout=30,
                                           headers={"Authorization": f"Bearer {master_key}"}))
        seen.take("not json", httpx.post(f"{portal.url}/v1/chat/completions", content=f'{{"model": {key}',
                                         headers={"Authorization": f"Bearer {master_key}"}, timeout=30))
        seen.take("near miss", httpx.get(f"{portal.url}/v1/models", timeout=30,
                                         headers={"Authorization": f"Bearer {key}x"}))
        seen.take("api", httpx.get(f"{portal.url}/api/keys/", timeout=30,
                                   headers={"Authorization": f"Bearer {key}x"}))
    for response in seen.responses:
        assert "Traceback" not in response[1]
    seen.assert_clean()


def test_the_management_api_never_returns_a_stored_secret(setup, master_key, personas):
    portal = setup["portal"]
    seen = Seen(setup["alice"])
    operator = {"Authorization": f"Bearer {master_key}"}
    created = seen.take("create", httpx.post(f"{portal.url}/api/keys/", headers=operator, timeout=30,
                                             json={"owner": "bob", "name": "ci"}))
    assert created.status_code == 201
    bob_key = created.json().pop("key")  # shown once, to the operator who created it, by design
    seen.responses.pop()
    seen.user_keys += (bob_key,)
    for path in ("/api/keys/", f"/api/keys/{created.json()['id']}/", "/api/users/", "/api/schema/"):
        response = seen.take(path, httpx.get(f"{portal.url}{path}", headers=operator, timeout=30))
        assert response.status_code == 200
        assert "secret_hash" not in response.text
    seen.assert_clean()


def test_the_guard_finds_a_leak(master_key):
    """A test that cannot fail is a defect: a record holding the master key is found (then forgotten, so the
    session's own check stays green)."""
    marker = "secret-guard-self-test"
    logging.getLogger("gateway.selftest").error("%s %s", marker, master_key)
    found = [hits for hits, line in tap.leaking() if marker in line]
    tap.drop(marker)
    assert found == [["MASTER_KEY"]]
    user_key = "sk-abcdefgh." + "Z" * 43
    logging.getLogger("gateway.selftest").warning("%s %s", marker, user_key)
    found = [hits for hits, line in tap.leaking() if marker in line]
    tap.drop(marker)
    assert found == [["a user API key"]]
    assert not [line for line in tap.snapshot() if marker in line]
