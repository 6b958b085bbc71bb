"""The playground and the spend views in a real Chromium (Debian's `chromium`, driven by Playwright), against
the real portal and the mock upstream: an operator chats with a model and sees the streamed answer, the
deployment that served it, its timings, tokens, cost and quota headers; then the spend on the dashboard, the
key's admin page and the user's own key page. Screenshots (1280x800) go to docs/screenshots/.
"""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from accounts.models import KeyPolicy
from tests.browser import SCREENSHOTS, VIEWPORT, chromium, log_in, needs_chromium
from tests.conftest import make_deployment, make_provider
from tests.mock_upstream import Behaviour
from tests.personas import PASSWORD, issue
from tracking import recorder
from tracking.models import UsageRecord
from tracking.templatetags.spend import usd

REPLY = "Bonjour! The playground streams this answer chunk by chunk from the mock upstream."

pytestmark = needs_chromium


@pytest.fixture
def browser(monkeypatch):
    from django.core.management import call_command

    # Playwright's sync API runs an event loop in this thread; the test's own ORM reads are still plain sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    call_command("collectstatic", interactive=False, verbosity=0)  # the playground's script, served from there
    with chromium() as browser:
        yield browser


@pytest.fixture
def models(upstream, transactional_db):
    provider = make_provider(upstream)
    paid = make_deployment(provider, public_name="openai/gpt-4.1-mini", upstream_model="m1", rpm=30, rpd=1000,
                           input_price_per_mtok=Decimal("0.4"), output_price_per_mtok=Decimal("1.6"))
    make_deployment(provider, public_name="github/gpt-4.1", upstream_model="gpt-4.1", rpm=10, billing="free")
    # Paced, so the answer really arrives in pieces.
    upstream.set_behaviour("m1", Behaviour(reply=REPLY, chunk_delay=0.05))
    return paid


def operator_page(browser, portal, personas):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(20_000)
    log_in(page, portal.url, personas.operator.username, PASSWORD)
    return page


def test_the_playground_streams_an_answer_with_its_deployment_timings_cost_and_quota(
        portal, upstream, models, personas, browser):
    from playwright.sync_api import expect

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = operator_page(browser, portal, personas)
    page.goto(f"{portal.url}/admin/gateway/deployment/playground/")
    page.select_option("#pg-model", "openai/gpt-4.1-mini")
    page.fill("#pg-system", "You are terse.")
    page.fill("#pg-temperature", "0.2")
    page.fill("#pg-max-tokens", "200")
    page.fill("#pg-prompt", "Say hello in French.")
    page.click("#pg-send")

    answer = page.locator(".pg-msg .text").last
    # The first chunks are on the page before the stream has ended (the Stop button still active).
    expect(answer).not_to_have_text("", timeout=15_000)
    assert page.locator("#pg-stop").is_enabled()
    expect(answer).to_have_text(REPLY, timeout=15_000)
    expect(page.locator("#pg-deployment a")).to_contain_text("openai/gpt-4.1-mini", timeout=15_000)

    record = UsageRecord.objects.get(model="openai/gpt-4.1-mini")
    assert record.tags == {"source": "playground", "operator": "operator"}
    assert record.key_id is None  # the master key: the operator's rights, never a user's key
    assert page.inner_text("#pg-status") == "200"
    assert page.inner_text("#pg-tokens") == f"{record.prompt_tokens} / {record.completion_tokens}"
    assert page.inner_text("#pg-cost") == usd(record.cost_usd) and record.cost_usd > 0
    assert page.inner_text("#pg-ttft").endswith(" ms") and page.inner_text("#pg-total").endswith(" ms")
    assert "x-ratelimit-remaining-requests" in page.inner_text("#pg-ratelimit")
    sent = upstream_body(upstream, "m1")
    assert sent["messages"][0] == {"role": "system", "content": "You are terse."}
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 200
    # The master key stays on the server.
    assert str(portal_master_key()) not in page.content()
    page.screenshot(path=str(SCREENSHOTS / "playground.png"))

    # A free-tier model: costs 0, and the page says what it would have cost.
    page.select_option("#pg-model", "github/gpt-4.1")
    page.fill("#pg-prompt", "And in German?")
    page.click("#pg-send")
    expect(page.locator("#pg-cost")).to_contain_text("free tier; list price $", timeout=15_000)
    assert page.inner_text("#pg-cost").startswith("$0.00")
    assert len(upstream_body(upstream, "gpt-4.1")["messages"]) == 4  # the conversation so far, plus the new turn
    page.screenshot(path=str(SCREENSHOTS / "playground-free-tier.png"))


def upstream_body(upstream, model: str) -> dict:
    """What the portal sent the mock upstream last for `model`."""
    return [r for r in upstream.requests_for() if r.model == model][-1].json


def portal_master_key() -> str:
    from django.conf import settings

    return str(settings.MASTER_KEY)


def test_the_spend_views_show_what_keys_and_users_spent(portal, models, personas, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # Alice's account has a budget all her keys share: the pages show what is left of it too.
    KeyPolicy.objects.update_or_create(user=personas.alice,
                                       defaults={"max_budget": Decimal("5"), "budget_duration": "day"})
    key, token = issue(personas.alice, "laptop")
    api = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=token, max_retries=0, timeout=30)
    for _ in range(3):
        api.chat.completions.create(model="openai/gpt-4.1-mini", messages=[{"role": "user", "content": "Hi"}])
    api.chat.completions.create(model="github/gpt-4.1", messages=[{"role": "user", "content": "Hi"}])
    recorder.flush()
    spent = usd(sum(r.cost_usd for r in UsageRecord.objects.all()))

    page = operator_page(browser, portal, personas)
    page.goto(f"{portal.url}/admin/tracking/usagerecord/dashboard/?days=7")
    assert page.inner_text("#spend-cost") == spent
    page.locator("#spend").scroll_into_view_if_needed()
    page.evaluate("document.getElementById('spend').scrollIntoView()")
    page.screenshot(path=str(SCREENSHOTS / "spend-dashboard.png"))
    assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"]

    page.goto(f"{portal.url}/admin/accounts/apikey/{key.pk}/change/")
    spend_cells = page.locator("#key-spend .spend-cost").all_inner_texts()
    assert spend_cells == [spent] * 4  # today, 7 days, 30 days, all time
    page.evaluate("document.getElementById('key-spend').scrollIntoView()")
    page.screenshot(path=str(SCREENSHOTS / "spend-key-admin.png"))

    page.goto(f"{portal.url}/admin/auth/user/{personas.alice.pk}/change/")
    budget_line = page.get_by_text("left of $5.00 per day")
    assert budget_line.is_visible()
    budget_line.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "user-budget-admin.png"))
    assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"]

    own = browser.new_context(viewport=VIEWPORT).new_page()
    log_in(own, portal.url, "alice", PASSWORD, console=False)
    assert own.locator("#my-spend .spend-cost").all_inner_texts() == [spent] * 4
    assert own.inner_text(f"#key-{key.pk} .spend").startswith(spent)
    assert "shared by all your keys: budget left: $" in own.inner_text("body")
    own.screenshot(path=str(SCREENSHOTS / "spend-self-service.png"))
