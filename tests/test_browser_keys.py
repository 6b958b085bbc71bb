"""The self-service key page in a real Chromium (Debian's `chromium`, driven by Playwright): log in, create a
key, read it off the page, use it with the openai SDK, revoke it on the page, and see the next call fail.

Playwright cannot download its own browser here, so it launches the system's /usr/bin/chromium; without it
the test is skipped. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.browser import chromium, log_in, needs_chromium
from tests.conftest import make_deployment, make_provider
from tests.personas import PASSWORD

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
HELLO = [{"role": "user", "content": "Say hello"}]

pytestmark = needs_chromium


@pytest.fixture
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def models(upstream, transactional_db):
    provider = make_provider(upstream)
    make_deployment(provider, public_name="test-model", upstream_model="m1")
    make_deployment(provider, public_name="gemma-3-12b", upstream_model="m2")


def test_alice_creates_uses_and_revokes_a_key_in_the_browser(portal, models, personas, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)

    log_in(page, portal.url, "alice", PASSWORD, console=False)

    page.click("#create-key")
    page.fill("#id_name", "browser key")
    page.check("input[name=models][value=test-model]")
    page.select_option("#id_expires_in", "30")
    page.click("#create-form button[type=submit]")
    page.wait_for_selector("#new-key")
    token = page.inner_text("#new-key").strip()
    assert token.startswith("sk-")
    page.click("#copy-key")
    # Playwright's own waiting (not wait_for_function, which needs eval and the page's CSP forbids it).
    from playwright.sync_api import expect

    expect(page.locator("#copy-state")).not_to_have_text("", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "key-page.png"), full_page=True)

    client = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=token, max_retries=0, timeout=30)
    assert client.chat.completions.create(model="test-model", messages=HELLO).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gemma-3-12b", messages=HELLO)

    # Reloading the page does not show the key again.
    page.reload()
    assert page.locator("#new-key").count() == 0

    page.click("#revoke-key")
    page.wait_for_url(f"{portal.url}/keys/")
    assert "is revoked" in page.inner_text(".messages")
    assert page.inner_text("#keys .status") == "revoked"

    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="test-model", messages=HELLO)
    assert caught.value.code == "invalid_api_key"

    # A phone-sized screen gets the same page, readable without sideways scrolling.
    phone = browser.new_context(viewport={"width": 375, "height": 740}, storage_state=context.storage_state())
    small = phone.new_page()
    small.goto(f"{portal.url}/keys/")
    assert small.evaluate("document.documentElement.scrollWidth") <= 375
    small.screenshot(path=str(ARTIFACTS / "key-list-phone.png"), full_page=True)
    phone.close()
    context.close()
