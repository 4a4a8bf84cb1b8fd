"""Token buckets in a real Redis: the numbers, the atomic take, the headers, Redis down."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
import redis
from flask import Flask, Response, jsonify

from api import ratelimit
from api.errors import ApiError
from api.ratelimit import Bucket, Decision, Limits, RateLimiter
from shared.keys import KeyOwner
from shared.settings import Settings

T0 = 1_800_000_000_000  # a fixed "now" in ms: the script takes the clock as an argument


@pytest.fixture(scope="module")
def redis_url(redis_db_url: str) -> str:
    return redis_db_url


@pytest.fixture
def limiter(redis_url: str) -> RateLimiter:
    return RateLimiter(redis.Redis.from_url(redis_url), Limits())


def bucket(limit: int, window_s: int = 60) -> Bucket:
    return Bucket(f"test:{uuid.uuid4().hex}", limit, window_s)


def test_spec_numbers_with_tier_multipliers() -> None:
    lim = Limits()
    assert [lim.key_limit(b, "free") for b in ratelimit.BUCKETS] == [54, 27, 18, 18, 18, 108]
    assert [lim.key_limit(b, "paid") for b in ratelimit.BUCKETS] == [135, 67, 45, 45, 45, 270]
    assert lim.key_limit("no-such-bucket", "paid") == 270
    assert (lim.ip_limit("free"), lim.ip_limit("paid")) == (120, 360)


def test_settings_scale_and_override_limits() -> None:
    lim = Limits.from_settings(Settings(rate_limit_scale=1000, rate_limits="chat=10,ip.free=7"))
    assert lim.key_limit("chat", "free") == 6000
    assert lim.key_limit("judge", "paid") == 45000
    assert lim.ip_limit("free") == 7000
    tiny = Limits.from_settings(Settings(rate_limit_scale=0.001))
    assert tiny.key_limit("judge", "free") == 1  # never rounds down to "nothing allowed"


@pytest.mark.parametrize(
    ("scale", "overrides"),
    [(0, ""), (-1, ""), (float("nan"), ""), (1, "chat"), (1, "chat=0"), (1, "chat=x"),
     (1, "nope=5"), (1, "ip.gold=5")],
)
def test_bad_rate_limit_settings_fail_at_start(scale: float, overrides: str) -> None:
    with pytest.raises(ValueError, match="CHORUS_RATE_LIMIT"):
        Limits.from_settings(Settings(rate_limit_scale=scale, rate_limits=overrides))


def test_a_bucket_allows_its_limit_then_says_when_to_retry(limiter: RateLimiter) -> None:
    b = bucket(3)  # one token per 20 s
    seen = [limiter.take([b], now_ms=T0) for _ in range(4)]
    assert [d.allowed for d in seen] == [True, True, True, False]
    assert [d.remaining for d in seen] == [2, 1, 0, 0]
    assert seen[2].reset_s == 60  # three tokens to regain at 20 s each
    assert seen[3].retry_after_s == 20 and seen[3].limit == 3
    assert not limiter.take([b], now_ms=T0 + 19_999).allowed
    after = limiter.take([b], now_ms=T0 + 20_000)
    assert after.allowed and after.remaining == 0


def test_retry_after_rounds_partial_tokens_up(limiter: RateLimiter) -> None:
    b = bucket(54)  # the free chat bucket: a token every 1.11 s
    for _ in range(54):
        assert limiter.take([b], now_ms=T0).allowed
    refused = limiter.take([b], now_ms=T0 + 500)
    assert not refused.allowed and refused.retry_after_s == 1  # 0.61 s to go
    assert not limiter.take([b], now_ms=T0 + 1_000).allowed
    assert limiter.take([b], now_ms=T0 + 1_112).allowed


def test_refill_is_continuous_and_capped(limiter: RateLimiter) -> None:
    b = bucket(60)  # a token a second
    for _ in range(60):
        limiter.take([b], now_ms=T0)
    assert limiter.take([b], now_ms=T0 + 10_500).remaining == 9  # 10.5 regained, 1 taken
    assert limiter.take([b], now_ms=T0 + 3_600_000).remaining == 59  # full, not 3600


def test_all_buckets_or_none(limiter: RateLimiter) -> None:
    key, ip = bucket(10), bucket(1)
    assert limiter.take([key, ip], now_ms=T0).allowed
    refused = limiter.take([key, ip], now_ms=T0)
    assert not refused.allowed
    assert refused.limit == 1  # the bucket that refused is the one reported
    # The refused request took nothing from the key's bucket.
    assert limiter.take([key], now_ms=T0).remaining == 8


def test_two_limiters_share_one_bucket(redis_url: str) -> None:
    """Two API processes are two limiters on one Redis: the limit is for both together."""
    a = RateLimiter(redis.Redis.from_url(redis_url), Limits())
    b = RateLimiter(redis.Redis.from_url(redis_url), Limits())
    shared = bucket(5)
    allowed = [(a if n % 2 else b).take([shared], now_ms=T0).allowed for n in range(8)]
    assert allowed == [True] * 5 + [False] * 3


def test_untouched_buckets_expire_once_full(limiter: RateLimiter, redis_url: str) -> None:
    b = bucket(60)
    limiter.take([b], now_ms=T0)
    ttl = redis.Redis.from_url(redis_url).pttl(b.key)
    assert 1_000 < ttl <= 2_000  # one token to regain (1 s) plus a second of slack


def test_redis_clock_is_used_without_an_explicit_now(limiter: RateLimiter) -> None:
    b = bucket(2)
    assert [limiter.take([b]).allowed for _ in range(3)] == [True, True, False]


def test_buckets_for_keys_and_anonymous_callers(limiter: RateLimiter) -> None:
    owner = KeyOwner(key_id=42, account_id=1, tier="paid", zero_retention=False)
    key_b, ip_b = limiter.buckets_for("compare", owner, "10.0.0.9")
    assert (key_b.key, key_b.limit) == ("chorus:rl:key:42:compare", 67)
    assert (ip_b.key, ip_b.limit) == ("chorus:rl:ip:paid:10.0.0.9", 360)
    (anon,) = limiter.buckets_for("chat", None, "10.0.0.9")
    assert (anon.key, anon.limit) == ("chorus:rl:ip:free:10.0.0.9", 120)


def test_headers() -> None:
    ok = Decision(True, 54, 3, 40).headers()
    assert ok == {"X-RateLimit-Limit": "54", "X-RateLimit-Remaining": "3",
                  "X-RateLimit-Reset": "40"}
    assert Decision(False, 54, 0, 60, retry_after_s=2).headers()["Retry-After"] == "2"


# The Flask hooks, on a bare app with the same wiring as api.app.create_app.


def make_app(redis_url: str, **settings: object) -> Flask:
    app = Flask("t")
    conf = replace(Settings(), redis_url=redis_url, **settings)  # type: ignore[arg-type]
    app.config["CHORUS_SETTINGS"] = conf
    app.register_error_handler(ApiError, lambda exc: exc.response())
    ratelimit.init_app(app, redis.Redis.from_url(redis_url), conf)

    @app.get("/api/v1/thing")
    def thing() -> Response:
        return jsonify({"ok": True})

    @app.get("/api/v1/broken")
    def broken() -> Response:
        raise ApiError(400, "invalid_request", "no")

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    return app


def test_every_response_carries_headers_and_429_has_retry_after(redis_url: str) -> None:
    app = make_app(redis_url, rate_limits="ip.free=3", trusted_proxies=1)
    client = app.test_client()
    ip = {"X-Forwarded-For": f"10.1.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"}
    first = client.get("/api/v1/thing", headers=ip)
    assert first.status_code == 200
    assert first.headers["X-RateLimit-Limit"] == "3"
    assert first.headers["X-RateLimit-Remaining"] == "2"
    assert int(first.headers["X-RateLimit-Reset"]) == 20
    bad = client.get("/api/v1/broken", headers=ip)
    missing = client.get("/api/v1/nowhere", headers=ip)
    assert (bad.status_code, missing.status_code) == (400, 404)
    assert bad.headers["X-RateLimit-Remaining"] == "1"
    assert missing.headers["X-RateLimit-Remaining"] == "0"
    limited = client.get("/api/v1/thing", headers=ip)
    assert limited.status_code == 429
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 20
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    # Another address has its own bucket; probes are never metered.
    other = client.get("/api/v1/thing", headers={"X-Forwarded-For": "10.250.0.1"})
    assert other.status_code == 200
    probe = client.get("/healthz", headers=ip)
    assert probe.status_code == 200 and "X-RateLimit-Limit" not in probe.headers


def test_forwarded_for_is_ignored_unless_proxies_are_trusted(redis_url: str) -> None:
    app = make_app(redis_url, rate_limits="ip.free=1")
    client = app.test_client()
    # Without a trusted proxy a client cannot pick a fresh address per request.
    client.get("/api/v1/thing", headers={"X-Forwarded-For": "10.9.9.1"},
               environ_base={"REMOTE_ADDR": "10.77.0.1"})
    again = client.get("/api/v1/thing", headers={"X-Forwarded-For": "10.9.9.2"},
                       environ_base={"REMOTE_ADDR": "10.77.0.1"})
    assert again.status_code == 429


def test_redis_down_is_503_never_a_free_request() -> None:
    app = make_app("redis://127.0.0.1:1/0")
    resp = app.test_client().get("/api/v1/thing")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["error"]["code"] == "unavailable" and "redis" in body["error"]["message"]
    assert "ok" not in body
