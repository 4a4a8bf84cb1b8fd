"""Redis killed under a running job: its streams are told to resume (a non-final notice, a
``retry:`` line, no ``[DONE]``), never that the job ended; once Redis is back a resume
gets exactly the remaining events, and the job is charged once.

The stack of this module runs on a Redis server of its own, which the tests kill and
restart (its append-only file keeps what was written, as a restarted server would).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import websocket

from shared.migrate import upgrade
from tests.integration.test_ws import Socket
from tests.procs import free_port, start, stop
from tests.stack import Stack, create_pg_database, drop_pg_database

MSG = [{"role": "user", "content": "Tell me about outages."}]
SLOW = {"model": "gpt-5.2", "ttft_ms": 10, "token_ms": 40, "tokens": 120}


class OwnRedis:
    """A redis-server of the test's own, on a free port, killed and restarted at will."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, empty: bool = False) -> None:
        """Start (again); ``empty``: without what the append-only file kept, as a server
        that lost its data, or one without persistence, comes back."""
        if empty:
            shutil.rmtree(self.dir / "appendonlydir", ignore_errors=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--dir", str(self.dir)]
        self.proc = start(args, dict(os.environ), self.dir / "redis.log", module=False)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        wait_until(lambda: _pings(client), timeout=10)

    def kill(self) -> None:
        assert self.proc is not None
        stop(self.proc, signal.SIGKILL)
        self.proc = None

    def ensure_up(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def wait_until(check: Any, timeout: float, step: float = 0.02) -> float:
    """Seconds until ``check()`` is true; fails after ``timeout``."""
    start_t = time.monotonic()
    while not check():
        assert time.monotonic() - start_t < timeout, "condition not met in time"
        time.sleep(step)
    return time.monotonic() - start_t


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    server = OwnRedis(Path(tmp_path_factory.mktemp("own-redis")))
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            stop(server.proc)


@pytest.fixture(scope="module")
def outage_stack(mock_url: str, own_redis: OwnRedis,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = Path(tmp_path_factory.mktemp("outage-stack"))
    db_url = create_pg_database()
    upgrade(db_url)
    env = dict(
        os.environ,
        CHORUS_DATABASE_URL=db_url, CHORUS_REDIS_URL=own_redis.url, CHORUS_MOCK_URL=mock_url,
        CHORUS_DATA_DIR=str(logs), CHORUS_IDLE_TIMEOUT="10", CHORUS_CONNECT_TIMEOUT="2",
        CHORUS_RATE_LIMIT_SCALE="1000",
        CHORUS_SECRET_KEY="integration-test-secret-0123456789",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    s = Stack(url="", mock_url=mock_url, database_url=db_url, redis_url=own_redis.url,
              env=env, logs=logs)
    try:
        s.start_worker(concurrency=20)
        s.url = s.start_api()
        yield s
    finally:
        s.shutdown()
        drop_pg_database(db_url)


@pytest.fixture(autouse=True)
def clean_breakers(own_redis: OwnRedis) -> Iterator[None]:
    """This module's Redis is its own: each test starts with it up."""
    own_redis.ensure_up()
    yield
    own_redis.ensure_up()


@pytest.fixture
def api(outage_stack: Stack) -> Iterator[httpx.Client]:
    key = outage_stack.create_key(credits=10_000)
    with httpx.Client(base_url=outage_stack.url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


@dataclass
class Read:
    """What a client read of one SSE response: events with their ids, retry lines."""

    ids: list[int | None] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)
    done: bool = False
    ended_at: float = 0.0


def read_sse(resp: httpx.Response, out: Read, on_event: Any = None) -> Read:
    event_id: int | None = None
    for line in resp.iter_lines():
        if line.startswith("retry: "):
            out.retry.append(int(line[7:]))
        elif line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            if line == "data: [DONE]":
                out.done = True
                break
            out.ids.append(event_id)
            out.events.append(json.loads(line[6:]))
            event_id = None
            if on_event is not None:
                on_event(out)
    out.ended_at = time.monotonic()
    return out


def settle(api: httpx.Client, job_id: str) -> dict[str, Any]:
    def ended() -> bool:
        try:
            resp = api.get(f"/api/v1/jobs/{job_id}")
        except httpx.HTTPError:
            return False
        return resp.status_code == 200 and resp.json()["status"] in (
            "succeeded", "failed", "cancelled")

    wait_until(ended, timeout=30, step=0.1)
    job: dict[str, Any] = api.get(f"/api/v1/jobs/{job_id}").json()
    return job


def balance(api: httpx.Client) -> Decimal:
    return Decimal(str(api.get("/api/v1/credits").json()["balance"]))


def test_a_stream_broken_off_by_redis_resumes_with_exactly_the_rest(
    api: httpx.Client, mock: httpx.Client, own_redis: OwnRedis
) -> None:
    mock.post("/_mock/config", json=SLOW)
    before = balance(api)
    killed_at: list[float] = []

    def kill_after_some(read: Read) -> None:
        if not killed_at and len(read.events) >= 10:
            own_redis.kill()
            killed_at.append(time.monotonic())

    body = {"model": "gpt-5.2", "messages": MSG, "stream": True}
    with api.stream("POST", "/api/v1/chat", json=body,
                    timeout=httpx.Timeout(30.0)) as resp:
        job_id = resp.headers["X-Chorus-Job-Id"]
        first = read_sse(resp, Read(), kill_after_some)
    # Told to resume, never that the job ended; no [DONE], so the client resumes.
    assert killed_at, "the stream ended before Redis was killed"
    notice = first.events[-1]
    assert notice["event"] == "reconnect" and first.ids[-1] is None
    assert not first.done and not any(e.get("final") for e in first.events)
    assert first.retry == [2000]
    sent = [i for i in first.ids if i is not None]
    assert sent == list(range(1, len(sent) + 1)) and notice["last_event_id"] == sent[-1]
    noticed_s = first.ended_at - killed_at[0]
    assert noticed_s < 10
    # A resume while Redis is still down is refused, not answered with an invented end.
    down = api.get(f"/api/v1/jobs/{job_id}/events",
                   headers={"Last-Event-ID": str(notice["last_event_id"])})
    assert down.status_code == 503, down.text

    own_redis.start()
    with api.stream("GET", f"/api/v1/jobs/{job_id}/events",
                    headers={"Last-Event-ID": str(notice["last_event_id"])},
                    timeout=httpx.Timeout(30.0)) as resp:
        assert resp.status_code == 200
        rest = read_sse(resp, Read())
    assert rest.done and rest.events[-1]["final"] and rest.events[-1]["status"] == "succeeded"
    # Exactly the remaining events: numbered on from where the first read stopped.
    assert rest.ids == list(range(sent[-1] + 1, sent[-1] + 1 + len(rest.ids)))
    chunks = [e for e in first.events[:-1] + rest.events if e.get("event") == "chunk"]
    assert "".join(e.get("delta", "") for e in chunks) == rest.events[-1]["full_content"]

    job = settle(api, job_id)
    assert job["credits_charged"] == rest.events[-1]["credits_charged"]
    assert before - balance(api) == Decimal(str(job["credits_charged"]))
    print(f"\nnotice {noticed_s:.2f} s after the kill")


def test_a_waiting_request_gets_a_503_naming_its_job(
    api: httpx.Client, mock: httpx.Client, own_redis: OwnRedis
) -> None:
    mock.post("/_mock/config", json=SLOW)
    answers: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: answers.append(api.post(
        "/api/v1/chat", json={"model": "gpt-5.2", "messages": MSG})))
    waiter.start()
    wait_until(lambda: mock.get("/_mock/stats").json()["active_streams"] >= 1, timeout=10)
    own_redis.kill()
    killed = time.monotonic()
    waiter.join(timeout=20)
    assert answers, "no answer while Redis was down"
    resp = answers[0]
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "unavailable"
    job_id = resp.json()["job_id"]
    assert resp.headers["X-Chorus-Job-Id"] == job_id
    print(f"\n503 {time.monotonic() - killed:.2f} s after the kill")
    own_redis.start()
    assert settle(api, job_id)["status"] == "succeeded"


def test_a_socket_relay_broken_off_by_redis_resumes_with_follow(
    outage_stack: Stack, api: httpx.Client, mock: httpx.Client, own_redis: OwnRedis
) -> None:
    mock.post("/_mock/config", json=SLOW)
    key = api.headers["Authorization"].removeprefix("Bearer ")
    conn = websocket.create_connection(
        outage_stack.url.replace("http://", "ws://") + "/api/v1/ws", timeout=20,
        header=[f"Authorization: Bearer {key}"])
    try:
        sock = Socket(conn)
        assert sock.recv() == {"type": "ready"}
        sock.send({"type": "chat", "id": "c", "model": "gpt-5.2", "messages": MSG})
        got = sock.until(lambda m: m["type"] == "event" and m["seq"] >= 10)
        job_id = got[0]["job_id"]
        own_redis.kill()
        got += sock.until(lambda m: m["type"] not in ("event",))
        notice = got[-1]
        assert notice["type"] == "reconnect" and notice["job_id"] == job_id
        events_seen = [m for m in got if m["type"] == "event"]
        assert not any(m["data"].get("final") for m in events_seen)
        assert notice["after"] == events_seen[-1]["seq"]
        own_redis.start()
        sock.send({"type": "follow", "id": "c", "job_id": job_id, "after": notice["after"]})
        rest = sock.until(lambda m: m["type"] in ("done", "error", "reconnect"))
        assert rest[0]["type"] == "accepted" and rest[-1]["type"] == "done"
        seqs = [m["seq"] for m in rest if m["type"] == "event"]
        assert seqs == list(range(notice["after"] + 1, notice["after"] + 1 + len(seqs)))
        assert rest[-2]["data"]["final"] and rest[-2]["data"]["status"] == "succeeded"
    finally:
        conn.close()


def test_a_resumed_socket_relay_still_cancels_its_job_on_close(
    outage_stack: Stack, api: httpx.Client, mock: httpx.Client, own_redis: OwnRedis
) -> None:
    mock.post("/_mock/config", json=SLOW)
    key = api.headers["Authorization"].removeprefix("Bearer ")
    conn = websocket.create_connection(
        outage_stack.url.replace("http://", "ws://") + "/api/v1/ws", timeout=20,
        header=[f"Authorization: Bearer {key}"])
    try:
        sock = Socket(conn)
        assert sock.recv() == {"type": "ready"}
        sock.send({"type": "chat", "id": "c", "model": "gpt-5.2", "messages": MSG})
        job_id = sock.until(lambda m: m["type"] == "event" and m["seq"] >= 5)[0]["job_id"]
        own_redis.kill()
        notice = sock.until(lambda m: m["type"] != "event")[-1]
        assert notice["type"] == "reconnect"
        own_redis.start()
        sock.send({"type": "follow", "id": "c", "job_id": job_id, "after": notice["after"]})
        sock.until(lambda m: m["type"] == "event" and m["seq"] >= notice["after"] + 5)
    finally:
        conn.close()
    # The socket that started the job left before its end: the job stops, as it would
    # have without the outage.
    assert settle(api, job_id)["status"] == "cancelled"
