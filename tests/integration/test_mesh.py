"""Mesh failover end to end on two worker processes sharing one breaker through Redis.

The module swaps the stack's worker for two of its own whose breaker opens for 2 s (not
30), so half-open and recovery are testable; the stack's worker is back afterwards.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select

from shared.breaker import Breaker, BreakerConfig
from shared.db import session_scope
from shared.tables import Job, RequestLog
from tests.sse import Stream, stream_post
from tests.stack import Stack

A, B = "gpt-5.2", "gpt-5-mini"
UPSTREAM = {A: "gpt-5.2", B: "gpt-5-mini", "claude-sonnet-4.5": "claude-sonnet-4-5"}
MSG = [{"role": "user", "content": "Tell me about lighthouses."}]
WORKERS = ("mesh-worker1", "worker2")
OPEN_S = 2.0


@pytest.fixture(scope="module")
def workers(stack: Stack) -> Iterator[tuple[str, ...]]:
    had_default = "worker" in stack.procs
    if had_default:
        stack.stop_proc("worker")
    env = dict(stack.env, CHORUS_BREAKER_OPEN_S=str(OPEN_S), CHORUS_BREAKER_PROBE_S="10")
    # Same procs registry, own env: stack.env stays as every other module expects it.
    mine = dataclasses.replace(stack, env=env, procs=stack.procs)
    try:
        for name in WORKERS:
            mine.start_worker(name)
        yield WORKERS
    finally:
        for name in WORKERS:
            if name in stack.procs:
                stack.stop_proc(name)
        if had_default:
            stack.start_worker()


def fault(mock: httpx.Client, model: str, **kw: Any) -> None:
    r = mock.post("/_mock/config", json={"model": UPSTREAM[model], **kw})
    assert r.status_code == 200, r.text


def mock_calls(mock: httpx.Client, model: str) -> int:
    return int(mock.get("/_mock/stats").json()["calls"].get(UPSTREAM[model], 0))


def routes(s: Stream) -> list[tuple[str, str]]:
    return [(e["model"], e["status"]) for e in s.events if e["event"] == "route"]


def mesh(api: httpx.Client, chain: tuple[str, ...] = (A, B), **kw: Any) -> Stream:
    body = {"model": chain[0], "routing": {"fallback": list(chain[1:])}, "messages": MSG, **kw}
    return stream_post(api, "/api/v1/chat", body)


def burst(api: httpx.Client, n: int) -> list[Stream]:
    """``n`` mesh requests at once."""
    results: list[Stream] = []
    threads = [threading.Thread(target=lambda: results.append(mesh(api))) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == n
    return results


def request_log(stack: Stack, job_id: str) -> list[RequestLog]:
    with session_scope(stack.database_url) as session:
        rows = session.execute(
            select(RequestLog).where(RequestLog.job_id == job_id).order_by(RequestLog.id)
        ).scalars().all()
        session.expunge_all()
        return list(rows)


@pytest.mark.parametrize(("kind", "reason"), [
    ({"kind": "status", "status": 429, "retry_after": 1}, "upstream_rate_limited"),
    ({"kind": "status", "status": 500}, "upstream_server_error"),
    ({"kind": "hang"}, "upstream_timeout"),
    ({"kind": "disconnect"}, "upstream_stream_broken"),
])
def test_each_fault_fails_over(stack: Stack, workers: tuple[str, ...], api: httpx.Client,
                               mock: httpx.Client, kind: dict[str, Any], reason: str) -> None:
    fault(mock, A, fault=kind)
    fault(mock, B, ttft_ms=20, token_ms=2, tokens=8)
    s = mesh(api)
    assert s.done and s.final["status"] == "succeeded", s.events[-3:]
    assert routes(s) == [(A, "trying"), (A, "failed"), (B, "trying")]
    failed = next(e for e in s.events if e["event"] == "route" and e["status"] == "failed")
    assert failed["reason"].startswith(reason)
    assert s.final["resolved_model"] == B
    trace = s.events[-2]
    assert trace["event"] == "trace" and trace["final_model"] == B
    assert [(a["model"], a["status"]) for a in trace["attempts"]] == [(A, "failed"), (B, "ok")]
    assert trace["total_ms"] >= trace["attempts"][0]["latency_ms"]
    chunks = [e for e in s.events if e["event"] == "chunk" and not e["done"]]
    assert 1 <= len(chunks) <= 8 and {c["model"] for c in chunks} == {B}
    rows = request_log(stack, s.final["job_id"])
    assert [(r.model, r.status) for r in rows] == [(A, "error"), (B, "ok")]
    assert rows[0].error is not None and rows[0].error.startswith(reason)


def test_mid_stream_break_is_continued_without_repeats(
    stack: Stack, workers: tuple[str, ...], api: httpx.Client, mock: httpx.Client
) -> None:
    first = "Lighthouses guide ships past rocks and shoals at night with bright beams"
    k = 5
    sent = "".join(first.split(" ")[:k][i] if i == 0 else " " + first.split(" ")[i]
                   for i in range(k))
    fault(mock, A, ttft_ms=10, token_ms=5, reply=first,
          fault={"kind": "disconnect", "after_tokens": k})
    continuation = " and shoals, keeping sailors safe at night."
    fault(mock, B, ttft_ms=10, token_ms=5, reply=continuation)
    s = mesh(api)
    assert s.final["status"] == "succeeded"
    assert sent == "Lighthouses guide ships past rocks"
    assert s.text == sent + continuation
    chunks = [e for e in s.events if e["event"] == "chunk" and not e["done"]]
    assert "".join(e["delta"] for e in chunks if e["model"] == A) == sent
    assert "".join(e["delta"] for e in chunks if e["model"] == B) == continuation
    done = [e for e in s.events if e["event"] == "chunk" and e["done"]]
    assert len(done) == 1 and done[0]["full_content"] == s.text
    assert s.final["full_content"] == s.text
    # The fallback was handed the partial answer.
    recorded = mock.get("/_mock/requests", params={"model": UPSTREAM[B], "limit": 1}).json()
    messages = recorded[-1]["body"]["messages"]
    assert messages[-2] == {"role": "assistant", "content": sent}
    # Non-streaming: the same one answer.
    r = api.post("/api/v1/chat", json={"model": A, "routing": {"fallback": [B]},
                                       "messages": MSG})
    assert r.status_code == 200 and r.json()["full_content"] == s.text


def test_breaker_opens_after_three_and_both_workers_skip_it(
    stack: Stack, workers: tuple[str, ...], api: httpx.Client, mock: httpx.Client
) -> None:
    fault(mock, A, fault={"kind": "status", "status": 500})
    fault(mock, B, ttft_ms=10, token_ms=1, tokens=4)
    for _ in range(3):
        assert routes(mesh(api))[:2] == [(A, "trying"), (A, "failed")]
    assert mock_calls(mock, A) == 3
    # Later requests skip A without calling it, whichever worker runs them.
    jobs: list[str] = []
    skipped_by: set[str] = set()
    for _ in range(5):
        for s in burst(api, 6):
            assert routes(s) == [(A, "skipped"), (B, "trying")]
            assert s.final["status"] == "succeeded" and s.final["resolved_model"] == B
            assert s.events[-2]["attempts"][0]["reason"].startswith("circuit open")
            jobs.append(s.final["job_id"])
        skipped_by = {w for w in workers if any(
            f"mesh skip job={j}" in (stack.logs / f"{w}.log").read_text() for j in jobs)}
        if skipped_by == set(workers):
            break
    assert skipped_by == set(workers)
    assert mock_calls(mock, A) == 3
    rows = request_log(stack, jobs[0])
    assert rows[0].model == A and rows[0].status == "error"
    assert rows[0].error is not None and rows[0].error.startswith("breaker_open")
    health = {m["id"]: m["health"] for m in api.get("/api/v1/models").json()["data"]}
    assert health[A]["breaker"]["state"] == "open"
    assert health[A]["recent"]["errors"] == 3


def test_half_open_lets_one_probe_through_then_recovery_closes_it(
    stack: Stack, workers: tuple[str, ...], api: httpx.Client, mock: httpx.Client
) -> None:
    shared = Breaker(redis.Redis.from_url(stack.redis_url), BreakerConfig(open_s=OPEN_S))
    for _ in range(3):
        shared.record(A, "fail", reason="test")
    assert shared.acquire(A).decision == "reject"
    time.sleep(OPEN_S + 0.2)
    # The probe streams for ~3 s (no gap near the 3 s idle timeout), so all 20 requests
    # arrive while it is still in flight.
    fault(mock, A, ttft_ms=1000, token_ms=1000, tokens=3)
    fault(mock, B, ttft_ms=10, token_ms=1, tokens=3)
    results = burst(api, 20)
    first = Counter(routes(s)[0] for s in results)
    assert first == {(A, "trying"): 1, (A, "skipped"): 19}
    assert mock_calls(mock, A) == 1
    probe = next(s for s in results if routes(s)[0] == (A, "trying"))
    assert probe.final["resolved_model"] == A
    assert "half-open probe" in next(e for e in probe.events if e["event"] == "route")["reason"]
    # The probe succeeded: the breaker is closed and A takes traffic again.
    assert shared.state(A)["state"] == "closed"
    s = mesh(api)
    assert routes(s) == [(A, "trying")] and s.final["resolved_model"] == A
    health = {m["id"]: m["health"] for m in api.get("/api/v1/models").json()["data"]}
    assert health[A]["breaker"]["state"] == "closed"


def test_auto_routing_with_a_fallback(stack: Stack, workers: tuple[str, ...],
                                      api: httpx.Client, mock: httpx.Client) -> None:
    coder = "claude-sonnet-4.5"
    fault(mock, coder, fault={"kind": "status", "status": 503})
    fault(mock, B, ttft_ms=10, token_ms=1, tokens=4)
    body = {"model": "auto", "routing": {"fallback": [B]}, "messages": [
        {"role": "user", "content": "Why does this crash?\n```python\nprint(1/0)\n```"}]}
    s = stream_post(api, "/api/v1/chat", body)
    selected = s.events[0]
    assert selected["event"] == "route" and selected["status"] == "selected"
    assert selected["model"] == coder and selected["reason"] == "code: code fence"
    assert routes(s)[1:] == [(coder, "trying"), (coder, "failed"), (B, "trying")]
    trying = [e for e in s.events if e["event"] == "route" and e["status"] == "trying"]
    assert trying[0]["reason"] == "auto: code: code fence"
    assert s.final["resolved_model"] == B and s.final["route_reason"] == "code: code fence"
    job = api.get(f"/api/v1/jobs/{s.final['job_id']}").json()
    assert job["resolved_model"] == B
    assert job["result"]["route_reason"] == "code: code fence"
    assert [a["status"] for a in job["result"]["trace"]["attempts"]] == ["failed", "ok"]
    with session_scope(stack.database_url) as session:
        assert session.get(Job, s.final["job_id"]).resolved_model == B  # type: ignore[union-attr]


def test_every_model_failing_is_a_502(stack: Stack, workers: tuple[str, ...],
                                      api: httpx.Client, mock: httpx.Client) -> None:
    fault(mock, A, fault={"kind": "status", "status": 500})
    fault(mock, B, fault={"kind": "status", "status": 502})
    r = api.post("/api/v1/chat", json={"model": A, "routing": {"fallback": [B]},
                                       "messages": MSG})
    assert r.status_code == 502
    body = r.json()
    assert body["error"]["code"] == "upstream_error"
    assert body["error"]["message"].startswith("every model in the chain failed")
    assert [a["status"] for a in body["trace"]["attempts"]] == ["failed", "failed"]
    assert body["credits_charged"] == 0
