"""`/` is a landing page that leads users to their keys and operators to the admin; LiteLLM's `/ui` address (and
anything under it) leads to the admin login. The landing page is also looked at in a real Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client

from tests.personas import PASSWORD

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.mark.parametrize("path", ["/ui", "/ui/", "/ui/model_hub", "/ui/?login=success"])
def test_the_seeds_ui_address_redirects_to_the_admin_login(db, path):
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/admin/"
    assert Client().get(response["Location"]).status_code == 200


def test_an_operator_who_follows_ui_after_logging_in_reaches_the_admin(personas):
    client = Client()
    assert client.login(username="operator", password=PASSWORD)
    response = client.get("/ui", follow=True)
    assert response.redirect_chain[-1][0] == "/admin/"
    assert response.status_code == 200


def test_a_path_that_only_starts_like_ui_is_not_redirected(db):
    assert Client().get("/uiextra").status_code == 404


def test_the_landing_page_leads_users_to_keys_and_operators_to_the_admin(db):
    response = Client().get("/", HTTP_HOST="llm.example.com")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'href="/keys/"' in page and 'href="/admin/"' in page
    assert '<code id="api-base">http://llm.example.com/v1</code>' in page
    assert "Content-Security-Policy" in response


def test_the_admins_view_site_link_reaches_the_landing_page(personas):
    client = Client()
    assert client.login(username="operator", password=PASSWORD)
    admin = client.get("/admin/").content.decode()
    assert '<a href="/">View site</a>' in admin
    assert client.get("/").status_code == 200


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium package at /usr/bin/chromium")
def test_the_landing_page_renders_in_a_browser(portal, transactional_db):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (dev extra)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{portal.url}/")
            assert page.inner_text("#api-base") == f"{portal.url}/v1"
            page.screenshot(path=str(ARTIFACTS / "landing.png"))
            page.click("text=Get an API key")
            page.wait_for_url(f"{portal.url}/keys/login/?next=/keys/")
        finally:
            browser.close()
