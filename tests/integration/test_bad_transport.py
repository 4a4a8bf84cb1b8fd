"""Malformed HTTP around a request (framing, handshakes, out-of-range parameters) is a
4xx that changes nothing, never a 5xx."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import httpx
import pytest

from tests.integration.footprint import unchanged
from tests.stack import Stack

CHAT = b'{"model":"gpt-5-mini","messages":[{"role":"user","content":"hi"}]}'


def exchange(stack: Stack, raw: bytes, hang_up: bool = False) -> tuple[int, bytes]:
    """Send ``raw`` as is on a new connection (then stop sending, if ``hang_up``); the
    status and body of the answer."""
    url = urlparse(stack.url)
    with socket.create_connection((url.hostname, url.port), timeout=15) as conn:
        conn.sendall(raw)
        if hang_up:
            conn.shutdown(socket.SHUT_WR)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(head.split(b" ", 2)[1]), body


def request(path: str, key: str, headers: bytes = b"", body: bytes = b"",
            method: bytes = b"POST") -> bytes:
    return (method + b" " + path.encode() + b" HTTP/1.1\r\nHost: chorus\r\n"
            + f"Authorization: Bearer {key}\r\n".encode() + headers
            + b"Connection: close\r\n\r\n" + body)


def test_a_broken_chunked_body_is_400(stack: Stack, key: str) -> None:
    headers = b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    with unchanged(stack, key):
        status, body = exchange(stack, request("/api/v1/chat", key, headers,
                                               b"zz\r\n" + CHAT + b"\r\n0\r\n\r\n"))
    assert status == 400, body
    assert b'"code":"invalid_request"' in body


@pytest.mark.parametrize(("headers", "sent"), [
    (b"Transfer-Encoding: chunked\r\n", b"%x\r\n" % len(CHAT) + CHAT[:10]),
    (b"Content-Length: %d\r\n" % len(CHAT), CHAT[:10]),
], ids=["chunked", "content-length"])
def test_a_client_gone_mid_body_is_400_and_nothing_else(
    stack: Stack, key: str, headers: bytes, sent: bytes
) -> None:
    log = stack.logs / "web.log"
    logged = log.stat().st_size
    with unchanged(stack, key):
        status, _ = exchange(stack, request(
            "/api/v1/chat", key, b"Content-Type: application/json\r\n" + headers, sent),
            hang_up=True)
    assert status == 400
    assert b"Traceback" not in log.read_bytes()[logged:]


@pytest.mark.parametrize("headers", [
    b"Content-Length: abc\r\n", b"Content-Length: -1\r\n", b"Content-Length: +5\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
])
def test_a_malformed_content_length_is_400(stack: Stack, key: str, headers: bytes) -> None:
    with unchanged(stack, key):
        status, _ = exchange(stack, request("/api/v1/chat", key,
                                            b"Content-Type: application/json\r\n" + headers,
                                            CHAT))
    assert status == 400


def test_a_content_length_past_the_limit_is_413(stack: Stack, key: str) -> None:
    with unchanged(stack, key):
        status, body = exchange(stack, request(
            "/api/v1/chat", key,
            b"Content-Type: application/json\r\nContent-Length: 99999999999999999999999\r\n",
            CHAT))
    assert status == 413 and b"payload_too_large" in body


@pytest.mark.parametrize("headers", [
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
])
def test_a_broken_websocket_handshake_is_400(stack: Stack, key: str, headers: bytes) -> None:
    status, body = exchange(stack, request("/api/v1/ws", key, headers, method=b"GET"))
    assert status == 400, body
    assert b"WebSocket upgrade" in body


@pytest.mark.parametrize(("query", "param"), [
    ("since=9999-12-31T23:59:59-23:59", "since"),
    ("until=0001-01-01T00:00:00%2B23:59", "until"),
    ("cursor=99999999999999999999999999", "cursor"),
])
def test_out_of_range_usage_queries_are_400(api: httpx.Client, query: str,
                                            param: str) -> None:
    r = api.get(f"/api/v1/usage?{query}")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_credits_cursor_past_64_bits_is_400(api: httpx.Client) -> None:
    r = api.get("/api/v1/credits?cursor=9223372036854775808")
    assert r.status_code == 400 and r.json()["error"]["param"] == "cursor"


@pytest.mark.parametrize("path", ["/api/v1/jobs/%zz", "/api/v1/usage?model=%e2%28%zz",
                                  "/api/v1/batches/%ff%fe"])
def test_invalid_percent_encoding_is_never_a_5xx(api: httpx.Client, path: str) -> None:
    assert api.get(path).status_code in (200, 400, 404)


def test_a_time_offset_the_database_refuses_is_compared_in_utc(api: httpx.Client) -> None:
    r = api.get("/api/v1/usage?since=0148-10-10T06%3A00%3A32-17%3A32&until=2999-01-01T00%3A00"
                "%3A00%2B23%3A59")
    assert r.status_code == 200, r.text
