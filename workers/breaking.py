"""What a model call asks of the shared circuit breaker before it starts, and tells it after.

Redis down must not stop traffic: a breaker that cannot be read lets the call go ahead,
and an outcome that cannot be recorded is logged and dropped.
"""

from __future__ import annotations

import logging

import redis

from shared.breaker import Breaker, BreakerConfig, Ticket
from shared.registry import ModelSpec
from workers.calls import CallResult
from workers.providers.errors import ProviderError
from workers.runtime import Runtime

log = logging.getLogger(__name__)


class BreakerOpen(ProviderError):
    """Not a provider answer: the model's shared breaker said skip it."""

    code = "breaker_open"


def failure_reason(error: ProviderError, produced: str) -> str:
    reason = f"{error.code}: {error.message}"
    if produced:
        reason += f" (after {len(produced)} chars)"
    return reason


def acquire(breaker: Breaker, model_id: str) -> Ticket | None:
    try:
        return breaker.acquire(model_id)
    except redis.RedisError as exc:
        log.warning("breaker unavailable for %s, calling anyway: %s", model_id, exc)
        return None


def skipped(model: ModelSpec, ticket: Ticket, role: str | None = None,
            layer: int | None = None) -> CallResult:
    """The result of a call its breaker did not let through."""
    res = CallResult(model=model.id, provider=model.provider.name, role=role, layer=layer,
                     error=BreakerOpen(ticket.reason(), retry_after=ticket.retry_in_s))
    res.finish_reason = "error"
    return res


def report(breaker: Breaker, model_id: str, res: CallResult, ticket: Ticket | None) -> None:
    err = res.error
    if res.cancelled or (err is not None and not err.retryable):
        # Says nothing about the model's health; a probe hands its turn back.
        outcome = "release"
    else:
        outcome = "ok" if err is None else "fail"
    try:
        breaker.record(
            model_id, outcome, ticket=ticket,
            retry_after_s=err.retry_after if err is not None else None,
            reason="" if err is None else failure_reason(err, res.text),
            latency_ms=res.latency_ms, ttft_ms=res.ttft_ms,
        )
    except redis.RedisError as exc:
        log.warning("breaker unavailable for %s, outcome not recorded: %s", model_id, exc)


_breakers: dict[int, tuple[Runtime, Breaker]] = {}


def breaker_for(rt: Runtime) -> Breaker:
    """The process' breaker client over the runtime's Redis, configured from settings."""
    cached = _breakers.get(id(rt))
    if cached is None or cached[0] is not rt:
        cached = (rt, Breaker(rt.redis, BreakerConfig.from_settings(rt.settings)))
        _breakers[id(rt)] = cached
    return cached[1]
