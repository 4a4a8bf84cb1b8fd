"""GET /api/v1/jobs/{id}/events always ends: at or past an ended job's last event at once,
with the job's final from the database once its replay list is gone (status only for a
zero-retention account), and a bad Last-Event-ID is a 400."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import redis
import websocket

from shared import events
from tests.integration.test_ws import Socket, ws_url
from tests.sse import iter_sse, stream_post
from tests.stack import Stack

MSG = [{"role": "user", "content": "Tell me about streams."}]
CONTENT = ("full_content", "content", "tool_calls", "answers", "results", "scores")


def read_raw(api: httpx.Client, job_id: str, headers: dict[str, str] | None = None,
             params: dict[str, str] | None = None) -> tuple[list[tuple[int | None, Any]],
                                                            float]:
    """Every (id, event) of the stream up to [DONE] (as the string), and how long it took.
    A stream that waits instead of ending fails the read within 5 s."""
    start = time.monotonic()
    out: list[tuple[int | None, Any]] = []
    with api.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=headers, params=params,
                    timeout=httpx.Timeout(5.0)) as resp:
        assert resp.status_code == 200, resp.read()
        for event_id, data in iter_sse(resp):
            out.append((event_id, data if data == "[DONE]" else json.loads(data)))
            if data == "[DONE]":
                break
    return out, time.monotonic() - start


def finished_chat(api: httpx.Client, mock: httpx.Client) -> tuple[str, list[int], dict[str, Any]]:
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 5, "token_ms": 1,
                                     "tokens": 8})
    s = stream_post(api, "/api/v1/chat", {"model": "gpt-5-mini", "messages": MSG})
    assert s.done
    return s.headers["X-Chorus-Job-Id"], s.ids, s.final


def test_reading_at_or_past_the_last_event_ends_at_once(api: httpx.Client,
                                                        mock: httpx.Client) -> None:
    job_id, ids, final = finished_chat(api, mock)
    last = ids[-1]
    got, took = read_raw(api, job_id, headers={"Last-Event-ID": str(last)})
    assert got == [(None, "[DONE]")] and took < 1.0
    # Past the end (a list numbered afresh after Redis lost it looks the same): the final
    # event the reader cannot have seen, then [DONE].
    got, took = read_raw(api, job_id, params={"last_event_id": str(last + 50)})
    assert got == [(last, final), (None, "[DONE]")] and took < 1.0
    got, _ = read_raw(api, job_id, headers={"Last-Event-ID": str(events.MAX_EVENT_ID)})
    assert got == [(last, final), (None, "[DONE]")]


def test_a_lost_replay_list_ends_with_the_final_from_the_database(
    stack: Stack, api: httpx.Client, mock: httpx.Client
) -> None:
    job_id, ids, final = finished_chat(api, mock)
    # What expiry, or a Redis emptied by a restart, leaves.
    redis.Redis.from_url(stack.redis_url).delete(events.events_key(job_id))
    for headers in ({}, {"Last-Event-ID": str(ids[-1])}, {"Last-Event-ID": "3"}):
        got, took = read_raw(api, job_id, headers=headers)
        assert took < 1.0
        assert [g[0] for g in got] == [None, None]  # not in any list: no id
        rebuilt, done = got[0][1], got[1][1]
        assert done == "[DONE]"
        assert rebuilt == final  # the worker's final event, rebuilt from the job's row


def test_a_zero_retention_job_whose_list_is_gone_gets_its_status_only(
    stack: Stack, mock: httpx.Client
) -> None:
    key = stack.create_key(credits=1000, zero_retention=True)
    with httpx.Client(base_url=stack.url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as zr:
        job_id, ids, final = finished_chat(zr, mock)
        assert final.get("full_content")  # the live stream did carry the answer
        redis.Redis.from_url(stack.redis_url).delete(events.events_key(job_id))
        got, took = read_raw(zr, job_id, headers={"Last-Event-ID": str(ids[-1])})
    assert took < 1.0 and got[-1] == (None, "[DONE]") and len(got) == 2
    expired = got[0][1]
    assert expired["final"] is True and expired["event"] == "expired"
    assert expired["status"] == "succeeded" and expired["job_id"] == job_id
    assert not set(expired) & set(CONTENT)
    assert set(expired) == {"final", "event", "job_id", "status", "message"}


@pytest.mark.parametrize("raw", ["-1", "abc", "9223372036854775808", "1e3", "9" * 30])
def test_a_bad_last_event_id_is_a_400(api: httpx.Client, mock: httpx.Client, raw: str) -> None:
    job_id, _, _ = finished_chat(api, mock)
    for where, kw in (("Last-Event-ID", {"headers": {"Last-Event-ID": raw}}),
                      ("last_event_id", {"params": {"last_event_id": raw}})):
        resp = api.get(f"/api/v1/jobs/{job_id}/events", **kw)  # type: ignore[arg-type]
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["param"] == where and "event id" in error["message"]


def test_a_socket_follow_of_a_lost_list_ends_with_the_database_final(
    stack: Stack, key: str, api: httpx.Client, mock: httpx.Client
) -> None:
    job_id, ids, final = finished_chat(api, mock)
    redis.Redis.from_url(stack.redis_url).delete(events.events_key(job_id))
    conn = websocket.create_connection(ws_url(stack), timeout=5,
                                       header=[f"Authorization: Bearer {key}"])
    try:
        sock = Socket(conn)
        assert sock.recv() == {"type": "ready"}
        sock.send({"type": "follow", "id": "f", "job_id": job_id, "after": ids[-1]})
        got = sock.until(lambda m: m["type"] in ("done", "error"))
        assert [m["type"] for m in got] == ["accepted", "event", "done"]
        assert got[1]["seq"] is None and got[1]["data"] == final
        sock.send({"type": "follow", "id": "g", "job_id": job_id, "after": 2**63})
        assert sock.recv()["error"]["param"] == "after"
    finally:
        conn.close()
