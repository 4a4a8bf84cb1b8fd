"""Rate limits across two real API processes with the SPEC's numbers (the shared stack
runs with limits scaled up so other tests never meet them)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.stack import Stack

MSG = [{"role": "user", "content": "hi"}]
REAL_LIMITS = {"CHORUS_RATE_LIMIT_SCALE": "1", "CHORUS_TRUSTED_PROXIES": "1"}


@pytest.fixture(scope="module")
def pair(stack: Stack) -> Iterator[tuple[str, str]]:
    """Two API processes with the real limits, sharing the stack's Redis and database."""
    urls = (stack.start_api("rl-a", env=REAL_LIMITS), stack.start_api("rl-b", env=REAL_LIMITS))
    try:
        yield urls
    finally:
        stack.stop_proc("rl-a")
        stack.stop_proc("rl-b")


def fresh_ip() -> dict[str, str]:
    """A client address of its own per test (the processes trust one proxy hop)."""
    n = uuid.uuid4().int
    return {"X-Forwarded-For": f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"}


def test_two_processes_share_one_bucket(stack: Stack, mock: httpx.Client,
                                        pair: tuple[str, str]) -> None:
    """91 chat requests on a free key through two processes. Free chat is 90 x 0.6 = 54 per
    60 s, refilling at 0.9 a second: 54 pass, plus at most what refilled meanwhile."""
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 0, "token_ms": 0,
                                     "tokens": 3})
    key = stack.create_key(credits=1000, tier="free")
    headers = {"Authorization": f"Bearer {key}", **fresh_ip()}
    clients = [httpx.Client(base_url=u, headers=headers, timeout=30) for u in pair]

    def send(n: int) -> tuple[int, httpx.Response]:
        return n % 2, clients[n % 2].post("/api/v1/chat",
                                          json={"model": "gpt-5-mini", "messages": MSG})

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(send, range(91)))
    elapsed = time.monotonic() - start
    ok = [r for _, r in results if r.status_code == 200]
    limited = [(p, r) for p, r in results if r.status_code == 429]
    assert len(ok) + len(limited) == 91, Counter(r.status_code for _, r in results)
    # One bucket for both: neither process could have served 54 on its own share (~46).
    assert 54 <= len(ok) <= 54 + int(0.9 * elapsed) + 1, (len(ok), elapsed)
    assert {p for p, _ in limited} == {0, 1}  # both processes refused once it ran dry
    for _, r in limited:
        assert r.json()["error"]["code"] == "rate_limited"
        assert r.headers["X-RateLimit-Limit"] == "54"
        assert r.headers["X-RateLimit-Remaining"] == "0"
        # One token takes 60/54 = 1.11 s, so never more than 2 s to wait.
        assert r.headers["Retry-After"] in ("1", "2")
    for r in ok:
        assert r.headers["X-RateLimit-Limit"] == "54"
    # The advice is right: too early is still refused, waiting it out is served.
    again = clients[0].post("/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG})
    assert again.status_code == 429
    time.sleep(int(again.headers["Retry-After"]))
    served = clients[1].post("/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG})
    assert served.status_code == 200, served.text
    for c in clients:
        c.close()


def test_limits_follow_tier_and_endpoint_on_every_response(stack: Stack,
                                                           pair: tuple[str, str]) -> None:
    paid = {"Authorization": f"Bearer {stack.create_key(tier='paid')}", **fresh_ip()}
    free = {"Authorization": f"Bearer {stack.create_key(tier='free')}", **fresh_ip()}
    a = pair[0]
    cases = [
        (httpx.post(f"{a}/api/v1/chat", json={"model": "nope", "messages": MSG}, headers=paid),
         400, "135"),
        (httpx.post(f"{a}/api/v1/compare", json={}, headers=paid), 400, "67"),
        (httpx.post(f"{a}/api/v1/judge", json={}, headers=free), 400, "18"),
        (httpx.get(f"{a}/api/v1/credits", headers=paid), 200, "270"),
        (httpx.get(f"{a}/api/v1/jobs/{uuid.uuid4()}", headers=free), 404, "108"),
        (httpx.get(f"{a}/api/v1/no-such-thing", headers=paid), 404, "270"),
        # No valid key: only the address is metered, at the free per-IP limit.
        (httpx.get(f"{a}/api/v1/credits", headers=fresh_ip()), 401, "120"),
        (httpx.get(f"{a}/api/v1/credits",
                   headers={"Authorization": "Bearer ch_sk_wrong", **fresh_ip()}), 401, "120"),
    ]
    for resp, status, limit in cases:
        assert resp.status_code == status, resp.text
        assert resp.headers["X-RateLimit-Limit"] == limit, (resp.request.url, resp.headers)
        remaining = int(resp.headers["X-RateLimit-Remaining"])
        assert 0 <= remaining < int(limit)
        assert 0 < int(resp.headers["X-RateLimit-Reset"]) <= 60
        assert "Retry-After" not in resp.headers
    probe = httpx.get(f"{a}/healthz")
    assert probe.status_code == 200


def test_per_ip_limit_spans_keys_and_processes(stack: Stack, pair: tuple[str, str]) -> None:
    """Free per-IP is 120 per 60 s (2 a second): unauthenticated calls from one address."""
    ip = fresh_ip()
    start = time.monotonic()

    def send(n: int) -> httpx.Response:
        return httpx.get(f"{pair[n % 2]}/api/v1/credits", headers=ip)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(send, range(130)))
    elapsed = time.monotonic() - start
    statuses = Counter(r.status_code for r in results)
    assert set(statuses) == {401, 429}
    assert 120 <= statuses[401] <= 120 + int(2 * elapsed) + 1, (statuses, elapsed)
    refused = next(r for r in results if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1"  # a token every 0.5 s
    assert refused.headers["X-RateLimit-Limit"] == "120"


def test_redis_down_is_503_never_a_free_request(stack: Stack, mock: httpx.Client) -> None:
    key = stack.create_key(credits=100)
    url = stack.start_api("api-dead-redis", env={"CHORUS_REDIS_URL": "redis://127.0.0.1:1/0"})
    try:
        h = {"Authorization": f"Bearer {key}"}
        chat = httpx.post(f"{url}/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG},
                          headers=h, timeout=30)
        credits = httpx.get(f"{url}/api/v1/credits", headers=h, timeout=30)
        alive = httpx.get(f"{url}/healthz", timeout=30)
    finally:
        stack.stop_proc("api-dead-redis")
    for r in (chat, credits):
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable"
        assert "redis" in r.json()["error"]["message"]
    assert alive.status_code == 200
    assert mock.get("/_mock/stats").json()["calls"].get("gpt-5-mini", 0) == 0
