"""What the browser tests share: Debian's Chromium driven by Playwright (never `playwright install`), the
1280x800 viewport, and the folder the console's screenshots are kept in (docs/screenshots/)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this machine refuses.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}

needs_chromium = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium package at /usr/bin/chromium"),
]


@contextmanager
def chromium() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (dev extra)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Any, base_url: str, username: str, password: str, *, console: bool = True) -> None:
    """Log in through the console's login form (or the self-service key page's) as a person would."""
    where = "/admin/" if console else "/keys/"
    page.goto(f"{base_url}{where}login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]" if console else "button[type=submit]")
    page.wait_for_url(f"{base_url}{where}")
