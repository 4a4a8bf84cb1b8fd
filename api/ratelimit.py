"""Token-bucket rate limits kept in Redis, so every API process draws from the same buckets.

Each request takes one token from its key's bucket for the endpoint group and one from
its client address's bucket, in one Lua script call: both or neither, with Redis' own
clock, so processes on different hosts agree. Buckets refill continuously (``limit``
tokens per window). Redis unreachable means 503, never an unmetered request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import redis
from flask import Flask, Response, current_app, g, request

from api.errors import ApiError
from shared.keys import KeyOwner
from shared.settings import Settings

WINDOW_S = 60
BUCKETS: dict[str, int] = {
    "chat": 90, "compare": 45, "blend": 30, "judge": 30, "uploads": 30, "default": 180,
}
TIERS: dict[str, Decimal] = {"paid": Decimal("1.5"), "free": Decimal("0.6")}
IP_LIMITS: dict[str, int] = {"free": 120, "paid": 360}

# (method, path) -> bucket; everything else under the API draws from "default".
ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/chat"): "chat",
    ("POST", "/v1/chat/completions"): "chat",
    ("POST", "/api/v1/compare"): "compare",
    ("POST", "/api/v1/blend"): "blend",
    ("POST", "/api/v1/judge"): "judge",
    ("POST", "/api/v1/batches"): "uploads",
    ("POST", "/api/v1/files"): "uploads",
}
# Probes must answer while Redis is down (that is what they report), so they are unmetered.
EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})

# KEYS: bucket keys. ARGV[1]: now in ms (0: Redis' clock); then per bucket: limit, window ms.
# Returns {allowed, wait_ms, remaining_1, full_ms_1, remaining_2, full_ms_2, ...}.
TAKE = """
local now = tonumber(ARGV[1])
if now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local levels = {}
local allowed = 1
local wait = 0
for i = 1, #KEYS do
  local cap = tonumber(ARGV[2 * i])
  local win = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = cap
  if state[1] and state[2] then
    local elapsed = math.max(0, now - tonumber(state[2]))
    tokens = math.min(cap, tonumber(state[1]) + elapsed * cap / win)
  end
  levels[i] = tokens
  if tokens < 1 then
    allowed = 0
    wait = math.max(wait, math.ceil((1 - tokens) * win / cap))
  end
end
local out = {allowed, wait}
for i = 1, #KEYS do
  local cap = tonumber(ARGV[2 * i])
  local win = tonumber(ARGV[2 * i + 1])
  local tokens = levels[i] - allowed
  local full_ms = math.ceil((cap - tokens) * win / cap)
  redis.call('HSET', KEYS[i], 'tokens', string.format('%.6f', tokens),
             'ts', string.format('%.0f', now))
  -- A bucket left alone refills completely; then it is the same as no bucket at all.
  redis.call('PEXPIRE', KEYS[i], full_ms + 1000)
  out[#out + 1] = math.floor(tokens)
  out[#out + 1] = full_ms
end
return out
"""


@dataclass(frozen=True)
class Bucket:
    key: str
    limit: int
    window_s: int = WINDOW_S


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int = 0

    def headers(self) -> dict[str, str]:
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


@dataclass(frozen=True)
class Limits:
    """The configured numbers: SPEC defaults, scaled, with single limits overridden."""

    buckets: dict[str, int] = field(default_factory=lambda: dict(BUCKETS))
    ip: dict[str, int] = field(default_factory=lambda: dict(IP_LIMITS))
    tiers: dict[str, Decimal] = field(default_factory=lambda: dict(TIERS))
    scale: Decimal = Decimal(1)

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        scale = Decimal(str(settings.rate_limit_scale))
        if not scale.is_finite() or scale <= 0:
            raise ValueError("CHORUS_RATE_LIMIT_SCALE must be a positive number")
        buckets, ip = dict(BUCKETS), dict(IP_LIMITS)
        for item in filter(None, (p.strip() for p in settings.rate_limits.split(","))):
            name, _, raw = item.partition("=")
            name = name.strip()
            target = ip if name.startswith("ip.") else buckets
            name = name.removeprefix("ip.")
            if name not in target or not raw.strip().isdigit() or int(raw) < 1:
                raise ValueError(
                    f"CHORUS_RATE_LIMITS: {item!r} is not NAME=N (N >= 1) with NAME one of "
                    f"{', '.join([*BUCKETS, *('ip.' + t for t in IP_LIMITS)])}"
                )
            target[name] = int(raw)
        return cls(buckets, ip, dict(TIERS), scale)

    def key_limit(self, bucket: str, tier: str) -> int:
        base = self.buckets.get(bucket, self.buckets["default"])
        return max(1, int(base * self.tiers.get(tier, self.tiers["free"]) * self.scale))

    def ip_limit(self, tier: str) -> int:
        return max(1, int(self.ip.get(tier, self.ip["free"]) * self.scale))


class RateLimiter:
    def __init__(self, client: redis.Redis, limits: Limits) -> None:
        self.limits = limits
        self._take = client.register_script(TAKE)

    def take(self, buckets: Sequence[Bucket], now_ms: int = 0) -> Decision:
        """Take a token from every bucket, or from none; report the tightest bucket."""
        args: list[int] = [now_ms]
        for b in buckets:
            args += [b.limit, b.window_s * 1000]
        raw = [int(x) for x in self._take(keys=[b.key for b in buckets], args=args)]
        allowed, wait_ms = raw[0] == 1, raw[1]
        states = [(b, raw[2 + 2 * i], raw[3 + 2 * i]) for i, b in enumerate(buckets)]
        if allowed:
            b, remaining, full_ms = min(states, key=lambda s: s[1])
        else:
            # Report a bucket that refused (one with no whole token left).
            b, remaining, full_ms = next(s for s in states if s[1] < 1)
        return Decision(
            allowed=allowed,
            limit=b.limit,
            remaining=max(0, remaining),
            reset_s=math.ceil(full_ms / 1000),
            retry_after_s=max(1, math.ceil(wait_ms / 1000)) if not allowed else 0,
        )

    def buckets_for(self, bucket: str, owner: KeyOwner | None, ip: str) -> list[Bucket]:
        tier = owner.tier if owner is not None else "free"
        out = [Bucket(f"chorus:rl:ip:{tier}:{ip}", self.limits.ip_limit(tier))]
        if owner is not None:
            limit = self.limits.key_limit(bucket, tier)
            out.insert(0, Bucket(f"chorus:rl:key:{owner.key_id}:{bucket}", limit))
        return out


def client_ip(trusted_proxies: int) -> str:
    """The caller's address; X-Forwarded-For counts only through the configured proxies."""
    forwarded = [p.strip() for p in request.headers.get("X-Forwarded-For", "").split(",")]
    forwarded = [p for p in forwarded if p]
    if trusted_proxies > 0 and forwarded:
        return forwarded[-min(trusted_proxies, len(forwarded))]
    return request.remote_addr or "unknown"


def _owner() -> KeyOwner | None:
    """The key's owner if the request carries a valid key (shares ``api.auth``'s cache)."""
    from api.auth import lookup_key

    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    # A database outage raises a 503 here: without the key's tier there is no limit.
    return lookup_key(token.strip())


def _limit() -> None:
    if request.path in EXEMPT:
        return
    limiter: RateLimiter = current_app.extensions["chorus.ratelimit"]
    settings: Settings = current_app.config["CHORUS_SETTINGS"]
    owner = _owner()
    bucket = ROUTES.get((request.method, request.path), "default")
    try:
        ip = client_ip(settings.trusted_proxies)
        decision = limiter.take(limiter.buckets_for(bucket, owner, ip))
    except redis.RedisError as exc:
        raise ApiError(
            503, "unavailable", "rate limiter unavailable (redis); try again shortly"
        ) from exc
    g.ratelimit = decision
    if not decision.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"rate limit of {decision.limit} requests per {WINDOW_S} s reached; "
            f"retry in {decision.retry_after_s} s",
        )


def _headers(resp: Response) -> Response:
    decision: Decision | None = g.get("ratelimit")
    if decision is not None:
        resp.headers.update(decision.headers())
    return resp


def init_app(app: Flask, client: redis.Redis, settings: Settings) -> None:
    """Meter every request before its view runs; stamp every response with the headers."""
    app.extensions["chorus.ratelimit"] = RateLimiter(client, Limits.from_settings(settings))
    app.before_request(_limit)
    app.after_request(_headers)
