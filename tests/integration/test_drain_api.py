"""An API process stopped with SIGTERM drains: it refuses new connections, tells each open
stream to reconnect (SSE and WebSocket) without ending it, lets a request waiting for a
whole answer finish, closes idle kept-alive connections and exits; the streams resume on
another process with every event exactly once, and their jobs run on, charged once."""

from __future__ import annotations

import json
import signal
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websocket
from sqlalchemy import select

from shared.db import session_scope
from shared.tables import Job, LedgerEntry
from tests.stack import Stack

DRAIN_S = 8.0
MSG = [{"role": "user", "content": "tell me a long story"}]
SLOW = {"model": "gpt-5-mini", "ttft_ms": 20, "token_ms": 100, "tokens": 80}


@dataclass
class SseReader:
    """A streamed chat read in a thread until the server ends it, line by line."""

    url: str
    key: str
    job_id: str = ""
    lines: list[tuple[float, str]] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=30,
                              headers={"Authorization": f"Bearer {self.key}"}) as api, \
                    api.stream("POST", "/api/v1/chat",
                               json={"model": "gpt-5-mini", "messages": MSG,
                                     "stream": True}) as resp:
                self.job_id = resp.headers["X-Chorus-Job-Id"]
                self.started.set()
                for line in resp.iter_lines():
                    self.lines.append((time.monotonic(), line))
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.started.set()

    def events(self) -> list[tuple[int | None, dict[str, Any]]]:
        return parse_sse([ln for _, ln in self.lines])

    def chunks_seen(self) -> int:
        return sum(1 for _, e in self.events() if e.get("event") == "chunk")


def parse_sse(lines: list[str]) -> list[tuple[int | None, dict[str, Any]]]:
    out: list[tuple[int | None, dict[str, Any]]] = []
    seq: int | None = None
    for line in lines:
        if line.startswith("id: "):
            seq = int(line[4:])
        elif line.startswith("data: ") and line != "data: [DONE]":
            out.append((seq, json.loads(line[6:])))
            seq = None
    return out


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def ws_connect(url: str, key: str) -> websocket.WebSocket:
    conn = websocket.create_connection(url.replace("http://", "ws://") + "/api/v1/ws",
                                       timeout=15, header=[f"Authorization: Bearer {key}"])
    assert json.loads(conn.recv()) == {"type": "ready"}
    return conn


def ws_until_close(conn: websocket.WebSocket) -> tuple[list[dict[str, Any]], int | None]:
    """Every message until the server's close frame, and the frame's close code."""
    messages: list[dict[str, Any]] = []
    while True:
        op, frame = conn.recv_data_frame(True)
        if op == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else None
            return messages, code
        if op == websocket.ABNF.OPCODE_TEXT:
            messages.append(json.loads(frame.data))


def settled_once(stack: Stack, job_id: str) -> Job:
    with session_scope(stack.database_url) as s:
        kinds = list(s.execute(select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id)
                               .order_by(LedgerEntry.id)).scalars())
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
    assert kinds == ["reserve", "settle"], kinds
    return job


@pytest.fixture
def two_apis(stack: Stack) -> Iterator[tuple[str, str]]:
    env = {"CHORUS_DRAIN_S": str(DRAIN_S)}
    try:
        yield stack.start_api("api-drain", env=env), stack.start_api("api-next", env=env)
    finally:
        for name in ("api-drain", "api-next"):
            if name in stack.procs:
                stack.stop_proc(name, signal.SIGKILL)


def test_a_stopping_api_process_sends_its_streams_elsewhere(
    stack: Stack, mock: httpx.Client, two_apis: tuple[str, str]
) -> None:
    draining_url, next_url = two_apis
    mock.post("/_mock/config", json=SLOW)
    mock.post("/_mock/config", json={"model": "claude-haiku-4-5", "ttft_ms": 20,
                                     "token_ms": 100, "tokens": 30})
    key = stack.create_key(credits=1000)
    readers = [SseReader(draining_url, key) for _ in range(3)]
    for r in readers:
        threading.Thread(target=r.run, daemon=True).start()
    for r in readers:
        assert r.started.wait(30) and r.error is None, r.error
    sock = ws_connect(draining_url, key)
    sock.send(json.dumps({"type": "chat", "id": "w1", "model": "gpt-5-mini",
                          "messages": MSG}))
    ws_seen: list[dict[str, Any]] = []
    while sum(m["type"] == "event" for m in ws_seen) < 3:
        ws_seen.append(json.loads(sock.recv()))
    ws_job = ws_seen[0]["job_id"]
    wait_for(lambda: all(r.chunks_seen() >= 3 for r in readers), 20, "streams started")

    whole: dict[str, Any] = {}

    def whole_answer() -> None:
        with httpx.Client(base_url=draining_url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as api:
            resp = api.post("/api/v1/chat", json={"model": "claude-haiku-4.5", "messages": MSG})
            whole.update(status=resp.status_code, body=resp.json())

    waiting = threading.Thread(target=whole_answer, daemon=True)
    waiting.start()
    # The signal comes once the request is in flight (its model call has started).
    wait_for(lambda: mock.get("/_mock/stats").json()["calls"].get("claude-haiku-4-5", 0) >= 1,
             20, "the whole-answer request never reached the mock")
    # A kept-alive connection left idle must not hold the process for the drain time.
    idle = httpx.Client(base_url=draining_url, timeout=5)
    assert idle.get("/healthz").status_code == 200
    proc = stack.procs["api-drain"]
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)

    # Every stream gets its notice and ends without a final event.
    ws_messages, close_code = ws_until_close(sock)
    ws_noticed = time.monotonic() - sent
    wait_for(lambda: all(r.lines and r.lines[-1][1] == "" and any(
        '"reconnect"' in ln for _, ln in r.lines) for r in readers), 10, "no reconnect notice")
    noticed = max(next(t for t, ln in r.lines if '"reconnect"' in ln) for r in readers) - sent
    # New connections are refused.
    refused_at = None
    deadline = time.monotonic() + 5
    while refused_at is None and time.monotonic() < deadline:
        try:
            httpx.get(f"{draining_url}/healthz", timeout=1)
            time.sleep(0.05)
        except httpx.ConnectError:
            refused_at = time.monotonic() - sent
    assert refused_at is not None, "the draining process still accepts connections"
    waiting.join(DRAIN_S)
    assert whole.get("status") == 200, whole
    assert whole["body"]["status"] == "succeeded"
    proc.wait(DRAIN_S + 5)
    exited = time.monotonic() - sent
    idle.close()
    # It left once the whole answer was out (about 3 s), not at the drain time.
    assert exited < DRAIN_S - 2, exited

    # WebSocket: a notice naming each running job and where it stands, then 1012.
    assert close_code == 1012
    notice = ws_messages[-1]
    last_ws = max(m["seq"] for m in ws_seen + ws_messages if m["type"] == "event")
    assert {k: notice[k] for k in ("type", "id", "job_id", "after", "reason")} == {
        "type": "reconnect", "id": "w1", "job_id": ws_job, "after": last_ws,
        "reason": "server draining"}
    assert not any(m["type"] == "done" for m in ws_seen + ws_messages)

    for r in readers:
        assert r.error is None, r.error
        raw = [ln for _, ln in r.lines]
        assert "data: [DONE]" not in raw
        assert any(ln.startswith("retry: ") for ln in raw)
        got = r.events()
        last_id, reconnect = got[-1]
        assert last_id is None and reconnect["event"] == "reconnect"
        ids = [i for i, _ in got[:-1]]
        assert ids == list(range(1, len(ids) + 1))
        assert {k: reconnect[k] for k in ("event", "reason", "job_id", "last_event_id")} == {
            "event": "reconnect", "reason": "server draining", "job_id": r.job_id,
            "last_event_id": ids[-1]}
        assert not any(e.get("final") for _, e in got)
        # The rest on the other process, from the notice's id, exactly once.
        with httpx.Client(base_url=next_url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as api, \
                api.stream("GET", f"/api/v1/jobs/{r.job_id}/events",
                           headers={"Last-Event-ID": str(ids[-1])}) as resp:
            rest_raw = list(resp.iter_lines())
        assert rest_raw.count("data: [DONE]") == 1
        rest = parse_sse(rest_raw)
        assert [i for i, _ in rest] == list(range(ids[-1] + 1, ids[-1] + 1 + len(rest)))
        final = rest[-1][1]
        assert final["final"] and final["status"] == "succeeded"
        text = "".join(e.get("delta", "") for _, e in got + rest if e.get("event") == "chunk")
        assert text == final["full_content"]
        job = settled_once(stack, r.job_id)
        assert job.status == "succeeded"
        assert float(job.credits_charged or 0) == final["credits_charged"]

    # The WebSocket job, followed on the other process from where it stood.
    sock2 = ws_connect(next_url, key)
    sock2.send(json.dumps({"type": "follow", "id": "w1", "job_id": ws_job, "after": last_ws}))
    rest_ws: list[dict[str, Any]] = []
    while not rest_ws or rest_ws[-1]["type"] != "done":
        rest_ws.append(json.loads(sock2.recv()))
    sock2.close()
    seqs = [m["seq"] for m in rest_ws if m["type"] == "event"]
    assert seqs == list(range(last_ws + 1, last_ws + 1 + len(seqs)))
    assert rest_ws[-2]["data"]["final"] and rest_ws[-2]["data"]["status"] == "succeeded"
    assert settled_once(stack, ws_job).status == "succeeded"
    print(f"\napi drain ({DRAIN_S:.0f} s): SSE notices within {noticed:.2f} s, WebSocket "
          f"{ws_noticed:.2f} s; connections refused after {refused_at:.2f} s; "
          f"process exited after {exited:.2f} s (a whole answer in flight finished)")
