"""Health: the beat probe task, and live breaker/error-rate/latency in GET /api/v1/models."""

from __future__ import annotations

import time
import tomllib
from typing import Any

import httpx
import pytest
import redis

from shared.breaker import PROBE, Breaker, BreakerConfig
from shared.registry import parse_registry
from shared.settings import PACKAGE_DIR, Settings
from tests.procs import start, stop
from tests.stack import Stack
from workers.app import make_celery
from workers.health import probe_model
from workers.runtime import Runtime

MSG = [{"role": "user", "content": "Say something."}]


def health(api: httpx.Client) -> dict[str, dict[str, Any]]:
    r = api.get("/api/v1/models")
    assert r.status_code == 200, r.text
    return {m["id"]: m["health"] for m in r.json()["data"]}


def test_models_show_breaker_error_rate_and_latency(stack: Stack, api: httpx.Client,
                                                    mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 40, "tokens": 3})
    for _ in range(3):
        assert api.post("/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG}
                        ).status_code == 200
    mock.post("/_mock/config", json={"model": "gpt-5-mini",
                                     "fault": {"kind": "status", "status": 500}})
    assert api.post("/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG}
                    ).status_code == 502
    h = health(api)["gpt-5-mini"]
    assert h["breaker"]["state"] == "closed" and h["breaker"]["consecutive_failures"] == 1
    assert h["recent"]["calls"] == 4 and h["recent"]["errors"] == 1
    assert h["recent"]["error_rate"] == 0.25
    assert 40 <= h["recent"]["ttft_ms_p50"] < 1000
    assert h["recent"]["latency_ms_p50"] >= h["recent"]["ttft_ms_p50"]
    # A breaker opened by any process shows at once.
    shared = Breaker(redis.Redis.from_url(stack.redis_url), BreakerConfig(open_s=30))
    for _ in range(3):
        shared.record("gemini-3-pro", "fail", reason="upstream_server_error: test")
    g = health(api)["gemini-3-pro"]["breaker"]
    assert g["state"] == "open" and 25 < g["retry_in_s"] <= 30
    assert g["last_failure"] == "upstream_server_error: test"


def test_beat_probes_every_model(stack: Stack, api: httpx.Client, mock: httpx.Client) -> None:
    assert make_celery().conf.beat_schedule["health-probe"]["task"] == "chorus.health_probe"
    mock.post("/_mock/config", json={"model": "deepseek-chat",
                                     "fault": {"kind": "status", "status": 503}})
    env = dict(stack.env, CHORUS_HEALTH_INTERVAL="1")
    log = stack.logs / "beat.log"
    beat = start(["celery", "--app", "workers.app", "beat", "--loglevel", "info",
                  "--schedule", str(stack.logs / "beat-schedule")], env, log)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            h = health(api)
            if all(v["probe"] is not None for v in h.values()):
                break
            time.sleep(0.5)
    finally:
        stop(beat)
    assert all(v["probe"] is not None for v in h.values()), log.read_text()[-2000:]
    bad = h["deepseek-v3.2"]
    assert bad["probe"]["ok"] is False
    assert bad["probe"]["error"].startswith("upstream_server_error")
    assert bad["recent"]["errors"] >= 1
    for model_id, v in h.items():
        if model_id != "deepseek-v3.2":
            assert v["probe"]["ok"] is True, (model_id, v)
            assert v["probe"]["latency_ms"] > 0 and v["recent"]["ttft_ms_p50"] is not None
    calls = mock.get("/_mock/stats").json()["calls"]
    assert {"gpt-5.2", "claude-sonnet-4-5", "gemini-3-flash", "deepseek-chat"} <= set(calls)


@pytest.fixture
def runtime(stack: Stack) -> Runtime:
    raw = tomllib.loads((PACKAGE_DIR / "models.toml").read_text())
    rt = Runtime(Settings(redis_url=stack.redis_url, idle_timeout_s=3, connect_timeout_s=2))
    rt.__dict__["registry"] = parse_registry(raw, env={"CHORUS_MOCK_URL": stack.mock_url})
    return rt


def test_probe_respects_an_open_breaker_and_closes_a_half_open_one(
    runtime: Runtime, mock: httpx.Client
) -> None:
    b = Breaker(runtime.redis, BreakerConfig(open_s=0.3))
    model = runtime.registry.get("claude-haiku-4.5")
    for _ in range(3):
        b.record(model.id, "fail")
    skipped = probe_model(runtime, b, model)
    assert skipped.status == "skipped" and skipped.error.startswith("circuit open")
    assert mock.get("/_mock/stats").json()["calls"].get("claude-haiku-4-5", 0) == 0
    time.sleep(0.35)
    # With no user traffic, the probe is the half-open call that brings the model back.
    ok = probe_model(runtime, b, model)
    assert ok.status == "ok"
    assert b.state(model.id)["state"] == "closed"
    assert b.acquire(model.id).decision != PROBE


def test_failed_probe_reopens_a_half_open_breaker(runtime: Runtime, mock: httpx.Client) -> None:
    b = Breaker(runtime.redis, BreakerConfig(open_s=0.3))
    model = runtime.registry.get("claude-haiku-4.5")
    for _ in range(3):
        b.record(model.id, "fail")
    time.sleep(0.35)
    mock.post("/_mock/config", json={"model": "claude-haiku-4-5",
                                     "fault": {"kind": "status", "status": 529}})
    res = probe_model(runtime, b, model)
    assert res.status == "failed"
    assert b.state(model.id)["state"] == "open" and b.state(model.id)["opens"] == 2
