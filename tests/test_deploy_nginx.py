"""The shipped Nginx configuration, run for real (Debian's nginx) in front of the live portal.

Each test talks to Nginx from its own loopback address (127.0.0.x), so the per-IP limit of one test
never touches another's requests.
"""

from __future__ import annotations

import json
import socket
import ssl
import time

import httpx
import openai
import pytest
from django.conf import settings

from tests.mock_upstream import Behaviour
from tests.nginx_helpers import Nginx, free_port, make_certificates, requires_nginx, tls_context

pytestmark = requires_nginx

HELLO = [{"role": "user", "content": "Say hello"}]
SECURITY_HEADERS = {
    "strict-transport-security": "max-age=31536000",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    return directory, make_certificates(directory)


@pytest.fixture(scope="module")
def front(live_portal, certs, tmp_path_factory):
    """Nginx with the repository's config, in front of the in-process portal."""
    cert_dir, _ = certs
    nginx = Nginx(tmp_path_factory.mktemp("nginx"), [f"127.0.0.1:{live_portal.port}"], cert_dir).start()
    yield nginx
    nginx.stop()


@pytest.fixture
def ca(certs):
    return certs[1]


def sdk(front: Nginx, ca, key: str, source_ip: str) -> openai.OpenAI:
    http_client = httpx.Client(transport=httpx.HTTPTransport(verify=tls_context(ca), local_address=source_ip))
    return openai.OpenAI(base_url=f"{front.https_url}/v1", api_key=key, max_retries=0, timeout=30,
                         http_client=http_client)


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        # Exactly one copy: the portal's own header is hidden so the browser never sees two.
        assert response.headers.get_list(name) == [value], (name, response.headers.get_list(name))


def test_the_shipped_config_passes_nginx_t(certs, tmp_path):
    result = Nginx(tmp_path, ["127.0.0.1:9"], certs[0]).check()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def test_the_openai_sdk_works_over_https_through_nginx(front, ca, portal, master_key, upstream, deployment):
    client = sdk(front, ca, master_key, "127.0.0.11")

    completion = client.chat.completions.create(model="test-model", messages=HELLO)
    models = client.models.list()

    assert completion.choices[0].message.content == "Hello from mock"
    assert [m.id for m in models.data] == ["test-model"]


def test_a_stream_arrives_chunk_by_chunk_through_nginx(front, ca, portal, master_key, upstream, deployment):
    upstream.behaviour = Behaviour(reply="a b c d e f", chunk_delay=0.3)
    client = sdk(front, ca, master_key, "127.0.0.12")

    started = time.monotonic()
    arrivals = []
    for chunk in client.chat.completions.create(model="test-model", messages=HELLO, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)

    # Six chunks 0.3 s apart upstream: a buffering proxy would deliver them all together at the end.
    assert len(arrivals) == 6
    assert arrivals[0] < 1.0
    assert arrivals[-1] - arrivals[0] > 1.2


def test_plain_http_redirects_to_https(front):
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.13")) as client:
        response = client.post(f"{front.http_url}/v1/chat/completions?x=1", json={})

    assert response.status_code == 301
    assert response.headers["location"] == "https://127.0.0.1/v1/chat/completions?x=1"


def test_the_acme_challenge_is_served_over_plain_http(front):
    challenge = front.webroot / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True, exist_ok=True)
    (challenge / "token-123").write_text("token-123.thumbprint")

    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.14")) as client:
        found = client.get(f"{front.http_url}/.well-known/acme-challenge/token-123")
        missing = client.get(f"{front.http_url}/.well-known/acme-challenge/other")
        probe = client.get(f"{front.http_url}/nginx-health")

    assert (found.status_code, found.text) == (200, "token-123.thumbprint")
    assert missing.status_code == 404
    assert probe.status_code == 200


def test_one_address_gets_json_429s_past_its_burst_and_rate(front, ca, portal):
    statuses, limited = [], []
    with front.client(ca, source_ip="127.0.0.101") as client:
        started = time.monotonic()
        for _ in range(101):
            response = client.get("/health/liveliness")
            statuses.append(response.status_code)
            if response.status_code == 429:
                limited.append(response)
        elapsed = time.monotonic() - started
    with front.client(ca, source_ip="127.0.0.102") as other:
        neighbour = other.get("/health/liveliness")

    passed = statuses.count(200)
    # 100/minute is Nginx's leaky bucket: one request per 0.6 s, plus a burst of 20 on top of the first.
    # The first 21 pass at once, then one more per 0.6 s elapsed; 101 requests sent in about a second
    # are mostly refused (which of the late ones slips through depends on the clock, so count them).
    assert statuses[:21] == [200] * 21
    assert passed <= 21 + int(elapsed / 0.6) + 1, (passed, elapsed)
    assert passed < 50 and set(statuses) == {200, 429}
    body = limited[0].json()
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "ip_rate_limit_exceeded"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert limited[0].headers["content-type"].startswith("application/json")
    assert limited[0].headers["retry-after"] == "1"
    assert_security_headers(limited[0])
    # Another address has its own allowance.
    assert neighbour.status_code == 200


def test_https_responses_carry_the_security_headers(front, ca, portal):
    with front.client(ca, source_ip="127.0.0.15") as client:
        api = client.get("/health/liveliness")
        admin = client.get("/admin/login/")
        not_found = client.get("/v1/nothing-here")

    for response in (api, admin, not_found):
        assert_security_headers(response)
    assert admin.status_code == 200
    assert not_found.status_code in (401, 404)


def test_bodies_up_to_the_portals_limit_pass_and_larger_get_a_json_413(front, ca, portal):
    limit = settings.MAX_REQUEST_BODY_BYTES
    headers = {"content-type": "application/octet-stream"}
    with front.client(ca, source_ip="127.0.0.16") as client:
        at_limit = client.post("/v1/models", content=b"x" * limit, headers=headers)
        over = client.post("/v1/models", content=b"x" * (limit + 1), headers=headers)

    # At the limit the body reaches the portal (which refuses the method, with its request id).
    assert at_limit.status_code == 405
    assert "x-request-id" in at_limit.headers
    # One byte more and Nginx itself refuses it, as JSON.
    assert over.status_code == 413
    assert "x-request-id" not in over.headers
    assert over.json()["error"]["code"] == "request_too_large"
    assert "client intended to send too large body" in front.error_log()


def test_nginx_answers_a_json_503_while_the_portal_is_down(certs, tmp_path):
    cert_dir, ca = certs
    nginx = Nginx(tmp_path, [f"127.0.0.1:{free_port()}"], cert_dir).start()
    try:
        with nginx.client(ca, source_ip="127.0.0.17") as client:
            response = client.get("/v1/models")
    finally:
        nginx.stop()

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "portal_unavailable"
    assert_security_headers(response)


def handshake(port: int, ca, *, ciphers: str | None = None, tls12_only: bool = False) -> str:
    context = tls_context(ca)
    if tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        context.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return f"{tls.version()} {tls.cipher()[0]}"


def test_tls_is_1_2_or_1_3_with_forward_secret_ciphers_only(front, ca):
    assert handshake(front.https_port, ca).startswith("TLSv1.3")
    assert handshake(front.https_port, ca, tls12_only=True, ciphers="ECDHE-RSA-AES128-GCM-SHA256") == \
        "TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256"
    # RSA key exchange (no forward secrecy) and CBC suites are refused, though OpenSSL would offer them.
    for weak in ("AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA"):
        with pytest.raises(ssl.SSLError):
            handshake(front.https_port, ca, tls12_only=True, ciphers=weak)


def test_the_portal_records_the_address_nginx_saw_not_a_forged_one(front, ca, portal, master_key, upstream,
                                                                   deployment):
    from tracking.models import UsageRecord

    body = {"model": "test-model", "messages": HELLO}
    forged = {"authorization": f"Bearer {master_key}", "x-forwarded-for": "203.0.113.9", "x-real-ip": "203.0.113.9"}
    with front.client(ca, source_ip="127.0.0.18") as client:
        via_nginx = client.post("/v1/chat/completions", json=body, headers=forged)
    # Straight to the portal from an address that is not Nginx's: its X-Forwarded-For is not believed.
    direct_transport = httpx.HTTPTransport(local_address="127.0.0.19")
    with httpx.Client(base_url=portal.url, transport=direct_transport) as client:
        direct = client.post("/v1/chat/completions", json=body, headers=forged)

    assert via_nginx.status_code == direct.status_code == 200
    ips = recorded_ips(UsageRecord, [via_nginx.headers["x-request-id"], direct.headers["x-request-id"]])
    assert ips == ["127.0.0.18", "127.0.0.19"]


def recorded_ips(model, request_ids: list[str], timeout: float = 15) -> list[str]:
    """The client_ip of each usage record, once the portal's background writer has stored them."""
    deadline = time.monotonic() + timeout
    while True:
        rows = dict(model.objects.filter(request_id__in=request_ids).values_list("request_id", "client_ip"))
        if len(rows) == len(request_ids) or time.monotonic() > deadline:
            return [rows.get(request_id, "") for request_id in request_ids]
        time.sleep(0.1)


def test_error_bodies_from_nginx_are_valid_json():
    from tests.nginx_helpers import TEMPLATE

    bodies = [line.split("'", 1)[1].rsplit("'", 1)[0] for line in TEMPLATE.read_text().splitlines()
              if line.strip().startswith("return 4") or line.strip().startswith("return 5")]
    assert len(bodies) == 4
    for text in bodies:
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"}
