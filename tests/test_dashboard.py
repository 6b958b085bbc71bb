"""Operators see usage: the dashboard (staff only), the filterable usage list and its CSV export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from pathlib import Path
from typing import Any

import openai
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.conftest import make_deployment, make_provider
from tracking import recorder
from tracking.models import UsageRecord

# The test client is synchronous; the CSV stream is async for ASGI (where the portal runs).
pytestmark = pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
DASHBOARD = "admin:tracking_dashboard"


def add(count: int = 1, **fields: Any) -> list[UsageRecord]:
    values = {"created": timezone.now(), "endpoint": "chat.completions", "model": "gemini-2.5-flash",
              "status": 200, "ok": True, "provider": "gemini", "key_name": "alice-laptop", "key_id": 1,
              "username": "alice", "user_id": 1, "prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30,
              "latency_ms": 100.0, **fields}
    return UsageRecord.objects.bulk_create(UsageRecord(request_id=uuid.uuid4().hex, **values) for _ in range(count))


@pytest.fixture
def operator(db: Any) -> User:
    return User.objects.create_superuser("operator", "op@example.com", "operator-password-1")


@pytest.fixture
def operator_browser(operator: User) -> Client:
    browser = Client()
    browser.force_login(operator)
    return browser


@pytest.fixture
def usage(db: Any) -> None:
    yesterday = timezone.now() - dt.timedelta(days=1)
    add(8)
    add(2, status=429, ok=False, error_code="rate_limited", latency_ms=2000.0)
    add(5, created=yesterday, model="gpt-4o-mini", provider="github", key_name="bob-ci", key_id=2,
        username="bob", user_id=2, latency_ms=300.0)
    add(1, created=timezone.now() - dt.timedelta(days=40), model="ancient")


def test_an_operator_sees_requests_tokens_errors_and_latency(operator_browser: Client, usage: None) -> None:
    response = operator_browser.get(reverse(DASHBOARD))

    assert response.status_code == 200
    data = response.context["data"]
    assert data["totals"]["requests"] == 15
    assert data["totals"]["tokens"] == 15 * 30
    assert data["totals"]["errors"] == 2
    assert data["totals"]["error_rate"] == 13.3
    assert data["totals"]["p50"] == 100.0
    assert data["totals"]["p95"] == 2000.0
    models = {m["model"]: m for m in data["models"]}
    assert set(models) == {"gemini-2.5-flash", "gpt-4o-mini"}  # the 40-day-old record is outside 14 days
    assert models["gemini-2.5-flash"]["error_rate"] == 20.0
    assert models["gpt-4o-mini"]["p95"] == 300.0
    assert [k["name"] for k in data["top_keys"]] == ["alice-laptop", "bob-ci"]
    assert [u["name"] for u in data["top_users"]] == ["alice", "bob"]
    series = {s["model"]: s for s in data["daily"]["series"]}
    assert series["gemini-2.5-flash"]["requests"][-1] == 10
    assert series["gpt-4o-mini"]["requests"][-2:] == [5, 0]
    assert series["gpt-4o-mini"]["tokens"][-2] == 150
    page = response.content.decode()
    assert "tracking/chart.umd.min.js" in page and "cdn" not in page.lower()
    assert 'id="usage-data"' in page


def test_the_period_can_be_widened(operator_browser: Client, usage: None) -> None:
    response = operator_browser.get(reverse(DASHBOARD), {"days": 90})

    assert response.context["data"]["totals"]["requests"] == 16
    assert len(response.context["data"]["daily"]["labels"]) == 90


def test_the_dashboard_runs_a_bounded_number_of_queries(operator_browser: Client, usage: None,
                                                        django_assert_max_num_queries: Any) -> None:
    add(3, model="model-c")
    add(3, model="model-d")
    with django_assert_max_num_queries(30):
        assert operator_browser.get(reverse(DASHBOARD)).status_code == 200


def test_a_user_who_is_not_staff_is_sent_to_the_login(db: Any) -> None:
    bob = User.objects.create_user("bob", password="bob-password-123")
    browser = Client()
    browser.force_login(bob)

    response = browser.get(reverse(DASHBOARD))

    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert Client().get(reverse(DASHBOARD)).status_code == 302


def test_todays_quota_is_shown_per_deployment_against_its_limit(
    client: openai.OpenAI, upstream: Any, operator: User
) -> None:
    provider = make_provider(upstream)
    make_deployment(provider, rpd=50, rpm=10)
    make_deployment(provider, public_name="unlimited")
    for _ in range(3):
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "Hi"}])
    browser = Client()
    browser.force_login(operator)

    quota = browser.get(reverse(DASHBOARD)).context["data"]["quota"]

    bars = {q["limit_name"]: q for q in quota}
    assert set(bars) == {"rpm", "rpd"}  # the unlimited deployment has no bar
    assert bars["rpd"]["used"] == 3 and bars["rpd"]["limit"] == 50 and bars["rpd"]["percent"] == 6.0
    assert bars["rpm"]["used"] == 3 and bars["rpm"]["limit"] == 10
    assert bars["rpd"]["label"].startswith("test-model (mock)")


def test_the_usage_list_filters_by_model_key_status_and_date(operator_browser: Client, usage: None,
                                                             django_assert_max_num_queries: Any) -> None:
    url = reverse("admin:tracking_usagerecord_changelist")

    def shown(**params: Any) -> int:
        with django_assert_max_num_queries(15):
            response = operator_browser.get(url, params)
        assert response.status_code == 200
        return len(response.context["cl"].result_list)

    assert shown() == 16
    assert shown(model="gpt-4o-mini") == 5
    assert shown(key="bob-ci") == 5
    assert shown(outcome="error") == 2
    assert shown(outcome="4xx", model="gemini-2.5-flash") == 2
    midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    assert shown(created__gte=str(midnight), created__lt=str(midnight + dt.timedelta(days=1))) == 10


def test_the_csv_download_follows_the_list_filters(operator_browser: Client, usage: None) -> None:
    response = operator_browser.get(reverse("admin:tracking_usagerecord_csv"), {"model": "gpt-4o-mini"})

    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response).decode())))
    assert len(rows) == 5
    assert {r["model"] for r in rows} == {"gpt-4o-mini"}
    assert rows[0]["key_name"] == "bob-ci" and rows[0]["total_tokens"] == "30"


def test_the_csv_action_exports_the_selected_records(operator_browser: Client, usage: None) -> None:
    chosen = list(UsageRecord.objects.filter(ok=False).values_list("pk", flat=True))
    response = operator_browser.post(
        reverse("admin:tracking_usagerecord_changelist"),
        {"action": "export_csv", "_selected_action": chosen},
    )

    rows = list(csv.DictReader(io.StringIO(b"".join(response).decode())))
    assert {r["status"] for r in rows} == {"429"} and len(rows) == 2


def test_csv_cells_that_look_like_formulas_are_neutralised(operator_browser: Client, db: Any) -> None:
    add(1, key_name="=HYPERLINK(\"http://evil\")")

    body = b"".join(operator_browser.get(reverse("admin:tracking_usagerecord_csv"))).decode()

    assert "'=HYPERLINK" in body


def test_a_non_staff_user_cannot_download_the_csv(db: Any) -> None:
    bob = User.objects.create_user("bob", password="bob-password-123")
    browser = Client()
    browser.force_login(bob)

    assert browser.get(reverse("admin:tracking_usagerecord_csv")).status_code == 302


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_screenshot_of_the_dashboard_with_data(portal: Any, client: openai.OpenAI, upstream: Any,
                                               operator: User) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    call_command("collectstatic", interactive=False, verbosity=0)
    provider = make_provider(upstream)
    make_deployment(provider, rpd=20, rpm=10)
    make_deployment(provider, public_name="other-model", rpd=100)
    for _ in range(4):
        client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "Hi"}])
    client.chat.completions.create(model="other-model", messages=[{"role": "user", "content": "Hi"}])
    recorder.flush()
    for days_ago, count in ((1, 6), (2, 3), (4, 9)):
        add(count, created=timezone.now() - dt.timedelta(days=days_ago), model="test-model")
        add(count // 2, created=timezone.now() - dt.timedelta(days=days_ago), model="other-model",
            key_name="bob-ci", username="bob")
    browser_client = Client()
    browser_client.force_login(operator)
    session = browser_client.cookies["sessionid"].value

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_cookies([{"name": "sessionid", "value": session, "url": portal.url}])
            page = context.new_page()
            page.goto(f"{portal.url}{reverse(DASHBOARD)}")
            page.wait_for_function(
                "() => window.Chart && Chart.getChart('chart-requests') && Chart.getChart('chart-quota')"
            )
            labels = page.evaluate("Chart.getChart('chart-requests').data.datasets.map(d => d.label)")
            quota_used = page.evaluate("Chart.getChart('chart-quota').data.datasets[0].data")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()

    assert sorted(labels) == ["other-model", "test-model"]
    # In percent of each limit: RPM 4/10, RPD 4/20 and the other model's RPD 1/100, closest to exhaustion first.
    assert quota_used == [40, 20, 1]
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 20_000


def test_the_csv_is_read_in_pages_without_losing_a_row(db: Any) -> None:
    from asgiref.sync import async_to_sync

    from tracking.admin import csv_lines

    made = add(5)

    async def collect() -> str:
        return "".join([part async for part in csv_lines(UsageRecord.objects.all(), page_size=2)])

    rows = list(csv.DictReader(io.StringIO(async_to_sync(collect)())))
    assert [r["request_id"] for r in rows] == [r.request_id for r in sorted(made, key=lambda r: -r.pk)]
