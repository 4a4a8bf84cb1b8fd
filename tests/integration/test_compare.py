"""Compare end to end: a chord of model calls on real workers, streamed side by side."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select

from shared.db import session_scope
from shared.settings import PACKAGE_DIR, get_settings
from shared.tables import Account, Job
from tests.sse import iter_sse, read_stream, stream_post
from tests.stack import Stack, claim_redis_db, release_redis_db
from workers.app import make_celery
from workers.stages import Step

MSG = [{"role": "user", "content": "Compare yourselves."}]
THREE = ["gpt-5-mini", "gemini-3-flash", "deepseek-v3.2"]
UPSTREAM = {"gpt-5-mini": "gpt-5-mini", "gemini-3-flash": "gemini-3-flash",
            "deepseek-v3.2": "deepseek-chat", "claude-haiku-4.5": "claude-haiku-4-5",
            "gpt-5.2": "gpt-5.2", "claude-sonnet-4.5": "claude-sonnet-4-5",
            "gemini-3-pro": "gemini-3-pro", "llama-3.3-70b": "llama-3.3-70b-versatile"}
# The default registry has eight models; a ninth, served by the mock, for the 9-way compare.
NINTH = '''
[models."mock-extra"]
provider = "groq"
upstream = "mock-extra"
input_per_mtok = 100
output_per_mtok = 200
context_window = 32000
max_output_tokens = 4096
'''


@contextmanager
def side_stack(base: Stack, logs: Path, *, concurrency: int = 100,
               extra_models: str = "") -> Iterator[Stack]:
    """An API and a worker of their own (own Redis db, shared database and mock)."""
    logs.mkdir(parents=True, exist_ok=True)
    redis_url, token = claim_redis_db()
    env = {**base.env, "CHORUS_REDIS_URL": redis_url, "CHORUS_BROKER_URL": redis_url}
    if extra_models:
        registry = logs / "models.toml"
        registry.write_text((PACKAGE_DIR / "models.toml").read_text() + extra_models)
        env["CHORUS_MODELS"] = str(registry)
    s = Stack(url="", mock_url=base.mock_url, database_url=base.database_url,
              redis_url=redis_url, env=env, logs=logs)
    try:
        s.start_worker(concurrency=concurrency)
        s.url = s.start_api()
        yield s
    finally:
        s.shutdown()
        release_redis_db(redis_url, token)


def by_model(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e.get("event") == "chunk" and not e["done"]:
            out.setdefault(e["model"], []).append(e)
    return out


def test_models_stream_interleaved_then_a_summary(api: httpx.Client,
                                                  mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 30, "token_ms": 15, "tokens": 12})
    mock.post("/_mock/config", json={"model": "deepseek-chat", "ttft_ms": 5})
    s = stream_post(api, "/api/v1/compare", {"models": THREE, "messages": MSG})
    assert s.status == 200 and s.done
    assert s.ids == list(range(1, len(s.ids) + 1))
    chunks = [e for e in s.events if e["event"] == "chunk" and not e["done"]]
    assert {c["model"] for c in chunks} == set(THREE)
    assert all(c["role"] == "candidate" for c in chunks)
    # Interleaved, not one model after another: the stream switches model many times.
    switches = sum(1 for a, b in pairwise(chunks) if a["model"] != b["model"])
    assert switches >= 6
    finals = {e["model"]: e for e in s.events if e["event"] == "chunk" and e["done"]}
    assert set(finals) == set(THREE)
    for model, deltas in by_model(s.events).items():
        assert finals[model]["full_content"] == "".join(d["delta"] for d in deltas)
        assert finals[model]["completion_tokens"] == 12
    final = s.final
    assert final["event"] == "done" and final["status"] == "succeeded"
    assert [r["model"] for r in final["results"]] == THREE
    for r in final["results"]:
        assert r["full_content"] == finals[r["model"]]["full_content"]
    summary = final["summary"]
    ok = final["results"]
    assert summary["answered"] == 3 and summary["failed"] == 0
    assert summary["fastest_ttft"] == {
        "model": "deepseek-v3.2", "ttft_ms": min(r["ttft_ms"] for r in ok)}
    fastest = min(ok, key=lambda r: r["latency_ms"])
    assert summary["fastest_total"] == {"model": fastest["model"],
                                        "latency_ms": fastest["latency_ms"]}
    cheapest = min(ok, key=lambda r: r["cost"])
    assert summary["cheapest"] == {"model": cheapest["model"], "cost": cheapest["cost"]}
    assert summary["total_cost"] == pytest.approx(sum(r["cost"] for r in ok), abs=1e-6)
    assert final["credits_charged"] == pytest.approx(3 + summary["total_cost"], abs=1e-5)


def test_one_model_failing_gets_its_own_error_and_the_others_finish(
    api: httpx.Client, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 10, "token_ms": 2, "tokens": 8})
    mock.post("/_mock/config", json={"model": "gemini-3-flash",
                                     "fault": {"kind": "status", "status": 500}})
    s = stream_post(api, "/api/v1/compare", {"models": THREE, "messages": MSG})
    errors = [e for e in s.events if e["event"] == "error" and not e.get("final")]
    assert [(e["model"], e["role"]) for e in errors] == [("gemini-3-flash", "candidate")]
    assert errors[0]["error"]["code"] == "upstream_server_error"
    finals = [e["model"] for e in s.events if e["event"] == "chunk" and e["done"]]
    assert sorted(finals) == ["deepseek-v3.2", "gpt-5-mini"]
    final = s.final
    assert final["status"] == "succeeded"
    failed = next(r for r in final["results"] if r["model"] == "gemini-3-flash")
    assert failed["error"]["code"] == "upstream_server_error"
    assert final["summary"]["answered"] == 2 and final["summary"]["failed"] == 1


def test_an_open_breaker_skips_its_candidate_at_once(
    api: httpx.Client, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 10, "token_ms": 2, "tokens": 8})
    mock.post("/_mock/config", json={"model": "gemini-3-flash",
                                     "fault": {"kind": "status", "status": 500}})
    # Each failed candidate call counts against its model's shared breaker.
    for _ in range(get_settings().breaker_failures):
        s = stream_post(api, "/api/v1/compare", {"models": THREE, "messages": MSG})
        failed = next(r for r in s.final["results"] if r["model"] == "gemini-3-flash")
        assert failed["error"]["code"] == "upstream_server_error"
    called = mock.get("/_mock/stats").json()["calls"]["gemini-3-flash"]
    s = stream_post(api, "/api/v1/compare", {"models": THREE, "messages": MSG})
    errors = [e for e in s.events if e["event"] == "error" and not e.get("final")]
    assert [(e["model"], e["role"], e["error"]["code"]) for e in errors] == [
        ("gemini-3-flash", "candidate", "breaker_open")]
    assert mock.get("/_mock/stats").json()["calls"]["gemini-3-flash"] == called
    final = s.final
    assert final["status"] == "succeeded"
    assert final["summary"]["answered"] == 2 and final["summary"]["failed"] == 1


def test_every_model_failing_is_a_502(api: httpx.Client, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "*", "fault": {"kind": "status", "status": 503}})
    r = api.post("/api/v1/compare", json={"models": THREE[:2], "messages": MSG})
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["error"]["code"] == "upstream_error"
    assert body["credits_charged"] == 0
    assert len(body["results"]) == 2


def test_pipeline_state_is_gone_when_the_job_ends(stack: Stack, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 5, "token_ms": 1, "tokens": 5})
    key = stack.create_key(credits=1000, zero_retention=True)
    client = redis.Redis.from_url(stack.redis_url)
    before = set(client.scan_iter("celery-task-meta-*"))
    r = httpx.post(f"{stack.url}/api/v1/compare", json={"models": THREE, "messages": MSG},
                   headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    assert r.json()["results"][0]["full_content"]

    def leftovers() -> list[bytes]:
        keys = [*client.scan_iter(f"chorus:job:{job_id}:pipe"),
                *client.scan_iter(f"chorus:job:{job_id}:canvas")]
        # The chord's header results (kept while the job ran) are forgotten too.
        return keys + sorted(set(client.scan_iter("celery-task-meta-*")) - before)

    deadline = time.monotonic() + 3
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers() == []
    with session_scope(stack.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded" and job.result is not None
        assert "results" not in job.result and job.result["summary"]["answered"] == 3


def test_a_redelivered_call_is_made_once(stack: Stack, api: httpx.Client,
                                         mock: httpx.Client) -> None:
    """The broker hands an unacknowledged task out again after its visibility timeout, so
    a long call can arrive twice: the copy waits for the running one and calls nothing."""
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 20, "token_ms": 40, "tokens": 25})
    settings = dataclasses.replace(get_settings(), redis_url=stack.redis_url,
                                   broker_url=stack.redis_url)
    step = Step(key="M:gpt-5-mini", model="gpt-5-mini", role="candidate", prompt="compare")
    body = {"models": ["gpt-5-mini", "deepseek-v3.2"], "messages": MSG, "stream": True}
    with api.stream("POST", "/api/v1/compare", json=body) as resp:
        job_id = resp.headers["X-Chorus-Job-Id"]
        events = []
        for _seq, data in iter_sse(resp):
            if data == "[DONE]":
                break
            events.append(json.loads(data))
            if len(events) == 3:
                copy = make_celery(settings).send_task(
                    "chorus.model_call", args=[job_id, step.to_json()], queue="interactive")
    log = stack.logs / "worker.log"
    deadline = time.monotonic() + 10
    while f"{copy.id}] succeeded" not in log.read_text():
        assert time.monotonic() < deadline, "the copy never ended"
        time.sleep(0.1)
    calls = mock.get("/_mock/stats").json()["calls"]
    assert calls == {"gpt-5-mini": 1, "deepseek-chat": 1}
    assert [e["model"] for e in events if e["event"] == "chunk" and e["done"]] in (
        ["gpt-5-mini", "deepseek-v3.2"], ["deepseek-v3.2", "gpt-5-mini"])
    # Nothing was published for the job after its final event.
    with api.stream("GET", f"/api/v1/jobs/{job_id}/events") as again:
        replay = read_stream(again)
    assert replay.events == events and replay.events[-1]["final"]


def _wallet(stack: Stack, account: str) -> tuple[Decimal, Decimal, int]:
    with session_scope(stack.database_url) as session:
        acct = session.execute(select(Account).where(Account.name == account)).scalar_one()
        jobs = session.execute(
            select(func.count()).select_from(Job).where(Job.account_id == acct.id)).scalar_one()
        return acct.balance, acct.reserved, jobs


@pytest.mark.parametrize(("body", "param"), [
    ({"models": ["gpt-5-mini"]}, "models"),
    ({"models": [*UPSTREAM, "mock-extra", "x"][:10]}, "models"),
    ({"models": ["gpt-5-mini", "gpt-5-mini"]}, "models"),
    ({"models": ["gpt-5-mini", "no-such-model"]}, "models"),
    ({"models": THREE, "layers": 2}, "layers"),
])
def test_bad_compare_bodies_are_400_and_change_nothing(stack: Stack, body: dict[str, Any],
                                                       param: str) -> None:
    account = f"acct-{uuid.uuid4().hex[:8]}"
    key = stack.create_key(account=account, credits=100)
    before = _wallet(stack, account)
    r = httpx.post(f"{stack.url}/api/v1/compare", json={**body, "messages": MSG},
                   headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert _wallet(stack, account) == before


@pytest.fixture(scope="module")
def wide(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with side_stack(stack, tmp_path_factory.mktemp("wide"), extra_models=NINTH) as s:
        yield s


def test_nine_models_of_300_ms_compare_in_about_300_ms(wide: Stack,
                                                       mock: httpx.Client) -> None:
    nine = [*UPSTREAM, "mock-extra"]
    assert len(nine) == 9
    headers = {"Authorization": f"Bearer {wide.create_key(credits=1000)}"}
    body = {"models": nine, "messages": MSG}
    # Each call: 250 ms to the first token, then 6 tokens 10 ms apart, about 300 ms.
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 250, "token_ms": 10, "tokens": 6})
    with httpx.Client(base_url=wide.url, headers=headers, timeout=30) as client:
        assert client.post("/api/v1/compare", json=body).status_code == 200  # warm up
        start = time.perf_counter()
        r = client.post("/api/v1/compare", json=body)
        elapsed = time.perf_counter() - start
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 9 and all(x["completion_tokens"] == 6 for x in results)
    # Nine calls of at least 300 ms: run one after another they would take 2.7 s.
    assert all(x["latency_ms"] >= 290 for x in results)
    assert elapsed < 1.2, f"9 x 300 ms compare took {elapsed:.3f} s"
