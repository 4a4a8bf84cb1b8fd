"""How long each model's calls have lately taken, so a stage sends its slowest calls first.

A stage's calls are sent and picked up one after another, a few milliseconds apart. The
stage lasts as long as its slowest call plus that call's delay in starting, so the calls
expected to take longest go first and the others' start-up hides behind them (longest
processing time first). The expectation is a moving average of each model's recent call
times, in one Redis hash, updated in the round trip that stores a finished call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import redis

PACE_KEY = "chorus:model:pace"
WEIGHT = 0.3  # of the newest call in the moving average

# old + w * (new - old), or the first call's time as it is.
_UPDATE = ("local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1])) "
           "local new = tonumber(ARGV[2]) "
           "if old then new = old + tonumber(ARGV[3]) * (new - old) end "
           "redis.call('HSET', KEYS[1], ARGV[1], string.format('%.1f', new))")

T = TypeVar("T")


def queue_update(pipe: redis.client.Pipeline, model: str, latency_ms: float) -> None:
    pipe.eval(_UPDATE, 1, PACE_KEY, model, f"{latency_ms:.1f}", str(WEIGHT))


def queue_read(pipe: redis.client.Pipeline, models: Sequence[str]) -> None:
    pipe.hmget(PACE_KEY, list(models))


def slowest_first(items: Sequence[T], paces: Sequence[bytes | str | None]) -> list[T]:
    """``items`` ordered by expected call time, longest first; a model never timed counts
    as the longest (nothing says it is quick). Ties keep the request's order."""
    def expected(i: int) -> float:
        pace = paces[i]
        return float("inf") if pace is None else float(pace)

    order = sorted(range(len(items)), key=lambda i: -expected(i))
    return [items[i] for i in order]
