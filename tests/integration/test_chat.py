"""Streaming and non-streaming chat end to end: API -> Celery worker -> mock -> Redis -> SSE."""

from __future__ import annotations

import threading
import time

import httpx

from tests.sse import read_stream, stream_post
from tests.stack import Stack

MSG = [{"role": "user", "content": "Tell me about gateways."}]


def test_stream_has_the_full_event_format(api: httpx.Client, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5.2", "ttft_ms": 20, "token_ms": 2,
                                     "tokens": 12})
    s = stream_post(api, "/api/v1/chat", {"model": "gpt-5.2", "messages": MSG})
    assert s.status == 200 and s.done
    assert s.headers["content-type"].startswith("text/event-stream")
    assert s.ids == list(range(1, len(s.ids) + 1))
    chunks = [e for e in s.events if e["event"] == "chunk" and not e["done"]]
    # One chunk per token, unless tokens queued behind a write and went out joined.
    assert 1 <= len(chunks) <= 12 and s.final["completion_tokens"] == 12
    assert "".join(c["delta"] for c in chunks) == s.final["full_content"]
    for c in chunks:
        assert set(c) >= {"model", "delta", "done", "latency_ms", "content_length"}
        assert c["model"] == "gpt-5.2"
    assert [c["content_length"] for c in chunks] == sorted(c["content_length"] for c in chunks)
    last_model = [e for e in s.events if e["event"] == "chunk" and e["done"]]
    assert len(last_model) == 1
    fin = last_model[0]
    for k in ("ttft_ms", "prompt_tokens", "completion_tokens", "tokens_per_second", "cost",
              "finish_reason", "full_content"):
        assert k in fin, k
    assert fin["completion_tokens"] == 12
    assert fin["finish_reason"] == "stop"
    assert fin["full_content"] == "".join(c["delta"] for c in chunks)
    final = s.final
    assert final["event"] == "done" and final["status"] == "succeeded"
    assert final["resolved_model"] == "gpt-5.2"
    assert final["credits_charged"] > 1  # base credit plus tokens


def test_non_stream_returns_the_final_data(api: httpx.Client, mock: httpx.Client) -> None:
    r = api.post("/api/v1/chat", json={"model": "deepseek-v3.2", "messages": MSG})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "succeeded"
    assert body["full_content"]
    assert body["completion_tokens"] > 0 and body["prompt_tokens"] > 0
    job = api.get(f"/api/v1/jobs/{body['job_id']}").json()
    assert job["status"] == "succeeded"
    assert job["credits_charged"] == body["credits_charged"]


def test_late_subscriber_and_resume_lose_nothing(api: httpx.Client, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5.2", "ttft_ms": 10, "token_ms": 20,
                                     "tokens": 30})
    with api.stream("POST", "/api/v1/chat",
                    json={"model": "gpt-5.2", "messages": MSG, "stream": True}) as resp:
        job_id = resp.headers["X-Chorus-Job-Id"]
        first = read_stream(resp, stop_after=5)
    # Reconnect mid-stream with Last-Event-ID: the rest arrives, nothing twice.
    with api.stream("GET", f"/api/v1/jobs/{job_id}/events",
                    headers={"Last-Event-ID": str(first.ids[-1])}) as resp:
        rest = read_stream(resp)
    assert rest.done
    assert first.ids + rest.ids == list(range(1, len(first.ids) + len(rest.ids) + 1))
    whole = first.events + rest.events
    fin = next(e for e in whole if e["event"] == "chunk" and e["done"])
    assert "".join(e["delta"] for e in whole if e["event"] == "chunk") == fin["full_content"]
    # A subscriber arriving after the job ended gets every event from the start.
    with api.stream("GET", f"/api/v1/jobs/{job_id}/events") as resp:
        late = read_stream(resp)
    assert late.ids == list(range(1, len(whole) + 1))
    assert late.events == whole


def test_many_concurrent_late_joiners_see_identical_streams(
    api: httpx.Client, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 50, "token_ms": 10,
                                     "tokens": 40})
    results: list[list[int]] = []

    def follow(job_id: str, delay: float) -> None:
        time.sleep(delay)
        with api.stream("GET", f"/api/v1/jobs/{job_id}/events") as resp:
            results.append(read_stream(resp).ids)

    body = {"model": "gpt-5-mini", "messages": MSG, "stream": True}
    with api.stream("POST", "/api/v1/chat", json=body) as resp:
        job_id = resp.headers["X-Chorus-Job-Id"]
        threads = [threading.Thread(target=follow, args=(job_id, i * 0.05)) for i in range(8)]
        for t in threads:
            t.start()
        own = read_stream(resp)
    for t in threads:
        t.join()
    results.append(own.ids)
    assert len(results) == 9
    assert all(ids == results[0] for ids in results)
    assert results[0] == list(range(1, len(results[0]) + 1))


def test_provider_error_ends_stream_with_error(api: httpx.Client, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5.2", "fault": {"kind": "status",
                                                                   "status": 500}})
    s = stream_post(api, "/api/v1/chat", {"model": "gpt-5.2", "messages": MSG})
    assert s.done
    assert any(e["event"] == "error" and not e.get("final") for e in s.events)
    assert s.final["event"] == "error" and s.final["status"] == "failed"
    assert s.final["error"]["http_status"] == 502
    assert s.final["credits_charged"] == 0
    r = api.post("/api/v1/chat", json={"model": "gpt-5.2", "messages": MSG})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"


def test_broken_stream_is_an_error_not_a_hang(api: httpx.Client, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5.2", "tokens": 20,
                                     "fault": {"kind": "disconnect", "after_tokens": 4}})
    s = stream_post(api, "/api/v1/chat", {"model": "gpt-5.2", "messages": MSG})
    assert s.done and s.final["status"] == "failed"
    chunks = [e for e in s.events if e["event"] == "chunk"]
    assert 1 <= len(chunks) <= 4
    assert sum(len(c["delta"]) for c in chunks) == chunks[-1]["content_length"]
    # Produced tokens are paid for, the base fee is not.
    assert 0 < s.final["credits_charged"] < 1


def test_other_accounts_job_is_404(stack: Stack, api: httpx.Client) -> None:
    r = api.post("/api/v1/chat", json={"model": "gpt-5-mini", "messages": MSG})
    job_id = r.json()["job_id"]
    other = stack.create_key()
    h = {"Authorization": f"Bearer {other}"}
    assert httpx.get(f"{stack.url}/api/v1/jobs/{job_id}", headers=h).status_code == 404
    assert httpx.get(f"{stack.url}/api/v1/jobs/{job_id}/events", headers=h).status_code == 404
    assert httpx.delete(f"{stack.url}/api/v1/jobs/{job_id}", headers=h).status_code == 404
    assert api.get("/api/v1/jobs/not-a-job").status_code == 404
