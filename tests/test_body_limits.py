"""Every route caps its request body while it arrives, whether the body has a Content-Length or comes chunked:
/v1 and its aliases at MAX_REQUEST_BODY_BYTES, the admin, key pages and management API at
MAX_ADMIN_REQUEST_BODY_BYTES. A refused body is answered 413 at once and nothing of it is written to disk."""

from __future__ import annotations

import select
import socket
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import pytest

HUNDRED_MB = 100 * 1024 * 1024
PIECE = 64 * 1024


@pytest.fixture
def spool_dir(tmp_path, monkeypatch, settings) -> Path:
    """An empty directory where Django would spool a large body (its temporary files go to tempfile's dir)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    settings.FILE_UPLOAD_TEMP_DIR = str(spool)
    return spool


class Sent:
    def __init__(self, response: bytes, seconds: float, sent: int) -> None:
        self.response, self.seconds, self.sent = response, seconds, sent

    @property
    def status(self) -> int:
        return int(self.response.split(b" ", 2)[1]) if self.response.startswith(b"HTTP/1.1 ") else 0

    @property
    def headers(self) -> dict[str, str]:
        head = self.response.split(b"\r\n\r\n", 1)[0].decode("latin1").split("\r\n")[1:]
        return {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head)}

    def json(self) -> dict:
        return orjson.loads(self.response.split(b"\r\n\r\n", 1)[1])


def send_huge_body(port: int, path: str, *, chunked: bool, total: int = HUNDRED_MB, headers: str = "") -> Sent:
    """POST `total` bytes as a hostile client would: it keeps sending until the server answers or hangs up."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(5)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}\r\n"
                 f"{headers}\r\n".encode())
    piece = b"x" * PIECE
    frame = b"%x\r\n%s\r\n" % (PIECE, piece) if chunked else piece
    sent = 0
    try:
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sock.sendall(frame)
            sent += PIECE
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    response = b""
    try:
        while chunk := sock.recv(65536):
            response += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    return Sent(response, time.monotonic() - started, sent)


def test_a_100_mb_chunked_body_to_chat_completions_without_a_key_is_refused_at_once(portal, spool_dir):
    result = send_huge_body(portal.port, "/v1/chat/completions", chunked=True)

    assert result.seconds < 1
    assert result.status == 413
    assert result.json()["error"]["code"] == "request_too_large"
    assert result.headers["x-request-id"]
    assert result.sent < 2 * 20 * 1024 * 1024 + 1024 * 1024  # stopped near the limit, not at 100 MB
    assert list(spool_dir.iterdir()) == []


def test_a_100_mb_body_to_the_admin_login_is_refused_at_once(portal, spool_dir):
    result = send_huge_body(portal.port, "/admin/login/", chunked=False)

    assert result.seconds < 1
    assert result.status == 413
    assert result.headers["x-request-id"]
    assert list(spool_dir.iterdir()) == []


@pytest.mark.parametrize("path", ["/admin/login/", "/keys/login/", "/api/keys/"])
def test_a_100_mb_chunked_body_to_a_page_or_the_management_api_is_refused_at_once(portal, spool_dir, path):
    result = send_huge_body(portal.port, path, chunked=True)

    assert result.seconds < 1
    assert result.status == 413
    assert result.headers["x-request-id"]
    assert list(spool_dir.iterdir()) == []


@pytest.mark.parametrize("path", ["/embeddings", "/v1/embeddings", "/chat/completions"])
def test_a_chunked_body_over_the_limit_on_any_gateway_route_is_the_413_envelope(portal, settings, spool_dir, path):
    settings.MAX_REQUEST_BODY_BYTES = 1024 * 1024
    result = send_huge_body(portal.port, path, chunked=True, total=8 * 1024 * 1024)

    assert result.status == 413
    assert result.json()["error"] == {
        "message": "The request body is larger than the limit of 1048576 bytes.", "type": "invalid_request_error",
        "param": None, "code": "request_too_large"}
    assert list(spool_dir.iterdir()) == []


def test_a_content_length_over_the_limit_is_the_413_envelope_with_a_request_id(portal, settings):
    settings.MAX_REQUEST_BODY_BYTES = 1000
    response = httpx.post(f"{portal.url}/v1/chat/completions", content=b"{" + b" " * 2000 + b"}")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert response.headers["x-request-id"]


def test_a_chunked_body_under_the_limit_is_served(portal, master_key, deployment, settings, spool_dir):
    settings.MAX_REQUEST_BODY_BYTES = 64 * 1024
    body = orjson.dumps({"model": "test-model", "messages": [{"role": "user", "content": "x" * 30_000}]})

    def pieces():
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    response = httpx.post(f"{portal.url}/v1/chat/completions", content=pieces(),
                          headers={"Authorization": f"Bearer {master_key}", "Content-Type": "application/json"})

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


def test_a_form_under_the_admin_limit_is_read_as_usual(portal, settings):
    # Larger than Django's default in-memory size (2.5 MB), under MAX_ADMIN_REQUEST_BODY_BYTES: a normal 200/403,
    # not a 413 (the login page refuses it for its missing CSRF token, as it would any form without one).
    assert settings.MAX_ADMIN_REQUEST_BODY_BYTES > 3 * 1024 * 1024
    response = httpx.post(f"{portal.url}/admin/login/", data={"username": "x" * (3 * 1024 * 1024)})

    assert response.status_code == 403
    assert response.headers["x-request-id"]
