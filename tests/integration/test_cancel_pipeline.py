"""DELETE /jobs/{id} on a running compare/blend: streams stop, the canvas is revoked, the
job ends cancelled and pays only for the tokens produced."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.test_blend import requests_to
from tests.integration.test_compare import UPSTREAM, side_stack
from tests.sse import iter_sse
from tests.stack import Stack

MSG = [{"role": "user", "content": "Take your time."}]
SLOW = {"model": "*", "ttft_ms": 20, "token_ms": 100, "tokens": 60}  # six seconds a call


def cancel_once_streaming(client: httpx.Client, path: str, body: dict[str, Any],
                          streaming: int) -> tuple[list[dict[str, Any]], float]:
    """Stream a job, cancel it once ``streaming`` models sent two chunks each, read to the
    end; the events and the seconds from the cancel to the final event."""
    events: list[dict[str, Any]] = []
    cancelled_at = 0.0
    with client.stream("POST", path, json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        job_id = resp.headers["X-Chorus-Job-Id"]
        for _seq, data in iter_sse(resp):
            if data == "[DONE]":
                break
            events.append(json.loads(data))
            counts: dict[str, int] = {}
            for e in events:
                if e["event"] == "chunk":
                    counts[e["model"]] = counts.get(e["model"], 0) + 1
            if not cancelled_at and sum(1 for n in counts.values() if n >= 2) >= streaming:
                r = client.delete(f"/api/v1/jobs/{job_id}")
                assert r.status_code == 200 and r.json()["cancel_requested"]
                cancelled_at = time.perf_counter()
    assert cancelled_at, "the job ended before it was cancelled"
    return events, time.perf_counter() - cancelled_at


def wait_for(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_cancel_stops_a_running_compare(api: httpx.Client, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json=SLOW)
    models = ["gpt-5-mini", "gemini-3-flash", "deepseek-v3.2"]
    events, took = cancel_once_streaming(api, "/api/v1/compare",
                                         {"models": models, "messages": MSG}, 3)
    final = events[-1]
    assert final["final"] and final["status"] == "cancelled", final
    assert took < 1.5, f"the job took {took:.2f} s to stop"
    results = final["results"]
    assert all(r["cancelled"] and r["full_content"] for r in results)
    assert all(r["completion_tokens"] < 60 for r in results)
    # Only produced tokens are paid: no base fee, no more than the calls' own cost.
    produced = sum(r["cost"] for r in results)
    assert produced > 0
    assert final["credits_charged"] == pytest.approx(produced, abs=1e-6)
    stats: dict[str, Any] = {}

    def closed() -> bool:
        stats.update(mock.get("/_mock/stats").json())
        return stats["active_streams"] == 0

    wait_for(closed)
    assert all(stats["client_disconnects"].get(UPSTREAM[m]) == 1 for m in models), stats
    job = api.get(f"/api/v1/jobs/{final['job_id']}").json()
    assert job["status"] == "cancelled" and job["credits_charged"] == final["credits_charged"]


def test_cancel_during_a_moa_layer_starts_nothing_after_it(api: httpx.Client,
                                                          mock: httpx.Client) -> None:
    mock.post("/_mock/config", json=SLOW)
    models = ["gpt-5-mini", "gemini-3-flash"]
    events, _took = cancel_once_streaming(
        api, "/api/v1/blend", {"models": models, "strategy": "moa", "layers": 3,
                               "messages": MSG}, 2)
    final = events[-1]
    assert final["status"] == "cancelled", final
    assert {e["layer"] for e in events if e["event"] == "chunk"} == {1}
    assert [(e["layer"], e["status"]) for e in events if e["event"] == "layer"] == [
        (1, "started")]
    time.sleep(0.3)
    assert [len(requests_to(mock, m)) for m in models] == [1, 1]
    assert requests_to(mock, "gpt-5.2") == []
    assert all(a["layer"] == 1 for a in final["answers"])


@pytest.fixture(scope="module")
def narrow(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A worker running three tasks at a time, so a fourth call waits in the queue."""
    with side_stack(stack, tmp_path_factory.mktemp("narrow"), concurrency=3) as s:
        yield s


def test_cancel_revokes_the_calls_still_queued(narrow: Stack, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json=SLOW)
    models = ["gpt-5-mini", "gemini-3-flash", "deepseek-v3.2", "claude-haiku-4.5"]
    headers = {"Authorization": f"Bearer {narrow.create_key(credits=1000)}"}
    with httpx.Client(base_url=narrow.url, headers=headers, timeout=30) as client:
        events, took = cancel_once_streaming(client, "/api/v1/compare",
                                             {"models": models, "messages": MSG}, 3)
    final = events[-1]
    assert final["status"] == "cancelled", final
    assert took < 2.0
    by_model = {r["model"]: r for r in final["results"]}
    streamed = [m for m in models if by_model[m].get("cancelled")]
    queued = [m for m in models if m not in streamed]
    assert len(streamed) == 3 and len(queued) == 1
    # The queued call was revoked: it never ran, not even to find the cancel flag.
    assert by_model[queued[0]]["error"]["code"] == "not_run"
    time.sleep(0.5)
    assert requests_to(mock, queued[0]) == []
    log = (narrow.logs / "worker.log").read_text()
    assert "revoked" in log.lower()
