"""A SIGKILLed worker's job is taken over by another within about its lease period, with
a `retry` event before the new deltas (per call in a pipeline), and charged once; a live
worker's long job is never handed to a second one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select

from shared import events
from shared.db import session_scope
from shared.tables import Job, LedgerEntry
from tests.integration.test_compare import UPSTREAM, side_stack
from tests.procs import free_port, start, stop
from tests.sse import iter_sse
from tests.stack import Stack
from workers.lease import lease_key, step_lease

MSG = [{"role": "user", "content": "Take me over."}]
WORKERS = ("worker", "w2")
# The user's answer may stall about a lease period (15 s) while the dead worker's lease
# lapses, plus the sweep's look and confirmation and the rerun of the answer.
TAKEOVER_LIMIT_S = 30.0


@pytest.fixture(scope="module")
def pair(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An API and two workers of their own (own Redis db and broker), so one can be killed
    and the other take over."""
    with side_stack(stack, tmp_path_factory.mktemp("takeover")) as s:
        s.start_worker("w2")
        yield s


@pytest.fixture
def workers(pair: Stack) -> Iterator[Stack]:
    """Both workers running before the test, whichever the last one killed."""
    for name in WORKERS:
        if name not in pair.procs:
            pair.start_worker(name)
    yield pair


@dataclass
class Reading:
    """A client's stream, read in a thread, with when each event arrived."""

    events: list[dict[str, Any]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    job_id: str = ""
    started: threading.Event = field(default_factory=threading.Event)

    def wait_for(self, pred: Any, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(pred(e) for e in list(self.events)):
            assert time.monotonic() < deadline, self.events[-3:]
            time.sleep(0.02)

    @property
    def final_at(self) -> float:
        assert self.events and self.events[-1].get("final"), self.events[-3:]
        return self.arrived[-1]


def read(stack: Stack, key: str, path: str, body: dict[str, Any], out: Reading) -> None:
    with httpx.Client(base_url=stack.url, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as api, \
            api.stream("POST", path, json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        out.job_id = resp.headers["X-Chorus-Job-Id"]
        out.started.set()
        for _seq, data in iter_sse(resp):
            if data == "[DONE]":
                return
            out.events.append(json.loads(data))
            out.arrived.append(time.monotonic())


def kill_owner(stack: Stack, lease_name: str) -> tuple[str, float]:
    """SIGKILL the worker process holding the lease; its name and when it died."""
    owner = redis.Redis.from_url(stack.redis_url).get(lease_key(lease_name))
    assert owner is not None, f"nobody holds {lease_name}"
    text = owner if isinstance(owner, str) else owner.decode()
    pid = int(text.rsplit(":", 2)[1])
    [name] = [n for n in WORKERS if n in stack.procs and stack.procs[n].pid == pid]
    stack.stop_proc(name, signal.SIGKILL)
    return name, time.monotonic()


def deltas_after_last_retry(events: list[dict[str, Any]], model: str) -> str:
    """What a client shows of ``model``'s call: a job's retry (no model) or the call's own
    drops the text before it."""
    text = ""
    for e in events:
        if e.get("event") == "retry" and e.get("model") in (None, model):
            text = ""
        elif e.get("event") == "chunk" and e.get("model") == model and not e["done"]:
            text += e["delta"]
    return text


def all_deltas(events: list[dict[str, Any]], model: str) -> str:
    return "".join(e["delta"] for e in events
                   if e.get("event") == "chunk" and e.get("model") == model and not e["done"])


def settled(stack: Stack, job_id: str) -> tuple[Job, list[tuple[str, Decimal]]]:
    with session_scope(stack.database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        rows = s.execute(select(LedgerEntry.kind, LedgerEntry.amount)
                         .where(LedgerEntry.job_id == job_id).order_by(LedgerEntry.id)).all()
    return job, [(k, Decimal(a)) for k, a in rows]


def calls(mock: httpx.Client) -> dict[str, int]:
    return dict(mock.get("/_mock/stats").json()["calls"])


def test_a_killed_workers_chat_is_taken_over_within_the_lease(
        workers: Stack, mock: httpx.Client) -> None:
    # About 4 s of answer: killed half a second in, the rest would never come.
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 20, "token_ms": 100,
                                     "tokens": 40})
    key = workers.create_key(credits=100)
    out = Reading()
    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(read, workers, key, "/api/v1/chat",
                             {"model": "gpt-5-mini", "messages": MSG}, out)
        out.started.wait(10)
        out.wait_for(lambda e: len(e.get("delta", "")) and e.get("content_length", 0) > 20)
        _, killed_at = kill_owner(workers, out.job_id)
        reader.result(timeout=TAKEOVER_LIMIT_S + 30)
    took = out.final_at - killed_at
    kinds = [e.get("event") for e in out.events]
    assert kinds.count("retry") == 1
    retry = kinds.index("retry")
    assert out.arrived[retry] > killed_at
    print(f"\nchat taken over: retry {out.arrived[retry] - killed_at:.1f} s, final event "
          f"{took:.1f} s after the SIGKILL")
    final = out.events[-1]
    assert final["status"] == "succeeded"
    assert deltas_after_last_retry(out.events, "gpt-5-mini") == final["full_content"]
    # The partial answer was on the client's screen before the retry.
    assert len(all_deltas(out.events[:retry], "gpt-5-mini")) > 0
    assert took <= TAKEOVER_LIMIT_S
    job, rows = settled(workers, out.job_id)
    assert job.status == "succeeded"
    assert [k for k, _ in rows] == ["reserve", "settle"]
    assert job.credits_charged == -rows[1][1] == Decimal(str(final["credits_charged"]))
    assert calls(mock) == {"gpt-5-mini": 2}  # the dead run's and the takeover's


def test_a_killed_workers_compare_step_is_rerun_alone(workers: Stack,
                                                      mock: httpx.Client) -> None:
    slow, fast = "gpt-5-mini", ["deepseek-v3.2", "claude-haiku-4.5"]
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 20, "token_ms": 10,
                                     "tokens": 10})
    mock.post("/_mock/config", json={"model": UPSTREAM[slow], "ttft_ms": 20,
                                     "token_ms": 100, "tokens": 40})
    key = workers.create_key(credits=100)
    out = Reading()
    body = {"models": [slow, *fast], "messages": MSG}
    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(read, workers, key, "/api/v1/compare", body, out)
        out.started.wait(10)
        for model in fast:  # the fast calls are done and handed on before the kill
            out.wait_for(lambda e, m=model: e.get("model") == m and e.get("done") is True)
        out.wait_for(lambda e: e.get("model") == slow and e.get("content_length", 0) > 20)
        _, killed_at = kill_owner(workers, step_lease(out.job_id, f"M:{slow}"))
        reader.result(timeout=TAKEOVER_LIMIT_S + 30)
    took = out.final_at - killed_at
    retries = [e for e in out.events if e.get("event") == "retry"]
    retry_at = out.arrived[out.events.index(retries[0])] if retries else float("nan")
    print(f"\ncompare step taken over: retry {retry_at - killed_at:.1f} s, final event "
          f"{took:.1f} s after the SIGKILL")
    assert retries == [{"event": "retry", "model": slow, "role": "candidate",
                        "reason": "worker lost"}]
    final = out.events[-1]
    assert final["status"] == "succeeded" and final["summary"]["answered"] == 3
    results = {r["model"]: r for r in final["results"]}
    assert deltas_after_last_retry(out.events, slow) == results[slow]["full_content"]
    assert len(all_deltas(out.events, slow)) > len(results[slow]["full_content"])
    for model in fast:  # not rerun: their deltas once, no retry
        assert all_deltas(out.events, model) == results[model]["full_content"]
    assert calls(mock) == {UPSTREAM[slow]: 2, **{UPSTREAM[m]: 1 for m in fast}}
    assert took <= TAKEOVER_LIMIT_S
    job, rows = settled(workers, out.job_id)
    assert [k for k, _ in rows] == ["reserve", "settle"]
    assert job.credits_charged == -rows[1][1] == Decimal(str(final["credits_charged"]))


def received(stack: Stack, task: str) -> int:
    """How many deliveries of tasks named ``task`` the workers have taken so far."""
    pattern = re.compile(rf"Task {re.escape(task)}\[[^\]]+\] received")
    return sum(len(pattern.findall((stack.logs / f"{n}.log").read_text())) for n in WORKERS)


def test_a_live_long_job_is_never_handed_to_another_worker(workers: Stack,
                                                           mock: httpx.Client) -> None:
    # Each runs well past the grace and the confirmation: about 22 s.
    mock.post("/_mock/config", json={"model": "*", "ttft_ms": 20, "token_ms": 10,
                                     "tokens": 10})
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 20, "token_ms": 200,
                                     "tokens": 110})
    key = workers.create_key(credits=100)
    jobs_before = received(workers, "chorus.run_job")
    steps_before = received(workers, "chorus.model_call")
    chat, compare = Reading(), Reading()
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(read, workers, key, "/api/v1/chat",
                        {"model": "gpt-5-mini", "messages": MSG}, chat)
        b = pool.submit(read, workers, key, "/api/v1/compare",
                        {"models": ["gpt-5-mini", "deepseek-v3.2"], "messages": MSG}, compare)
        a.result(timeout=60)
        b.result(timeout=60)
    for out in (chat, compare):
        assert out.events[-1]["status"] == "succeeded"
        assert not [e for e in out.events if e.get("event") == "retry"]
        assert out.arrived[-1] - out.arrived[0] > 20
    assert calls(mock) == {"gpt-5-mini": 2, "deepseek-chat": 1}  # one each, no second run
    assert received(workers, "chorus.run_job") - jobs_before == 2
    assert received(workers, "chorus.model_call") - steps_before == 2


class RedisServer:
    """A Redis of the test's own, which it may kill and start again: an append-only file
    written at every command, so a restart brings back what was there (expired keys
    stay expired)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.data), "--appendonly", "yes", "--appendfsync", "always",
             "--save", ""], dict(os.environ), self.data / "redis.log", module=False)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, (self.data / "redis.log").read_text()
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        stop(self.proc, signal.SIGKILL)
        self.proc = None


@pytest.fixture
def restartable(stack: Stack, tmp_path: Path) -> Iterator[tuple[Stack, RedisServer]]:
    """An API and two workers on a Redis of their own (events, leases and broker)."""
    server = RedisServer(tmp_path)
    server.start()
    env = {**stack.env, "CHORUS_REDIS_URL": server.url, "CHORUS_BROKER_URL": server.url}
    s = Stack(url="", mock_url=stack.mock_url, database_url=stack.database_url,
              redis_url=server.url, env=env, logs=tmp_path)
    try:
        for name in WORKERS:
            s.start_worker(name)
        s.url = s.start_api()
        yield s, server
    finally:
        s.shutdown()
        if server.proc is not None:
            server.kill()


def test_a_redis_restart_hands_no_live_job_to_a_second_worker(
        restartable: tuple[Stack, RedisServer], mock: httpx.Client) -> None:
    """Redis down longer than a lease: it comes back with the job's delivery still out
    and its lease expired. The live worker's keeper writes the lease again before the
    sweep's second look, so the job is not run twice."""
    s, server = restartable
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 20, "token_ms": 600,
                                     "tokens": 50})
    key = s.create_key(credits=100)
    out = Reading()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(read, s, key, "/api/v1/chat",
                    {"model": "gpt-5-mini", "messages": MSG, "keep_running": True}, out)
        out.started.wait(10)
        out.wait_for(lambda e: e.get("event") == "chunk")
        client = redis.Redis.from_url(server.url)
        lapses_at = time.monotonic() + client.pttl(lease_key(out.job_id)) / 1000
        server.kill()
        while time.monotonic() < lapses_at + 1:  # the lease expires while Redis is down
            time.sleep(0.1)
        server.start()
        assert not client.exists(lease_key(out.job_id))
        assert client.hlen("unacked") == 1  # the job's delivery, still out
        deadline = time.monotonic() + 60
        while (job := settled(s, out.job_id)[0]).status not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, "the job never ended"
            time.sleep(0.2)
    assert job.status == "succeeded"
    assert calls(mock) == {"gpt-5-mini": 1}
    replay = [json.loads(e) for e in client.lrange(events.events_key(out.job_id), 0, -1)]
    assert [e for e in replay if e.get("event") == "retry"] == []
    assert [e["event"] for e in replay if e.get("final")] == ["done"]
    assert [k for k, _ in settled(s, out.job_id)[1]] == ["reserve", "settle"]
