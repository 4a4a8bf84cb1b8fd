"""Health probes: on a beat schedule, one tiny call per model, recorded in Redis.

A probe is a one-token, non-streaming call. It goes through the model's breaker like any
call: an open breaker is not probed (the provider asked for quiet), and once the open
window ends the probe may be the one half-open call that closes it again, so a model
recovers even when no user traffic asks for it. Results feed the same recent-calls
window as real calls (as time to first token: a probe's whole answer is one token).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis

from shared.breaker import Breaker, Ticket, probe_key
from shared.registry import ModelSpec
from workers.breaking import breaker_for
from workers.providers.base import ChatCall
from workers.providers.client import Timeouts, complete_chat
from workers.providers.errors import ProviderError
from workers.runtime import Runtime

log = logging.getLogger(__name__)

PROBE_CALL = ChatCall(messages=[{"role": "user", "content": "ping"}], max_tokens=1)
PROBE_TIMEOUT_S = 10.0
MAX_PARALLEL = 16
# A probe result older than a day says nothing; let it go.
PROBE_TTL_S = 86400


@dataclass(frozen=True)
class ProbeResult:
    model: str
    status: str  # ok | failed | skipped
    latency_ms: float | None = None
    error: str = ""


def probe_model(rt: Runtime, breaker: Breaker, model: ModelSpec) -> ProbeResult:
    try:
        ticket: Ticket | None = breaker.acquire(model.id)
    except redis.RedisError as exc:
        log.warning("health probe of %s: breaker unavailable: %s", model.id, exc)
        ticket = None
    if ticket is not None and not ticket.allowed:
        result = ProbeResult(model.id, "skipped", error=ticket.reason())
        _store(rt, result)
        return result
    timeouts = Timeouts(connect=rt.settings.connect_timeout_s,
                        idle=min(rt.settings.idle_timeout_s, PROBE_TIMEOUT_S))
    start = time.perf_counter()
    error: ProviderError | None = None
    try:
        complete_chat(rt.http, model, PROBE_CALL, timeouts=timeouts)
    except ProviderError as exc:
        error = exc
    latency = (time.perf_counter() - start) * 1000
    reason = "" if error is None else f"{error.code}: {error.message}"
    # A rejected probe (bad key, bad request) shows the host is up, so it is no failure.
    outcome = "ok" if error is None else "fail" if error.retryable else "release"
    try:
        breaker.record(model.id, outcome, ticket=ticket, retry_after_s=getattr(
            error, "retry_after", None), reason=reason, ttft_ms=latency)
    except redis.RedisError as exc:
        log.warning("health probe of %s: outcome not recorded: %s", model.id, exc)
    result = ProbeResult(model.id, "ok" if error is None else "failed", latency, reason)
    _store(rt, result)
    return result


def _store(rt: Runtime, result: ProbeResult) -> None:
    latency = "" if result.latency_ms is None else f"{result.latency_ms:.1f}"
    try:
        pipe = rt.redis.pipeline(transaction=False)
        pipe.hset(probe_key(result.model), mapping={
            "ok": int(result.status == "ok"), "status": result.status, "at": time.time(),
            "latency_ms": latency, "error": result.error[:300],
        })
        pipe.expire(probe_key(result.model), PROBE_TTL_S)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("health probe of %s: result not stored: %s", result.model, exc)


def probe_all(rt: Runtime) -> list[ProbeResult]:
    """Probe every model of the registry at once (threads are greenlets on a gevent worker)."""
    breaker = breaker_for(rt)
    models = list(rt.registry.models.values())
    if not models:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(models))) as pool:
        results = list(pool.map(lambda m: probe_model(rt, breaker, m), models))
    bad = [f"{r.model}: {r.status} {r.error}" for r in results if r.status != "ok"]
    if bad:
        log.warning("health probe: %d of %d models not ok: %s", len(bad), len(results),
                    "; ".join(bad))
    else:
        log.info("health probe: %d models ok", len(results))
    return results
