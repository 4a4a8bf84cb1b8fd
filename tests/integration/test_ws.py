"""WS /api/v1/ws: several jobs multiplexed on one socket, cancel by id, auth, errors."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websocket

from tests.stack import Stack

MSG = [{"role": "user", "content": "Tell me about sockets."}]


def ws_url(stack: Stack) -> str:
    return stack.url.replace("http://", "ws://") + "/api/v1/ws"


class Socket:
    def __init__(self, conn: websocket.WebSocket) -> None:
        self.conn = conn

    def send(self, msg: dict[str, Any]) -> None:
        self.conn.send(json.dumps(msg))

    def recv(self) -> dict[str, Any]:
        msg: dict[str, Any] = json.loads(self.conn.recv())
        return msg

    def until(self, pred: Any, limit: int = 5000) -> list[dict[str, Any]]:
        """Messages up to and including the first one ``pred`` accepts."""
        out = []
        for _ in range(limit):
            out.append(self.recv())
            if pred(out[-1]):
                return out
        raise AssertionError("message never arrived")


@pytest.fixture
def sock(stack: Stack, key: str) -> Iterator[Socket]:
    conn = websocket.create_connection(ws_url(stack), timeout=15,
                                       header=[f"Authorization: Bearer {key}"])
    s = Socket(conn)
    assert s.recv() == {"type": "ready"}
    yield s
    conn.close()


def test_two_jobs_on_one_socket_and_cancel_one(sock: Socket, mock: httpx.Client,
                                               api: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5.2", "ttft_ms": 10, "token_ms": 30,
                                     "tokens": 300})
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 10, "token_ms": 15,
                                     "tokens": 40})
    sock.send({"type": "chat", "id": "slow", "model": "gpt-5.2", "messages": MSG})
    sock.send({"type": "chat", "id": "fast", "model": "gpt-5-mini", "messages": MSG})
    seen: list[dict[str, Any]] = []
    cancelled = False
    done: set[str] = set()
    while done != {"slow", "fast"}:
        msg = sock.recv()
        seen.append(msg)
        if msg["type"] == "done":
            done.add(msg["id"])
        slow_chunks = [m for m in seen if m["type"] == "event" and m["id"] == "slow"]
        if not cancelled and len(slow_chunks) >= 5:
            sock.send({"type": "cancel", "id": "slow"})
            cancelled = True
    accepted = {m["id"]: m["job_id"] for m in seen if m["type"] == "accepted"}
    assert set(accepted) == {"slow", "fast"} and accepted["slow"] != accepted["fast"]
    by_job: dict[str, list[dict[str, Any]]] = {"slow": [], "fast": []}
    for m in seen:
        if m["type"] == "event":
            assert m["job_id"] == accepted[m["id"]]
            by_job[m["id"]].append(m)
    # Both streams were live at once: the fast job's events arrived between the slow one's.
    order = [m["id"] for m in seen if m["type"] == "event"]
    first_fast, last_fast = order.index("fast"), len(order) - 1 - order[::-1].index("fast")
    assert "slow" in order[first_fast:last_fast]
    for events in by_job.values():
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    fast_final, slow_final = by_job["fast"][-1]["data"], by_job["slow"][-1]["data"]
    assert fast_final["final"] and fast_final["status"] == "succeeded"
    assert fast_final["completion_tokens"] == 40
    assert slow_final["final"] and slow_final["status"] == "cancelled"
    assert slow_final["completion_tokens"] < 300
    assert any(m["type"] == "cancelling" and m["id"] == "slow" for m in seen)
    # done comes after the job's final event.
    for cid in ("slow", "fast"):
        idx = [i for i, m in enumerate(seen) if m.get("id") == cid]
        assert seen[idx[-1]]["type"] == "done" and seen[idx[-2]]["data"]["final"]
    stats = mock.get("/_mock/stats").json()
    assert stats["client_disconnects"].get("gpt-5.2") == 1
    assert stats["completed"].get("gpt-5-mini") == 1
    assert api.get(f"/api/v1/jobs/{accepted['slow']}").json()["status"] == "cancelled"


def test_auth_by_first_message(stack: Stack, key: str) -> None:
    conn = websocket.create_connection(ws_url(stack), timeout=15)
    s = Socket(conn)
    s.send({"type": "auth", "key": key})
    assert s.recv() == {"type": "ready"}
    s.send({"type": "ping", "id": "p1"})
    assert s.recv() == {"type": "pong", "id": "p1"}
    conn.close()


@pytest.mark.parametrize("first", [{"type": "auth", "key": "ch_sk_wrong"},
                                   {"type": "chat", "id": "x", "model": "gpt-5.2",
                                    "messages": MSG}])
def test_bad_or_missing_auth_closes_the_socket(stack: Stack, first: dict[str, Any]) -> None:
    conn = websocket.create_connection(ws_url(stack), timeout=15)
    s = Socket(conn)
    s.send(first)
    err = s.recv()
    assert err["type"] == "error" and err["status"] == 401
    assert err["error"]["code"] == "unauthorized"
    opcode, data = conn.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(data[:2], "big") == 1008  # policy violation
    conn.close()


def test_bad_header_key_is_refused(stack: Stack) -> None:
    conn = websocket.create_connection(ws_url(stack), timeout=15,
                                       header=["Authorization: Bearer ch_sk_wrong"])
    assert Socket(conn).recv()["status"] == 401
    conn.close()


def test_errors_are_tagged_and_the_socket_keeps_working(sock: Socket, mock: httpx.Client,
                                                        stack: Stack) -> None:
    sock.send({"type": "chat", "id": "a", "model": "gpt-5.2", "messages": [],
               "surprise": 1})
    err = sock.recv()
    assert err["type"] == "error" and err["id"] == "a" and err["status"] == 400
    assert err["error"]["param"] in ("messages", "surprise")
    sock.send({"type": "chat", "id": "b", "model": "no-such-model", "messages": MSG})
    err = sock.recv()
    assert (err["id"], err["status"], err["error"]["param"]) == ("b", 400, "model")
    sock.send({"type": "dance", "id": "c"})
    assert sock.recv()["error"]["param"] == "type"
    sock.conn.send("not json")
    assert sock.recv()["status"] == 400
    sock.send({"type": "cancel", "id": "never-started"})
    assert sock.recv()["status"] == 404
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "tokens": 5, "token_ms": 1})
    sock.send({"type": "chat", "id": "ok", "model": "gpt-5-mini", "messages": MSG})
    sock.send({"type": "chat", "id": "ok", "model": "gpt-5-mini", "messages": MSG})
    msgs = sock.until(lambda m: m["type"] == "done")
    dup = [m for m in msgs if m["type"] == "error"]
    assert len(dup) == 1 and dup[0]["error"]["param"] == "id"
    assert msgs[-2]["data"]["status"] == "succeeded"
    # A 402 carries the same numbers as over HTTP.
    poor = websocket.create_connection(ws_url(stack), timeout=15, header=[
        f"Authorization: Bearer {stack.create_key(credits=0)}"])
    p = Socket(poor)
    p.recv()
    p.send({"type": "chat", "id": "x", "model": "gpt-5.2", "messages": MSG})
    err = p.recv()
    assert err["status"] == 402 and err["credits"] == 0 and err["required"] > 1
    poor.close()


def test_closing_the_socket_cancels_its_jobs(stack: Stack, key: str, mock: httpx.Client,
                                            api: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5.2", "ttft_ms": 10, "token_ms": 30,
                                     "tokens": 300})
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 10, "token_ms": 10,
                                     "tokens": 60})
    conn = websocket.create_connection(ws_url(stack), timeout=15,
                                       header=[f"Authorization: Bearer {key}"])
    s = Socket(conn)
    s.recv()
    s.send({"type": "chat", "id": "drop", "model": "gpt-5.2", "messages": MSG})
    s.send({"type": "chat", "id": "keep", "model": "gpt-5-mini", "messages": MSG,
            "keep_running": True})
    msgs = s.until(lambda m: m["type"] == "event" and m["id"] == "drop" and m["seq"] >= 5)
    jobs = {m["id"]: m["job_id"] for m in msgs if m["type"] == "accepted"}
    conn.close()
    left = time.monotonic()
    while mock.get("/_mock/stats").json()["client_disconnects"].get("gpt-5.2") != 1:
        assert time.monotonic() - left < 1.0, "provider stream still open after 1 s"
        time.sleep(0.02)
    deadline = time.monotonic() + 10
    while api.get(f"/api/v1/jobs/{jobs['keep']}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert api.get(f"/api/v1/jobs/{jobs['drop']}").json()["status"] == "cancelled"
    assert mock.get("/_mock/stats").json()["completed"].get("gpt-5-mini") == 1


def test_follow_reattaches_after_a_reconnect(stack: Stack, key: str, mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 10, "token_ms": 10,
                                     "tokens": 40})
    conn = websocket.create_connection(ws_url(stack), timeout=15,
                                       header=[f"Authorization: Bearer {key}"])
    s = Socket(conn)
    s.recv()
    s.send({"type": "chat", "id": "j", "model": "gpt-5-mini", "messages": MSG,
            "keep_running": True})
    first = s.until(lambda m: m["type"] == "event" and m["seq"] == 6)
    job_id = first[0]["job_id"]
    conn.close()
    again = websocket.create_connection(ws_url(stack), timeout=15)
    s2 = Socket(again)
    s2.send({"type": "auth", "key": key})
    s2.recv()
    s2.send({"type": "follow", "id": "j2", "job_id": job_id, "after": 6})
    rest = s2.until(lambda m: m["type"] == "done")
    events = [m for m in rest if m["type"] == "event"]
    assert events[0]["seq"] == 7 and events[-1]["data"]["status"] == "succeeded"
    assert [e["seq"] for e in events] == list(range(7, 7 + len(events)))
    # Someone else's job is as good as missing.
    other = websocket.create_connection(ws_url(stack), timeout=15, header=[
        f"Authorization: Bearer {stack.create_key()}"])
    o = Socket(other)
    o.recv()
    o.send({"type": "follow", "id": "x", "job_id": job_id})
    assert o.recv()["status"] == 404
    other.close()
    again.close()


def test_plain_get_is_a_clear_400(stack: Stack) -> None:
    r = httpx.get(f"{stack.url}/api/v1/ws")
    assert r.status_code == 400
    assert "WebSocket" in r.json()["error"]["message"]


@pytest.fixture
def limited_ws(stack: Stack) -> Iterator[str]:
    """An API process with real limits and a chat bucket of 2 (x1.5 paid: 3 a minute)."""
    env = dict(stack.env, CHORUS_RATE_LIMIT_SCALE="1", CHORUS_RATE_LIMITS="chat=2")
    url = dataclasses.replace(stack, env=env, procs=stack.procs).start_api("web-ws-limited")
    yield url.replace("http://", "ws://") + "/api/v1/ws"
    stack.stop_proc("web-ws-limited")


def test_jobs_over_the_socket_are_rate_limited(stack: Stack, limited_ws: str,
                                               mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "tokens": 3, "token_ms": 1})
    conn = websocket.create_connection(limited_ws, timeout=15, header=[
        f"Authorization: Bearer {stack.create_key()}"])
    s = Socket(conn)
    s.recv()
    for i in range(4):
        s.send({"type": "chat", "id": f"j{i}", "model": "gpt-5-mini", "messages": MSG})
    msgs = s.until(lambda m: m["type"] == "error")
    err = msgs[-1]
    assert (err["id"], err["status"], err["error"]["code"]) == ("j3", 429, "rate_limited")
    assert err["retry_after"] >= 1
    assert [m["id"] for m in msgs if m["type"] == "accepted"] == ["j0", "j1", "j2"]
    conn.close()
