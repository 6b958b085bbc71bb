"""/api/users/ reports each user's use today, from the records of real calls through /v1."""

from __future__ import annotations

import time

import openai
from django.conf import settings
from django.test import Client

from tests.conftest import make_deployment, make_provider
from tests.personas import issue

HELLO = [{"role": "user", "content": "Say hello"}]


def test_users_use_today_sums_the_calls_of_all_their_keys(portal, upstream, personas):
    make_deployment(make_provider(upstream), public_name="test-model")
    spent = {"alice": 0, "bob": 0}
    for owner, name in ((personas.alice, "a1"), (personas.alice, "a2"), (personas.bob, "b1")):
        _, token = issue(owner, name)
        client = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=token, max_retries=0, timeout=30)
        spent[owner.username] += client.chat.completions.create(model="test-model", messages=HELLO).usage.total_tokens
    master = Client(HTTP_AUTHORIZATION=f"Bearer {settings.MASTER_KEY}")
    deadline = time.monotonic() + 10
    while True:  # usage records are written off the request path
        users = {u["username"]: u for u in master.get("/api/users/").json()["results"]}
        if users["bob"]["requests_today"] == 1 and users["alice"]["requests_today"] == 2:
            break
        assert time.monotonic() < deadline, users
        time.sleep(0.1)
    assert (users["alice"]["tokens_today"], users["bob"]["tokens_today"]) == (spent["alice"], spent["bob"])
    assert (users["charlie"]["requests_today"], users["charlie"]["tokens_today"]) == (0, 0)
