"""The key pages against real traffic: after calls through /v1, a key shows its requests and tokens today
and what is left of its quota."""

from __future__ import annotations

import re
import time

import openai
from django.test import Client

from accounts.principal import KeyLimits
from tests.conftest import make_deployment, make_provider
from tests.personas import issue
from tests.test_self_service import quota_table

HELLO = [{"role": "user", "content": "Say hello"}]


def test_a_keys_use_today_and_remaining_quota_follow_its_calls(portal, upstream, personas):
    make_deployment(make_provider(upstream), public_name="test-model")
    key, token = issue(personas.alice, "ci", limits=KeyLimits(rpd=10))
    client = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=token, max_retries=0, timeout=30)
    tokens = sum(client.chat.completions.create(model="test-model", messages=HELLO).usage.total_tokens
                 for _ in range(2))
    browser = Client()
    browser.force_login(personas.alice)
    deadline = time.monotonic() + 10
    while True:  # usage records are written off the request path
        page = browser.get(f"/keys/{key.pk}/").content.decode()
        today = re.search(r'id="key-today">([^<]+)<', page).group(1)
        if today == f"2 requests, {tokens} tokens" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert today == f"2 requests, {tokens} tokens"
    assert quota_table(page)[0][2].startswith("8 left of 10 resets ")
    listing = browser.get("/keys/").content.decode()
    assert f"2 requests, {tokens} tokens" in listing
