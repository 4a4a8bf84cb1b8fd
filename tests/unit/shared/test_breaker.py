"""The shared circuit breaker against a real Redis: transitions, the one probe, stats."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from shared.breaker import (
    ALLOW,
    PROBE,
    REJECT,
    Breaker,
    BreakerConfig,
    model_health,
    model_keys,
    recent_stats,
)

FAST = BreakerConfig(failures=3, open_s=0.3, probe_s=5.0)


@pytest.fixture(scope="module")
def client(redis_db_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_db_url)


@pytest.fixture
def model(client: redis.Redis) -> Iterator[str]:
    name = f"m-{uuid.uuid4().hex[:8]}"
    yield name
    client.delete(*model_keys(name))


def open_it(b: Breaker, model: str, retry_after_s: float | None = None) -> None:
    for _ in range(b.config.failures):
        b.record(model, "fail", reason="upstream_server_error", retry_after_s=retry_after_s)


def test_closed_admits_every_caller_without_a_lock(client: redis.Redis, model: str) -> None:
    b = Breaker(client, FAST)
    # Many calls may be in flight at once: asking never reserves anything.
    tickets = [b.acquire(model) for _ in range(50)]
    assert {t.decision for t in tickets} == {ALLOW}
    assert b.state(model)["state"] == "closed"


def test_three_consecutive_failures_open_it(client: redis.Redis, model: str) -> None:
    b = Breaker(client, FAST)
    b.record(model, "fail")
    b.record(model, "fail")
    assert b.acquire(model).decision == ALLOW
    assert b.record(model, "fail") == "opening"
    t = b.acquire(model)
    assert t.decision == REJECT and not t.allowed
    assert 0.1 < t.retry_in_s <= 0.3
    assert t.reason().startswith("circuit open, retry in")
    assert b.state(model)["state"] == "open"


def test_a_success_resets_the_count(client: redis.Redis, model: str) -> None:
    b = Breaker(client, FAST)
    b.record(model, "fail")
    b.record(model, "fail")
    b.record(model, "ok")
    b.record(model, "fail")
    b.record(model, "fail")
    assert b.acquire(model).decision == ALLOW
    assert b.state(model)["consecutive_failures"] == 2


def test_half_open_admits_exactly_one_probe_among_racers(client: redis.Redis,
                                                         model: str) -> None:
    b = Breaker(client, FAST)
    open_it(b, model)
    time.sleep(0.35)
    assert b.state(model)["state"] == "half_open"
    barrier = threading.Barrier(40)
    decisions: list[str] = []

    def race() -> None:
        # Separate clients, like separate worker processes.
        mine = Breaker(redis.Redis(connection_pool=client.connection_pool), FAST)
        barrier.wait()
        decisions.append(mine.acquire(model).decision)

    threads = [threading.Thread(target=race) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(decisions) == {PROBE: 1, REJECT: 39}
    assert b.state(model)["probe_in_flight"] is True


def test_probe_success_closes_and_failure_reopens(client: redis.Redis, model: str) -> None:
    b = Breaker(client, FAST)
    open_it(b, model)
    time.sleep(0.35)
    probe = b.acquire(model)
    assert probe.decision == PROBE
    assert b.record(model, "fail", ticket=probe) == "opening"
    assert b.acquire(model).decision == REJECT
    assert b.state(model)["opens"] == 2
    time.sleep(0.35)
    probe = b.acquire(model)
    assert probe.decision == PROBE
    b.record(model, "ok", ticket=probe)
    assert b.state(model)["state"] == "closed"
    assert {b.acquire(model).decision for _ in range(5)} == {ALLOW}


def test_results_of_calls_that_are_not_the_probe_move_nothing(client: redis.Redis,
                                                              model: str) -> None:
    b = Breaker(client, FAST)
    open_it(b, model)
    # A call admitted before the breaker opened finishes late, successfully.
    b.record(model, "ok")
    assert b.state(model)["state"] == "open"
    time.sleep(0.35)
    probe = b.acquire(model)
    b.record(model, "ok")
    b.record(model, "fail")
    assert b.state(model)["state"] == "half_open"
    b.record(model, "ok", ticket=probe)
    assert b.state(model)["state"] == "closed"


def test_a_released_probe_lets_the_next_caller_probe(client: redis.Redis, model: str) -> None:
    b = Breaker(client, FAST)
    open_it(b, model)
    time.sleep(0.35)
    probe = b.acquire(model)
    assert b.acquire(model).decision == REJECT
    # The probe was cancelled or rejected as a bad request: no verdict, the turn passes on.
    b.record(model, "release", ticket=probe)
    assert b.acquire(model).decision == PROBE


def test_a_probe_that_never_reports_expires(client: redis.Redis, model: str) -> None:
    b = Breaker(client, BreakerConfig(failures=3, open_s=0.2, probe_s=0.3))
    open_it(b, model)
    time.sleep(0.25)
    assert b.acquire(model).decision == PROBE
    assert b.acquire(model).decision == REJECT
    # Its worker died: after the lease another caller probes instead.
    time.sleep(0.35)
    assert b.acquire(model).decision == PROBE


def test_retry_after_keeps_it_open_at_least_that_long(client: redis.Redis, model: str) -> None:
    b = Breaker(client, FAST)
    open_it(b, model, retry_after_s=2.0)
    t = b.acquire(model)
    assert t.decision == REJECT and 1.5 < t.retry_in_s <= 2.0
    time.sleep(0.4)
    assert b.acquire(model).decision == REJECT


def test_retry_after_extends_an_open_window(client: redis.Redis, model: str) -> None:
    b = Breaker(client, FAST)
    open_it(b, model)
    assert b.acquire(model).retry_in_s <= 0.3
    # A late 429 from a call admitted before the breaker opened.
    b.record(model, "fail", retry_after_s=3.0)
    assert b.acquire(model).retry_in_s > 2.5


def test_thresholds_come_from_config(client: redis.Redis, model: str) -> None:
    b = Breaker(client, BreakerConfig(failures=1, open_s=5.0))
    b.record(model, "fail")
    t = b.acquire(model)
    assert t.decision == REJECT and t.retry_in_s > 4.5


def test_recent_stats_count_errors_and_latency(client: redis.Redis, model: str) -> None:
    b = Breaker(client, BreakerConfig(failures=100))
    for ms in (100, 200, 300):
        b.record(model, "ok", latency_ms=ms * 10, ttft_ms=ms)
    b.record(model, "fail", latency_ms=5)
    b.record(model, "release", latency_ms=1)  # a caller's error: not the model's
    stats = recent_stats(client, model)
    assert stats["calls"] == 4 and stats["errors"] == 1
    assert stats["error_rate"] == 0.25
    assert stats["ttft_ms_p50"] == 200 and stats["latency_ms_p50"] == 2000
    assert recent_stats(client, model, now=time.time() + 3600)["calls"] == 0


def test_model_health_view(client: redis.Redis, model: str) -> None:
    b = Breaker(client, FAST)
    open_it(b, model)
    view = model_health(client, b, model)
    assert view["breaker"]["state"] == "open"
    assert view["breaker"]["consecutive_failures"] == 3
    assert view["breaker"]["last_failure"] == "upstream_server_error"
    assert view["recent"]["error_rate"] == 1.0
    assert view["probe"] is None


def test_unknown_outcome_is_refused(client: redis.Redis, model: str) -> None:
    with pytest.raises(ValueError):
        Breaker(client).record(model, "maybe")
