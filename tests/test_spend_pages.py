"""Spend on the pages: a key's and a user's admin page, the dashboard, and the user's own key pages, after real
calls through the portal to the mock upstream (priced by a deployment price, so the figures are known)."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest
from django.test import Client
from django.urls import reverse

from tests.conftest import make_deployment, make_provider
from tests.personas import issue
from tracking import recorder
from tracking.models import UsageRecord
from tracking.templatetags.spend import usd

HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def priced(upstream, transactional_db):
    provider = make_provider(upstream)
    make_deployment(provider, public_name="paid-model", upstream_model="m1",
                    input_price_per_mtok=Decimal(1000), output_price_per_mtok=Decimal(2000))
    make_deployment(provider, public_name="free-model", upstream_model="gpt-4.1", billing="free")


def call(portal, token: str, model: str, n: int = 1) -> None:
    api = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=token, max_retries=0, timeout=30)
    for _ in range(n):
        api.chat.completions.create(model=model, messages=HELLO)


def logged_in(user) -> Client:
    browser = Client()
    browser.force_login(user)
    return browser


def test_a_keys_admin_page_shows_its_spend_after_calls(portal, priced, personas):
    key, token = issue(personas.alice)
    call(portal, token, "paid-model", 2)
    call(portal, token, "free-model")
    recorder.flush()
    spent = sum(r.cost_usd for r in UsageRecord.objects.filter(model="paid-model"))
    worth = UsageRecord.objects.get(model="free-model").list_cost_usd
    assert spent > 0 and worth > 0

    page = logged_in(personas.operator).get(reverse("admin:accounts_apikey_change", args=[key.pk]))

    text = page.content.decode()
    assert page.status_code == 200
    assert 'id="key-spend"' in text
    assert usd(spent) in text  # today, 7 days, 30 days and all time
    assert usd(worth) in text
    assert "paid-model" in text and "free-model" in text


def test_a_users_admin_page_sums_the_spend_of_all_their_keys(portal, priced, personas):
    _, laptop = issue(personas.alice, "laptop")
    _, ci = issue(personas.alice, "ci")
    _, other = issue(personas.bob, "bob's")
    call(portal, laptop, "paid-model")
    call(portal, ci, "paid-model")
    call(portal, other, "paid-model", 3)
    recorder.flush()
    alice = sum(r.cost_usd for r in UsageRecord.objects.filter(user_id=personas.alice.pk))

    page = logged_in(personas.operator).get(reverse("admin:auth_user_change", args=[personas.alice.pk]))

    assert 'id="user-spend"' in page.content.decode()
    assert usd(alice) in page.content.decode()
    assert usd(alice) != usd(sum(r.cost_usd for r in UsageRecord.objects.all()))


def test_the_dashboard_totals_spend_per_model_provider_key_and_user(portal, priced, personas):
    _, token = issue(personas.alice)
    call(portal, token, "paid-model")
    call(portal, token, "free-model")
    recorder.flush()
    spent = UsageRecord.objects.get(model="paid-model").cost_usd
    worth = UsageRecord.objects.get(model="free-model").list_cost_usd

    page = logged_in(personas.operator).get(reverse("admin:tracking_dashboard") + "?days=7")

    spend = page.context["spend"]
    assert spend["totals"]["cost"] == spent
    assert spend["totals"]["free_value"] == worth
    assert {r["model"]: r["cost"] for r in spend["models"]} == {"paid-model": spent, "free-model": 0}
    assert [(r["provider"], r["cost"]) for r in spend["providers"]] == [("mock", spent)]
    assert [(r["key_name"], r["requests"]) for r in spend["keys"]] == [("laptop", 2)]
    assert [(r["username"], r["cost"]) for r in spend["users"]] == [("alice", spent)]
    assert len(spend["daily"]) == 7 and spend["daily"][0]["cost"] == spent  # today first
    assert 'id="spend-cost"' in page.content.decode()


def test_a_user_sees_their_own_spend_and_nobody_elses_on_the_key_pages(portal, priced, personas):
    key, token = issue(personas.alice)
    _, bobs = issue(personas.bob)
    call(portal, token, "paid-model")
    call(portal, bobs, "paid-model", 3)
    recorder.flush()
    mine = UsageRecord.objects.get(user_id=personas.alice.pk).cost_usd
    bobs_cost = sum(r.cost_usd for r in UsageRecord.objects.filter(user_id=personas.bob.pk))

    alice = logged_in(personas.alice)
    listing = alice.get(reverse("accounts:keys")).content.decode()
    detail = alice.get(reverse("accounts:detail", args=[key.pk])).content.decode()

    assert 'id="my-spend"' in listing and usd(mine) in listing
    assert 'id="key-spend"' in detail and usd(mine) in detail
    assert usd(bobs_cost) not in listing


def test_a_deployments_change_page_says_which_price_applies(db, personas, upstream):
    provider = make_provider(upstream, name="github", kind="github_models")
    free = make_deployment(provider, public_name="github/gpt-4.1", upstream_model="openai/gpt-4.1")
    operator = logged_in(personas.operator)

    page = operator.get(reverse("admin:gateway_deployment_change", args=[free.pk])).content.decode()

    assert "free tier; list price $2 in / $8 out per 1M tokens (cost map: gpt-4.1)" in page
    response = operator.post(reverse("admin:gateway_deployment_change", args=[free.pk]), {
        "public_name": free.public_name, "provider": provider.pk, "upstream_model": free.upstream_model,
        "priority": 0, "enabled": "on", "max_wait_seconds": 0, "billing": "paid", "input_price_per_mtok": "1.5",
        "litellm_params": "{}", "model_info": "{}", "extra": "{}",
    })
    assert response.status_code == 200  # not saved: one price without the other
    assert "Set both prices" in response.content.decode()


def test_the_key_and_user_lists_show_30_days_of_spend_in_one_query(portal, priced, personas,
                                                                    django_assert_max_num_queries):
    _, token = issue(personas.alice, "laptop")
    issue(personas.bob, "idle")
    call(portal, token, "paid-model", 2)
    recorder.flush()
    spent = usd(sum(r.cost_usd for r in UsageRecord.objects.all()))
    operator = logged_in(personas.operator)

    keys = operator.get(reverse("admin:accounts_apikey_changelist")).content.decode()
    users = operator.get(reverse("admin:auth_user_changelist")).content.decode()

    assert f'<td class="field-spend_30_days">{spent}</td>' in keys
    assert '<td class="field-spend_30_days">$0.00</td>' in keys  # bob's idle key
    assert f'<td class="field-spend_30_days">{spent}</td>' in users
    with django_assert_max_num_queries(12) as counted:
        operator.get(reverse("admin:accounts_apikey_changelist"))
    for i in range(5):
        issue(personas.bob, f"more-{i}")
    with django_assert_max_num_queries(len(counted.captured_queries)):
        operator.get(reverse("admin:accounts_apikey_changelist"))  # more keys, no more queries
