"""/static/ served by the portal itself (SERVE_STATIC, the embedded default): whole answers, not Django's
FileResponse stream, which under ASGI is read a chunk per thread hop and warns on every file."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client

CSS = b"body { color: #123456; }\n" * 400  # ~10 KB


@pytest.fixture
def static_root(settings, tmp_path: Path) -> Path:
    settings.STATIC_ROOT = tmp_path
    (tmp_path / "admin" / "css").mkdir(parents=True)
    (tmp_path / "admin" / "css" / "site.css").write_bytes(CSS)
    return tmp_path


def test_a_static_file_is_answered_whole_with_its_type_length_and_date(static_root):
    response = Client().get("/static/admin/css/site.css")
    assert response.status_code == 200
    assert not response.streaming
    assert response.content == CSS
    assert response["Content-Type"].startswith("text/css")
    assert response["Content-Length"] == str(len(CSS))
    assert response["Last-Modified"]


def test_a_browser_that_has_the_file_gets_a_304(static_root):
    modified = Client().get("/static/admin/css/site.css")["Last-Modified"]
    response = Client().get("/static/admin/css/site.css", HTTP_IF_MODIFIED_SINCE=modified)
    assert response.status_code == 304
    assert response.content == b""


@pytest.mark.parametrize("path", ["/static/admin/css/missing.css", "/static/admin/css/"])
def test_a_missing_file_or_a_folder_is_a_404(static_root, path):
    assert Client().get(path).status_code == 404


def test_a_path_climbing_out_of_the_folder_is_refused(static_root):
    (static_root.parent / "secret.txt").write_text("not for you")
    response = Client(raise_request_exception=False).get("/static/../secret.txt")
    assert response.status_code == 400
    assert b"not for you" not in response.content
