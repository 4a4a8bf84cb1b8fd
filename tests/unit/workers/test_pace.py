"""A stage's calls go out slowest first, by a moving average of each model's call times."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from workers import pace


def test_slowest_first_puts_untimed_models_first_and_keeps_ties_in_order() -> None:
    items = ["a", "b", "c", "d", "e"]
    paces = [b"300.0", None, "450.5", b"300.0", b"120"]
    assert pace.slowest_first(items, paces) == ["b", "c", "a", "d", "e"]


def test_slowest_first_of_nothing_is_nothing() -> None:
    assert pace.slowest_first([], []) == []


@pytest.fixture
def key(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"chorus:test:pace:{uuid.uuid4().hex}"
    monkeypatch.setattr(pace, "PACE_KEY", name)
    yield name
    redis_client.delete(name)


def test_the_moving_average_starts_at_the_first_call_and_leans_to_the_newest(
        redis_client: redis.Redis, key: str) -> None:
    def record(model: str, ms: float) -> None:
        with redis_client.pipeline(transaction=False) as pipe:
            pace.queue_update(pipe, model, ms)
            pipe.execute()

    record("m", 400)
    record("m", 100)  # 400 + 0.3 * (100 - 400)
    record("other", 50)
    with redis_client.pipeline(transaction=False) as pipe:
        pace.queue_read(pipe, ["m", "other", "never"])
        (paces,) = pipe.execute()
    assert [None if p is None else float(p) for p in paces] == [310.0, 50.0, None]
