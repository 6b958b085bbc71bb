"""The operator's console in a real Chromium (Debian's `chromium`, driven by Playwright), as a reviewer would
see it at 1280x800: log in, every changelist fits the window, the quota board shows an exhausted RPM at 100%
and a deployment parked by a provider's per-day 429, and refreshes by itself.

Every page visited is saved as docs/screenshots/<page>.png (1280 px wide, full page) so a reviewer can look
without running anything. Without /usr/bin/chromium the test is skipped.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from django.contrib import admin
from django.core.management import call_command
from django.urls import reverse

from accounts.models import ApiKey
from gateway.models import Provider
from tests.browser import SCREENSHOTS, VIEWPORT, chromium, needs_chromium
from tests.browser import log_in as browser_log_in  # this module's log_in is the operator's
from tests.conftest import make_deployment, make_provider
from tests.mock_gemini import PER_DAY_429
from tests.mock_upstream import Behaviour
from tests.personas import PASSWORD
from tracking import recorder
from tracking.models import UsageRecord

HELLO = [{"role": "user", "content": "Say hello"}]
pytestmark = needs_chromium


@pytest.fixture
def browser():
    with chromium() as browser:
        yield browser


def chat(portal: Any, token: str, model: str) -> httpx.Response:
    return httpx.post(f"{portal.url}/v1/chat/completions", json={"model": model, "messages": HELLO},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture
def busy_portal(portal, upstream, personas, master_key):
    """A portal after some traffic: an RPM used up, a deployment parked by a per-day 429, a provider that
    waits for its key, and keys and usage records to list."""
    call_command("collectstatic", interactive=False, verbosity=0)
    # The built-in catalog as on a first run: its providers wait for keys (none is set in tests), so the
    # lists hold real model names and the banner has work to do.
    call_command("load_catalog", verbosity=0)
    mock = make_provider(upstream, reset_timezone="America/Los_Angeles")
    make_deployment(mock, public_name="rpm-model", upstream_model="mock-rpm", rpm=3, tpm=1_000_000, rpd=200)
    make_deployment(mock, public_name="daily-model", upstream_model="mock-daily", rpm=10, rpd=50)
    make_deployment(mock, public_name="fresh-model", upstream_model="mock-fresh", rpm=10)
    assert not Provider.objects.get(name="gemini").enabled
    _, alice_token = ApiKey.objects.issue(personas.alice, "alice-laptop")
    ApiKey.objects.issue(personas.bob, "bob-ci", allowed_models=["rpm-model", "daily-model", "fresh-model",
                                                                 "gemini-2.5-flash"])

    assert [chat(portal, alice_token, "rpm-model").status_code for _ in range(4)] == [200, 200, 200, 429]
    upstream.set_behaviour("mock-daily", Behaviour(status=429, error_body=PER_DAY_429))
    assert chat(portal, master_key, "daily-model").status_code == 429
    recorder.flush()
    assert UsageRecord.objects.filter(key_name="alice-laptop").count() == 4
    # Read here: the ORM refuses to run while Playwright's event loop runs in this thread.
    record = UsageRecord.objects.filter(key_name="alice-laptop", ok=True).first()
    portal.pages = {
        "record": reverse("admin:tracking_usagerecord_change", args=[record.pk]),
        "record_key": reverse("admin:accounts_apikey_change", args=[record.key_id]),
        "record_deployment": reverse("admin:gateway_deployment_change", args=[record.deployment_id]),
        "provider": reverse("admin:gateway_provider_change", args=[mock.pk]),
        "key": reverse("admin:accounts_apikey_change", args=[ApiKey.objects.get(name="alice-laptop").pk]),
    }
    return portal


def log_in(page: Any, portal: Any) -> None:
    browser_log_in(page, portal.url, "operator", PASSWORD)


def shoot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def page_width(page: Any) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


def test_an_operator_sees_a_console_that_fits_1280_pixels_and_a_live_quota_board(busy_portal, master_key,
                                                                                  browser):
    from playwright.sync_api import expect

    portal = busy_portal
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.set_default_timeout(15_000)
    log_in(page, portal)

    # The home page is the dashboard, under the portal's name, with the first-run banner.
    expect(page.locator("#site-name")).to_contain_text("LLM Portal")
    assert "Django administration" not in page.content()
    expect(page.locator("#disabled-providers")).to_contain_text("Set GEMINI_API_KEY in .env")
    expect(page.locator("#nav-sidebar")).to_contain_text("Models and providers")
    page.wait_for_function("() => window.Chart && Chart.getChart('chart-requests')")
    assert page_width(page) <= VIEWPORT["width"]
    shoot(page, "dashboard")

    # Every changelist of the admin, at 1280 px: no sideways scrolling.
    too_wide = {}
    for model in admin.site._registry:
        opts = model._meta
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        page.goto(f"{portal.url}{url}")
        expect(page.locator("#changelist")).to_be_visible()
        if page_width(page) > VIEWPORT["width"]:
            too_wide[url] = page_width(page)
        shoot(page, f"list-{opts.app_label}-{opts.model_name}")
    assert too_wide == {}

    # The deployment list shows the catalog model of the disabled provider as off, and says why.
    page.goto(f"{portal.url}{reverse('admin:gateway_deployment_changelist')}")
    gemini_row = page.locator("#result_list tr", has_text="gemini-2.5-flash-lite")
    expect(gemini_row.locator("td.field-serving")).to_contain_text("provider gemini is disabled")
    # The key list counts alice's requests of today.
    page.goto(f"{portal.url}{reverse('admin:accounts_apikey_changelist')}")
    expect(page.locator("#result_list tr", has_text="alice-laptop").locator("td.field-usage_today")).to_contain_text(
        "4 req")

    # A usage record's page: latency in ms, links to its key and deployment.
    page.goto(f"{portal.url}{portal.pages['record']}")
    expect(page.locator(".field-latency")).to_contain_text(re.compile(r"\d ms"))
    expect(page.locator(".field-key_link a")).to_have_attribute("href", portal.pages["record_key"])
    expect(page.locator(".field-deployment_link a")).to_have_attribute("href", portal.pages["record_deployment"])
    assert page_width(page) <= VIEWPORT["width"]
    shoot(page, "usage-record")

    # The quota board: the used-up RPM at 100%, the parked deployment with its reason, closest first.
    page.goto(f"{portal.url}{reverse('admin:quota_board')}")
    rpm = page.locator('tr[data-model="rpm-model"] .qlimit[data-limit="RPM"]')
    expect(rpm.locator(".qbar")).to_have_attribute("data-percent", "100")
    expect(rpm).to_contain_text("3 / 3")
    parked = page.locator('tr[data-model="daily-model"] td.qstate')
    expect(parked).to_contain_text("parked until")
    expect(parked).to_contain_text(re.compile(r"P[SD]T"))  # midnight where the provider counts its days
    expect(parked).to_contain_text("exceeded your current quota")
    first_two = page.locator("#quota-board tbody tr").evaluate_all("rows => rows.map(r => r.dataset.model)")[:2]
    assert sorted(first_two) == ["daily-model", "rpm-model"]
    assert page.locator("#quota-board tbody tr", has_text="gemini").count() == 0  # its provider is off
    assert page_width(page) <= VIEWPORT["width"]
    shoot(page, "quota-board")

    # It refreshes by itself: a request made now shows up without a reload.
    expect(page.locator('tr[data-model="fresh-model"] .qlimit[data-limit="RPM"]')).to_contain_text("0 / 10")
    assert chat(portal, master_key, "fresh-model").status_code == 200
    expect(page.locator('tr[data-model="fresh-model"] .qlimit[data-limit="RPM"]')).to_contain_text(
        "1 / 10", timeout=15_000)

    # The other console pages a reviewer will want to see.
    deployment = page.locator('tr[data-model="rpm-model"] td.qname a').get_attribute("href")
    for name, url in (("deployment", deployment), ("provider", portal.pages["provider"]),
                      ("api-key", portal.pages["key"]), ("usage-dashboard", reverse("admin:tracking_dashboard"))):
        page.goto(f"{portal.url}{url}")
        shoot(page, name)
        assert page_width(page) <= VIEWPORT["width"], name
