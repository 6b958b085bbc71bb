"""The admin page "Connect GitHub Copilot", driven end to end against the mock GitHub.

Olivia is the operator (superuser); Bob is staff without rights on providers; Charlie is not staff.
"""

from __future__ import annotations

import httpx
import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client

from gateway import clock, crypto
from gateway.models import CopilotAuth, Provider
from gateway.upstreams import copilot
from tests.conftest import free_port
from tests.mock_github import CLIENT_ID, FREE_SEAT


@pytest.fixture
def provider(db):
    return Provider.objects.create(name="copilot", kind="github_copilot")


@pytest.fixture
def operator(db):
    olivia = User.objects.create_superuser("olivia", "olivia@example.com", None)
    client = Client()
    client.force_login(olivia)
    return client


def page_url(provider):
    return f"/admin/gateway/provider/{provider.pk}/copilot/"


def poll_url(provider):
    return f"/admin/gateway/provider/{provider.pk}/copilot/poll/"


def start(operator, provider):
    response = operator.post(page_url(provider), {"action": "start"}, follow=True)
    assert response.status_code == 200
    return response.content.decode()


def poll(operator, provider):
    response = operator.post(poll_url(provider))
    assert response.status_code == 200
    return response.json()


def test_it_shows_the_user_code_and_the_verification_link(operator, provider, github):
    page = start(operator, provider)

    (user_code,) = github.device_codes.values()
    assert user_code in page
    assert 'href="https://github.com/login/device"' in page
    assert poll_url(provider) in page  # the page's script polls here
    (request,) = github.calls("/login/device/code")
    assert request.json == {"client_id": CLIENT_ID, "scope": "read:user"}
    assert request.headers["accept"] == "application/json"


def test_it_uses_the_client_id_litellm_uses_for_copilot(settings):
    from litellm.llms.github_copilot.authenticator import DEFAULT_GITHUB_CLIENT_ID

    assert settings.GITHUB_COPILOT_CLIENT_ID == DEFAULT_GITHUB_CLIENT_ID == CLIENT_ID


def test_polling_is_pending_until_the_user_enters_the_code_then_connects(operator, provider, github):
    github.poll_script = ["authorization_pending", "authorization_pending"]
    start(operator, provider)
    (device_code,) = github.device_codes

    assert poll(operator, provider)["status"] == "pending"
    assert poll(operator, provider)["status"] == "pending"
    assert not CopilotAuth.objects.get(provider=provider).connected
    assert poll(operator, provider) == {
        "status": "connected", "message": "Connected to GitHub Copilot.", "interval": 0,
    }

    polls = github.calls("/login/oauth/access_token")
    assert len(polls) == 3
    assert polls[0].json == {
        "client_id": CLIENT_ID,
        "device_code": device_code,
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
    }
    auth = CopilotAuth.objects.get(provider=provider)
    assert auth.connected and auth.source == "device_flow"
    assert not auth.flow_active and auth.user_code == ""
    page = operator.get(page_url(provider)).content.decode()
    assert "Connected" in page and "octo-operator" in page


def test_the_github_token_is_stored_encrypted(operator, provider, github):
    start(operator, provider)
    poll(operator, provider)

    (github_token,) = github.github_tokens
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM gateway_copilotauth WHERE provider_id = %s", [provider.pk])
        row = cursor.fetchone()
        cursor.execute("SELECT github_token_encrypted FROM gateway_copilotauth WHERE provider_id = %s", [provider.pk])
        (stored,) = cursor.fetchone()
    assert github_token not in repr(row)
    assert github_token[4:12] not in repr(row)
    assert crypto.decrypt(stored) == github_token
    page = operator.get(page_url(provider)).content.decode()
    assert github_token not in page


def test_it_does_not_ask_github_again_before_the_interval_github_asked_for(operator, provider, github):
    github.interval = 5
    start(operator, provider)

    assert poll(operator, provider)["status"] == "pending"
    assert github.calls("/login/oauth/access_token") == []

    clock.advance(5)
    assert poll(operator, provider)["status"] == "connected"
    assert len(github.calls("/login/oauth/access_token")) == 1


def test_slow_down_makes_it_wait_longer(operator, provider, github):
    github.poll_script = ["slow_down"]
    start(operator, provider)

    answer = poll(operator, provider)
    assert answer["status"] == "pending" and answer["interval"] == 5
    assert poll(operator, provider)["status"] == "pending"
    assert len(github.calls("/login/oauth/access_token")) == 1  # the second poll did not reach GitHub

    clock.advance(5)
    assert poll(operator, provider)["status"] == "connected"


def test_an_expired_code_asks_to_start_again(operator, provider, github):
    github.poll_script = ["expired_token"]
    start(operator, provider)

    answer = poll(operator, provider)
    assert answer["status"] == "expired" and "Start again" in answer["message"]
    assert not CopilotAuth.objects.get(provider=provider).flow_active
    assert poll(operator, provider)["status"] == "idle"


def test_a_code_past_its_lifetime_expires_without_asking_github(operator, provider, github):
    github.expires_in = 60
    start(operator, provider)

    clock.advance(61)
    assert poll(operator, provider)["status"] == "expired"
    assert github.calls("/login/oauth/access_token") == []


def test_a_login_cancelled_on_github_is_reported(operator, provider, github):
    github.poll_script = ["access_denied"]
    start(operator, provider)

    answer = poll(operator, provider)
    assert answer["status"] == "denied" and "cancelled" in answer["message"]
    assert not CopilotAuth.objects.get(provider=provider).connected


def test_the_page_works_without_javascript(operator, provider, github):
    github.poll_script = ["authorization_pending"]
    start(operator, provider)

    page = operator.post(page_url(provider), {"action": "poll"}, follow=True).content.decode()
    assert "Waiting for you to enter the code" in page
    page = operator.post(page_url(provider), {"action": "poll"}, follow=True).content.decode()
    assert "Connected to GitHub Copilot." in page


def test_it_shows_the_seat_and_the_remaining_premium_requests(operator, provider, github):
    start(operator, provider)
    poll(operator, provider)

    page = operator.get(page_url(provider)).content.decode()
    assert "individual" in page and "plus_monthly_subscriber_quota" in page
    assert "Premium requests" in page and "262 of 300 left (87%)" in page
    assert "Chat</th><td>unlimited" in page
    assert "2025-12-01" in page
    assert github.calls("/copilot_internal/user")[0].headers["authorization"].startswith("token ghu_")


def test_it_shows_the_free_plans_monthly_allowance(operator, provider, github):
    github.seat = dict(FREE_SEAT)
    start(operator, provider)
    poll(operator, provider)

    page = operator.get(page_url(provider)).content.decode()
    assert "free" in page
    assert "37 of 50 left this month" in page
    assert "2025-12-05" in page


def test_a_revoked_login_shows_on_the_page(operator, provider, github):
    start(operator, provider)
    poll(operator, provider)
    github.revoke_all()

    page = operator.post(page_url(provider), {"action": "refresh"}, follow=True).content.decode()
    assert "GitHub rejected the stored login" in page
    assert CopilotAuth.objects.get(provider=provider).revoked_at is not None


def test_disconnect_forgets_the_login(operator, provider, github):
    start(operator, provider)
    poll(operator, provider)

    page = operator.post(page_url(provider), {"action": "disconnect"}, follow=True).content.decode()
    assert "Disconnected" in page and "Not connected." in page
    auth = CopilotAuth.objects.get(provider=provider)
    assert auth.github_token_encrypted == "" and not auth.connected


def test_an_existing_litellm_token_dir_is_imported_when_nothing_is_stored(operator, provider, github, settings):
    token = github.issue_github_token()
    settings.GITHUB_COPILOT_TOKEN_DIR.mkdir(parents=True)
    (settings.GITHUB_COPILOT_TOKEN_DIR / "access-token").write_text(token + "\n")

    page = operator.get(page_url(provider)).content.decode()

    assert "imported from the LiteLLM token dir" in page and "octo-operator" in page
    auth = CopilotAuth.objects.get(provider=provider)
    assert auth.source == "token_dir" and auth.github_token() == token
    assert token not in auth.github_token_encrypted


def test_a_token_dir_is_not_imported_again_after_a_disconnect(operator, provider, github, settings):
    settings.GITHUB_COPILOT_TOKEN_DIR.mkdir(parents=True)
    (settings.GITHUB_COPILOT_TOKEN_DIR / "access-token").write_text(github.issue_github_token())
    operator.get(page_url(provider))

    operator.post(page_url(provider), {"action": "disconnect"})
    page = operator.get(page_url(provider)).content.decode()

    assert "Not connected." in page


def test_github_being_unreachable_is_reported(operator, provider, github, settings):
    settings.GITHUB_COPILOT_GITHUB_URL = f"http://127.0.0.1:{free_port()}"

    page = start(operator, provider)

    assert "could not reach GitHub" in page
    assert not CopilotAuth.objects.get(provider=provider).flow_active


def test_it_is_linked_from_a_copilot_providers_admin_page(operator, provider, github):
    other = Provider.objects.create(name="router", kind="openrouter")

    assert page_url(provider) in operator.get(f"/admin/gateway/provider/{provider.pk}/change/").content.decode()
    assert "/copilot/" not in operator.get(f"/admin/gateway/provider/{other.pk}/change/").content.decode()
    assert operator.get(page_url(other)).status_code == 404


def test_only_staff_who_may_change_providers_can_connect(provider, github):
    bob = User.objects.create_user("bob", "bob@example.com", None, is_staff=True)
    charlie = User.objects.create_user("charlie", "charlie@example.com", None)
    anonymous, as_bob, as_charlie = Client(), Client(), Client()
    as_bob.force_login(bob)
    as_charlie.force_login(charlie)

    for client in (anonymous, as_charlie):
        response = client.post(page_url(provider), {"action": "start"})
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
        assert client.post(poll_url(provider)).status_code == 302
    assert as_bob.post(page_url(provider), {"action": "start"}).status_code == 403
    assert as_bob.post(poll_url(provider)).status_code == 403
    assert github.calls("/login/device/code") == []

    bob.user_permissions.add(Permission.objects.get(codename="change_provider"))
    as_bob.force_login(User.objects.get(pk=bob.pk))
    assert as_bob.get(page_url(provider)).status_code == 200


def test_the_poll_endpoint_needs_the_csrf_token(provider, github):
    olivia = User.objects.create_superuser("olivia", "olivia@example.com", None)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(olivia)

    assert browser.post(poll_url(provider)).status_code == 403
    assert browser.post(page_url(provider), {"action": "start"}).status_code == 403

    page = browser.get(page_url(provider))
    token = page.cookies["csrftoken"].value
    assert browser.post(poll_url(provider), HTTP_X_CSRFTOKEN=token).status_code == 200


def test_the_flow_runs_on_the_asgi_server_too(portal, github):
    """The same steps against the real server: sync admin views calling async GitHub code under ASGI."""
    provider = Provider.objects.create(name="copilot", kind="github_copilot")
    olivia = User.objects.create_superuser("olivia", "olivia@example.com", None)
    login = Client()
    login.force_login(olivia)
    github.poll_script = ["authorization_pending"]

    with httpx.Client(base_url=portal.url, cookies={"sessionid": login.cookies["sessionid"].value}) as browser:
        browser.get(page_url(provider))
        csrf = {"X-CSRFToken": browser.cookies["csrftoken"]}
        started = browser.post(page_url(provider), data={"action": "start"}, headers=csrf, follow_redirects=True)
        (user_code,) = github.device_codes.values()
        assert user_code in started.text
        assert browser.post(poll_url(provider), headers=csrf).json()["status"] == "pending"
        assert browser.post(poll_url(provider), headers=csrf).json()["status"] == "connected"
        assert "octo-operator" in browser.get(page_url(provider)).text
    copilot.forget_all()


def test_connecting_enables_a_provider_load_catalog_left_waiting_for_its_login(operator, github):
    waiting = Provider.objects.create(name="copilot", kind="github_copilot", enabled=False, awaiting_credential=True)
    switched_off = Provider.objects.create(name="copilot-2", kind="github_copilot", enabled=False)

    for provider in (waiting, switched_off):
        start(operator, provider)
        assert poll(operator, provider)["status"] == "connected"

    waiting.refresh_from_db()
    switched_off.refresh_from_db()
    assert (waiting.enabled, waiting.awaiting_credential) == (True, False)
    assert switched_off.enabled is False  # an operator's choice stays
