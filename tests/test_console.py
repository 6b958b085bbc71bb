"""The operator's console (Django's admin as the portal's product): branding, the dashboard as its home page,
the first-run banner, the changelist columns that were wrong, the quota board's data and /api/quota/."""

from __future__ import annotations

import datetime as dt
import html
import re
import uuid
from typing import Any

import httpx
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey
from gateway import clock
from gateway.models import Provider
from tests.conftest import make_deployment, make_provider
from tests.mock_gemini import PER_DAY_429
from tests.mock_upstream import Behaviour
from tracking import recorder
from tracking.admin import milliseconds
from tracking.models import UsageRecord


def record(**fields: Any) -> UsageRecord:
    values = {"request_id": uuid.uuid4().hex, "created": timezone.now(), "endpoint": "chat.completions",
              "model": "test-model", "status": 200, "ok": True, "total_tokens": 30, "latency_ms": 611.0, **fields}
    return UsageRecord.objects.create(**values)


@pytest.fixture
def operator_client(personas: Any) -> Client:
    browser = Client()
    browser.force_login(personas.operator)
    return browser


def test_the_console_carries_the_portals_name_and_its_home_page_is_the_dashboard(operator_client: Client) -> None:
    response = operator_client.get(reverse("admin:index"))

    page = response.content.decode()
    assert response.status_code == 200
    assert re.search(r'<div id="site-name"><a href="/admin/">LLM Portal \d+\.\d+', page)
    assert "Django administration" not in page
    assert response.context["data"]["totals"]["requests"] == 0  # the usage dashboard's data
    assert 'href="/"' in page  # "View site" goes to the portal's landing page
    titles = [group["name"] for group in response.context["available_apps"]]
    assert titles[:4] == ["Models and providers", "Keys and users", "Usage", "Settings"]


def test_the_banner_names_each_disabled_provider_and_what_enables_it(operator_client: Client, db: Any) -> None:
    gemini = Provider(name="gemini", kind="gemini", enabled=False, awaiting_credential=True)
    gemini.set_secret("os.environ/GEMINI_KEY_NOBODY_SET")
    gemini.save()
    Provider.objects.create(name="copilot", kind="github_copilot", enabled=False)
    Provider.objects.create(name="on", kind="openai_compatible", api_base="http://127.0.0.1:9/v1")

    for url in (reverse("admin:index"), reverse("admin:gateway_deployment_changelist")):
        banner = html.unescape(operator_client.get(url).content.decode()).split('id="disabled-providers"')[1]
        banner = banner.split("</div>")[0]
        assert "2 providers switched off" in banner
        assert "Set GEMINI_KEY_NOBODY_SET in .env" in banner
        assert "Connect GitHub Copilot" in banner
        assert ">on<" not in banner


def test_the_key_list_counts_todays_requests_of_a_key_without_limits(operator_client: Client, personas: Any,
                                                                      django_assert_max_num_queries: Any) -> None:
    key, _ = ApiKey.objects.issue(personas.alice, "alice-laptop")
    quiet, _ = ApiKey.objects.issue(personas.bob, "bob-ci")
    for _ in range(3):
        record(key_id=key.pk, key_name=key.name)
    record(key_id=key.pk, key_name=key.name, created=timezone.now() - dt.timedelta(days=2))

    with django_assert_max_num_queries(12):  # one query for the page's counts, not one per key
        response = operator_client.get(reverse("admin:accounts_apikey_changelist"))

    rows = {k.pk: k for k in response.context["cl"].result_list}
    assert (rows[key.pk].requests_today, rows[key.pk].tokens_today) == (3, 90)
    page = response.content.decode()
    assert "3 req · 90 tok" in page and "0 req · 0 tok" in page
    assert quiet.pk in rows


def test_a_deployment_of_a_disabled_provider_is_shown_off_and_why(operator_client: Client, db: Any) -> None:
    off = Provider.objects.create(name="gemini", kind="gemini", enabled=False)
    on = Provider.objects.create(name="local", kind="openai_compatible", api_base="http://127.0.0.1:9/v1")
    make_deployment(off, public_name="gemini-2.5-flash", upstream_model="gemini-2.5-flash")
    make_deployment(on, public_name="served-model", upstream_model="m")

    page = operator_client.get(reverse("admin:gateway_deployment_changelist")).content.decode()

    cells = dict(re.findall(r'<a href="/admin/gateway/deployment/\d+/change/">([\w.-]+)</a>.*?'
                            r'<td class="field-serving">(.*?)</td>', page, re.S))
    assert "off" in cells["gemini-2.5-flash"] and "provider gemini is disabled" in cells["gemini-2.5-flash"]
    assert "on" in cells["served-model"] and "disabled" not in cells["served-model"]


def test_the_test_action_keeps_the_model_names_case(portal: Any, personas: Any, upstream: Any) -> None:
    deployment = make_deployment(make_provider(upstream), public_name="mock-gpt")
    login = Client()
    login.force_login(personas.operator)
    with httpx.Client(base_url=portal.url, cookies={"sessionid": login.cookies["sessionid"].value},
                      follow_redirects=True, timeout=60) as browser:
        browser.get("/admin/gateway/deployment/")
        response = browser.post("/admin/gateway/deployment/",
                                data={"action": "test_call", "_selected_action": [str(deployment.pk)]},
                                headers={"X-CSRFToken": browser.cookies["csrftoken"]})

    (message,) = re.findall(r'<li class="success">(.*?)</li>', response.text, re.S)
    assert html.unescape(message).startswith("mock-gpt → mock/mock-1: answered in ")


def test_latencies_read_in_milliseconds_with_sensible_precision() -> None:
    assert milliseconds(0.6105510001361836) == "0.6 ms"
    assert milliseconds(611.0551) == "611 ms"
    assert milliseconds(12040.2) == "12,040 ms"
    assert milliseconds(None) == "–"


def test_a_usage_record_links_to_its_key_deployment_and_mlflow_trace(operator_client: Client, personas: Any,
                                                                      mlflow_server: Any, settings: Any) -> None:
    from mlflow import MlflowClient

    settings.MLFLOW_TRACKING_URI = settings.MLFLOW_UI_URL = mlflow_server.url
    settings.MLFLOW_ARTIFACT_ROOT = ""
    experiment = f"console-{uuid.uuid4().hex[:8]}"
    eid = MlflowClient(mlflow_server.url).create_experiment(experiment)
    key, _ = ApiKey.objects.issue(personas.alice, "alice-laptop")
    deployment = make_deployment(Provider.objects.create(name="p", kind="openai_compatible",
                                                         api_base="http://127.0.0.1:9/v1"))
    row = record(key_id=key.pk, key_name=key.name, deployment_id=deployment.pk, latency_ms=0.6105510001361836,
                 mlflow_trace_id="tr-0123abcd", mlflow_experiment=experiment)

    page = operator_client.get(reverse("admin:tracking_usagerecord_change", args=[row.pk])).content.decode()
    trace = operator_client.get(reverse("admin:tracking_usagerecord_trace", args=[row.pk]))

    assert "0.6 ms" in page and "0.6105" not in page
    assert f'href="{reverse("admin:accounts_apikey_change", args=[key.pk])}"' in page
    assert f'href="{reverse("admin:gateway_deployment_change", args=[deployment.pk])}"' in page
    assert f'href="{reverse("admin:tracking_usagerecord_trace", args=[row.pk])}"' in page
    assert trace.status_code == 302
    assert trace["Location"].startswith(f"{mlflow_server.url}/#/experiments/{eid}/traces?")
    assert "selectedEvaluationId=tr-0123abcd" in trace["Location"]


def test_the_quota_api_is_for_operators_only(portal: Any, personas: Any, master_key: str) -> None:
    url = f"{portal.url}/api/quota/"
    _, user_token = ApiKey.objects.issue(personas.alice, "alice-laptop")
    alice = Client()
    alice.force_login(personas.alice)

    assert httpx.get(url).status_code in (401, 403)
    assert httpx.get(url, headers={"Authorization": f"Bearer {user_token}"}).status_code in (401, 403)
    assert alice.get("/api/quota/").status_code == 403
    assert httpx.get(url, headers={"Authorization": f"Bearer {master_key}"}).status_code == 200


def test_the_quota_board_shows_each_limit_in_percent_and_why_a_deployment_is_parked(
    portal: Any, upstream: Any, master_key: str, personas: Any
) -> None:
    provider = make_provider(upstream, reset_timezone="America/Los_Angeles")
    make_deployment(provider, public_name="busy", upstream_model="mock-busy", rpm=2, tpm=1_000_000)
    make_deployment(provider, public_name="daily", upstream_model="mock-daily", rpd=50)
    make_deployment(provider, public_name="quiet", upstream_model="mock-quiet")
    off = Provider.objects.create(name="off", kind="openai_compatible", api_base=upstream.base_url, enabled=False)
    make_deployment(off, public_name="unserved", upstream_model="x", rpm=1)
    upstream.set_behaviour("mock-daily", Behaviour(status=429, error_body=PER_DAY_429))
    auth = {"Authorization": f"Bearer {master_key}"}

    def chat(model: str) -> int:
        return httpx.post(f"{portal.url}/v1/chat/completions", headers=auth, timeout=30,
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}]}).status_code

    assert [chat("busy"), chat("busy"), chat("daily")] == [200, 200, 429]
    recorder.flush()  # the usage records behind the success rate and latency

    board = httpx.get(f"{portal.url}/api/quota/", headers=auth).json()

    rows = {row["model"]: row for row in board["deployments"]}
    assert set(rows) == {"busy", "daily", "quiet"}  # a disabled provider's deployment is not in rotation
    limits = {limit["name"]: limit for limit in rows["busy"]["limits"]}
    assert (limits["RPM"]["used"], limits["RPM"]["limit"], limits["RPM"]["percent"]) == (2, 2, 100.0)
    assert limits["TPM"]["percent"] < 1  # its own axis: a few tokens of a million
    parked = rows["daily"]["parked"]
    assert "exceeded your current quota" in parked["reason"]
    midnight_la = dt.datetime.fromisoformat(rows["daily"]["limits"][0]["resets_at"])
    assert dt.datetime.fromisoformat(parked["until"]) == midnight_la  # until the provider's day starts over
    assert parked["until_provider_tz"].endswith(("00:00 PST", "00:00 PDT"))
    assert [row["model"] for row in board["deployments"]][:2] == ["busy", "daily"]  # closest to exhaustion first
    assert rows["busy"]["success_rate"] == 100.0 and rows["busy"]["p50_ms"] is not None
    assert rows["quiet"]["limits"] == [] and rows["quiet"]["parked"] is None

    clock.advance(26 * 3600)  # past midnight in Los Angeles: the pause is over
    later = httpx.get(f"{portal.url}/api/quota/", headers=auth).json()["deployments"]
    assert next(row for row in later if row["model"] == "daily")["parked"] is None


def test_a_staff_user_who_may_not_see_usage_gets_a_home_page_without_it(db: Any) -> None:
    from django.contrib.auth.models import Permission, User

    vera = User.objects.create_user("vera", password="vera-password-123", is_staff=True)
    vera.user_permissions.add(Permission.objects.get(codename="view_deployment"))
    browser = Client()
    browser.force_login(vera)

    response = browser.get(reverse("admin:index"))

    assert response.status_code == 200
    assert "data" not in response.context
    groups = {group["name"]: [m["name"] for m in group["models"]] for group in response.context["available_apps"]}
    assert groups == {"Models and providers": ["Quota board", "Deployments"]}
    assert browser.get(reverse("admin:quota_board")).status_code == 200
