"""Circuit breaker per model, kept in Redis so every worker and API process shares it.

States: ``closed`` (calls flow) → ``open`` after N consecutive failures (calls are
skipped) → ``half_open`` once the window ends, when exactly one caller gets the probe
ticket → ``closed`` if the probe succeeds, ``open`` again if it fails. Every transition is
one Lua script run on Redis' clock, so racing workers agree without locks, and asking
costs one round trip. Nothing is held across the call itself: in ``closed`` any number
of callers go through at once.

The same script that records an outcome also appends it to the model's recent-calls
list, from which ``/models`` reports the error rate and latency.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import redis

from shared.settings import Settings

ALLOW, PROBE, REJECT = "allow", "probe", "reject"
OUTCOMES = ("ok", "fail", "release")
RECENT_CALLS = 100
RECENT_WINDOW_S = 300
# Idle models keep their state this long after the last write, then start closed again.
STATE_TTL_S = 86400

# KEYS[1] breaker hash; ARGV token, probe lease ms.
# Returns {code, ms}: 1 allow, 2 probe (this caller is the one probe), 0 reject (ms left).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'state', 'until', 'probe_until')
local state = h[1]
if not state or state == 'closed' then return {1, 0} end
if state == 'open' then
  local untl = tonumber(h[2]) or 0
  if now < untl then return {0, untl - now} end
elseif now < (tonumber(h[3]) or 0) then
  return {0, tonumber(h[3]) - now}
end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe', ARGV[1],
           'probe_until', now + tonumber(ARGV[2]))
return {2, 0}
"""

# KEYS[1] breaker hash, KEYS[2] recent-calls list.
# ARGV outcome (ok|fail|release), token, threshold, open ms, retry-after ms, reason,
#      latency ms, ttft ms, state ttl s, recent length.
# Only the probe's own result moves a half-open breaker; results of calls admitted
# before the breaker opened are counted in the stats but change no state.
_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local outcome = ARGV[1]
local h = redis.call('HMGET', KEYS[1], 'state', 'probe', 'until')
local state = h[1] or 'closed'
local is_probe = ARGV[2] ~= '' and h[2] == ARGV[2]
local retry_ms = tonumber(ARGV[5])
if outcome == 'ok' then
  if state == 'closed' then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'fails', 0)
  elseif state == 'half_open' and is_probe then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'fails', 0, 'closed_at', now)
    redis.call('HDEL', KEYS[1], 'probe', 'probe_until', 'until')
  end
elseif outcome == 'fail' then
  local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
  redis.call('HSET', KEYS[1], 'reason', ARGV[6], 'failed_at', now)
  local hold = math.max(tonumber(ARGV[4]), retry_ms)
  if (state == 'closed' and fails >= tonumber(ARGV[3])) or (state == 'half_open' and is_probe) then
    redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + hold, 'opened_at', now)
    redis.call('HDEL', KEYS[1], 'probe', 'probe_until')
    redis.call('HINCRBY', KEYS[1], 'opens', 1)
    state = 'opening'
  elseif state == 'open' and retry_ms > 0 then
    redis.call('HSET', KEYS[1], 'until', math.max(tonumber(h[3]) or 0, now + retry_ms))
  end
elseif outcome == 'release' and state == 'half_open' and is_probe then
  redis.call('HSET', KEYS[1], 'probe_until', 0)
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[9]))
if outcome ~= 'release' then
  redis.call('LPUSH', KEYS[2], now .. '|' .. outcome .. '|' .. ARGV[7] .. '|' .. ARGV[8])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[10]) - 1)
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[9]))
end
return state
"""

# KEYS[1] breaker hash. Returns the hash as a flat list plus Redis' clock in ms.
_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, '_now')
table.insert(out, now)
return out
"""


def breaker_key(model_id: str) -> str:
    return f"chorus:model:{model_id}:breaker"


def recent_key(model_id: str) -> str:
    return f"chorus:model:{model_id}:recent"


def probe_key(model_id: str) -> str:
    """The last health probe's result (written by ``workers.health``)."""
    return f"chorus:model:{model_id}:probe"


def model_keys(model_id: str) -> list[str]:
    """Every key this module and the health probe keep for a model (for resets)."""
    return [breaker_key(model_id), recent_key(model_id), probe_key(model_id)]


@dataclass(frozen=True)
class BreakerConfig:
    failures: int = 3
    open_s: float = 30.0
    # How long a half-open probe holds the breaker before another caller may probe
    # instead (a probe whose worker died must not keep the model out forever).
    probe_s: float = 60.0

    @classmethod
    def from_settings(cls, s: Settings) -> BreakerConfig:
        return cls(failures=max(1, s.breaker_failures), open_s=s.breaker_open_s,
                   probe_s=s.breaker_probe_s)


@dataclass(frozen=True)
class Ticket:
    """The breaker's answer for one call; hand it back to ``record``."""

    model: str
    decision: str
    token: str = ""
    retry_in_s: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.decision != REJECT

    def reason(self) -> str:
        if self.decision != REJECT:
            return ""
        return f"circuit open, retry in {self.retry_in_s:.1f} s"


UNCHECKED = ""


class Breaker:
    def __init__(self, client: redis.Redis, config: BreakerConfig | None = None) -> None:
        self.client = client
        self.config = config or BreakerConfig()
        self._acquire = client.register_script(_ACQUIRE)
        self._record = client.register_script(_RECORD)
        self._read = client.register_script(_READ)

    def acquire(self, model_id: str) -> Ticket:
        """May this call go ahead? One round trip; no lock outlives the script."""
        token = os.urandom(8).hex()
        code, ms = self._acquire(
            keys=[breaker_key(model_id)], args=[token, int(self.config.probe_s * 1000)]
        )
        if int(code) == 1:
            return Ticket(model_id, ALLOW)
        if int(code) == 2:
            return Ticket(model_id, PROBE, token)
        return Ticket(model_id, REJECT, retry_in_s=int(ms) / 1000)

    def record(
        self,
        model_id: str,
        outcome: str,
        *,
        ticket: Ticket | None = None,
        retry_after_s: float | None = None,
        reason: str = "",
        latency_ms: float | None = None,
        ttft_ms: float | None = None,
    ) -> str:
        """Record one call's outcome (``ok``, ``fail`` or ``release`` for a call that says
        nothing about the model's health); returns the state before it, or ``opening``."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        c = self.config
        state = self._record(
            keys=[breaker_key(model_id), recent_key(model_id)],
            args=[
                outcome,
                ticket.token if ticket is not None else UNCHECKED,
                c.failures,
                int(c.open_s * 1000),
                int((retry_after_s or 0) * 1000),
                reason[:300],
                "" if latency_ms is None else f"{latency_ms:.1f}",
                "" if ttft_ms is None else f"{ttft_ms:.1f}",
                STATE_TTL_S,
                RECENT_CALLS,
            ],
        )
        return state.decode() if isinstance(state, bytes) else str(state)

    def state(self, model_id: str) -> dict[str, Any]:
        """The breaker as operators see it; an elapsed open window reads ``half_open``."""
        raw = self._read(keys=[breaker_key(model_id)])
        fields = {_text(raw[i]): _text(raw[i + 1]) for i in range(0, len(raw), 2)}
        now = int(fields.pop("_now"))
        state = fields.get("state", "closed")
        out: dict[str, Any] = {
            "state": state,
            "consecutive_failures": int(fields.get("fails", 0)),
            "opens": int(fields.get("opens", 0)),
            "last_failure": fields.get("reason") or None,
        }
        if state == "open":
            left = int(fields.get("until", 0)) - now
            if left > 0:
                out["retry_in_s"] = round(left / 1000, 3)
            else:
                out["state"] = "half_open"
        if out["state"] == "half_open":
            out["probe_in_flight"] = int(fields.get("probe_until") or 0) > now
        return out


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def recent_stats(client: redis.Redis, model_id: str, window_s: float = RECENT_WINDOW_S,
                 now: float | None = None) -> dict[str, Any]:
    """Error rate and latency of the model's last calls (real calls and health probes)."""
    entries = client.lrange(recent_key(model_id), 0, RECENT_CALLS - 1)
    cutoff = ((time.time() if now is None else now) - window_s) * 1000
    calls = errors = 0
    latency: list[float] = []
    ttft: list[float] = []
    for raw in entries:
        ts, outcome, lat, first = _text(raw).split("|")
        if float(ts) < cutoff:
            break
        calls += 1
        if outcome != "ok":
            errors += 1
            continue
        if lat:
            latency.append(float(lat))
        if first:
            ttft.append(float(first))
    return {
        "window_s": window_s,
        "calls": calls,
        "errors": errors,
        "error_rate": round(errors / calls, 4) if calls else None,
        "latency_ms_p50": round(statistics.median(latency), 1) if latency else None,
        "ttft_ms_p50": round(statistics.median(ttft), 1) if ttft else None,
    }


def model_health(client: redis.Redis, breaker: Breaker, model_id: str) -> dict[str, Any]:
    """What ``GET /api/v1/models`` shows per model: breaker, recent calls, last probe."""
    probe = {_text(k): _text(v) for k, v in client.hgetall(probe_key(model_id)).items()}
    return {
        "breaker": breaker.state(model_id),
        "recent": recent_stats(client, model_id),
        "probe": None if not probe else {
            "ok": probe.get("ok") == "1",
            "status": probe.get("status"),
            "at": float(probe.get("at", 0)),
            "latency_ms": float(probe["latency_ms"]) if probe.get("latency_ms") else None,
            "error": probe.get("error") or None,
        },
    }
