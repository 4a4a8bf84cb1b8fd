"""A worker stopped with SIGTERM drains: it takes no new work, lets the jobs that end within
the drain time end, and hands the others back at the deadline, to be finished at once by
another worker, with a ``retry`` event, and charged once."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select

from shared import ledger
from shared.db import session_scope
from shared.tables import ApiKey, Job, LedgerEntry
from tests.stack import Stack

DRAIN_S = 5.0
MSG = [{"role": "user", "content": "tell me a long story"}]


@dataclass
class Reader:
    """A streamed chat read to its end in a thread, each event stamped as it arrives."""

    stack: Stack
    key: str
    body: dict[str, Any]
    path: str = "/api/v1/chat"
    job_id: str = ""
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    done: bool = False
    started: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.stack.url, timeout=60, headers=headers) as api, \
                api.stream("POST", self.path, json=self.body) as resp:
            self.job_id = resp.headers["X-Chorus-Job-Id"]
            self.started.set()
            for line in resp.iter_lines():
                if line == "data: [DONE]":
                    self.done = True
                elif line.startswith("data: "):
                    self.events.append((time.monotonic(), json.loads(line[6:])))

    def first(self, kind: str) -> float | None:
        return next((t for t, e in self.events if e.get("event") == kind), None)


def start_reader(stack: Stack, key: str, model: str | None = None,
                 body: dict[str, Any] | None = None,
                 path: str = "/api/v1/chat") -> tuple[Reader, threading.Thread]:
    body = body or {"model": model, "messages": MSG}
    reader = Reader(stack, key, {**body, "stream": True}, path)
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    assert reader.started.wait(30)
    return reader, thread


def lease_pid(stack: Stack, job_id: str, timeout: float = 20) -> int:
    """The process id of the worker holding the job's lease, once one does."""
    client = redis.Redis.from_url(stack.redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owner = client.get(f"chorus:job:{job_id}:lease")
        if owner is not None:
            return int(owner.decode().split(":")[1])
        time.sleep(0.05)
    raise AssertionError(f"no worker took job {job_id}")


def charges(stack: Stack, key: str, job_id: str) -> tuple[list[str], ledger.Wallet, Decimal]:
    """The job's ledger entry kinds, its account's wallet and what the job was charged."""
    from shared import keys

    with session_scope(stack.database_url) as s:
        acct = s.execute(select(ApiKey.account_id)
                         .where(ApiKey.key_hash == keys.hash_key(key))).scalar_one()
        kinds = list(s.execute(select(LedgerEntry.kind).where(LedgerEntry.job_id == job_id)
                               .order_by(LedgerEntry.id)).scalars())
        wallet, summed = ledger.audit(s, acct)
        assert wallet == summed
        job = s.get(Job, job_id)
        assert job is not None and job.credits_charged is not None
        return kinds, wallet, job.credits_charged


@pytest.fixture
def drain_workers(stack: Stack) -> Iterator[dict[str, str]]:
    """The shared worker stopped, so jobs go only to this test's workers."""
    stack.stop_proc("worker")
    try:
        yield {"CHORUS_DRAIN_S": str(DRAIN_S)}
    finally:
        for name in ("w-drain", "w-next"):
            if name in stack.procs:
                stack.stop_proc(name, signal.SIGKILL)
        stack.start_worker()


def test_a_stopping_worker_finishes_short_jobs_and_hands_back_long_ones(
    stack: Stack, mock: httpx.Client, drain_workers: dict[str, str]
) -> None:
    # The short job ends about 2 s into the drain; the long one would need 15 s more.
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 20, "token_ms": 300,
                                     "tokens": 60})
    mock.post("/_mock/config", json={"model": "claude-haiku-4-5", "ttft_ms": 20,
                                     "token_ms": 100, "tokens": 30})
    stack.start_worker("w-drain", env=drain_workers)
    key = stack.create_key(credits=100)
    long, long_thread = start_reader(stack, key, "gpt-5-mini")
    short, short_thread = start_reader(stack, key, "claude-haiku-4.5")
    draining = stack.procs["w-drain"]
    assert lease_pid(stack, long.job_id) == draining.pid
    assert lease_pid(stack, short.job_id) == draining.pid
    stack.start_worker("w-next")
    sent = time.monotonic()
    draining.send_signal(signal.SIGTERM)
    # New work goes to the other worker at once.
    with httpx.Client(base_url=stack.url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as api:
        quick = api.post("/api/v1/chat", json={"model": "gemini-3-flash",
                                               "messages": MSG, "max_tokens": 5})
    assert quick.status_code == 200, quick.text
    assert time.monotonic() - sent < DRAIN_S
    # A fetch already under way at the signal may still bring it in: it goes straight
    # back, and never runs there.
    assert f"run_job[{quick.json()['job_id']}] succeeded" not in (
        stack.logs / "w-drain.log").read_text()

    draining.wait(DRAIN_S + 10)
    exited = time.monotonic() - sent
    short_thread.join(10)
    long_thread.join(40)
    assert short.done and long.done

    # The short job ended on the draining worker, untouched.
    assert short.first("retry") is None
    assert short.events[-1][1]["status"] == "succeeded"
    # The long one was handed back at the deadline and finished by the other worker.
    retry_at = long.first("retry")
    assert retry_at is not None, [e for _, e in long.events][-5:]
    final = long.events[-1][1]
    assert final["final"] and final["status"] == "succeeded"
    assert [e for _, e in long.events if e.get("final")] == [final]
    after_retry = "".join(e.get("delta", "") for t, e in long.events
                          if t > retry_at and e.get("event") == "chunk")
    assert after_retry == final["full_content"]
    handed_back = retry_at - sent
    assert DRAIN_S - 0.5 < handed_back < DRAIN_S + 3, handed_back
    assert exited < DRAIN_S + 3, exited
    kinds, wallet, charged = charges(stack, key, long.job_id)
    assert kinds == ["reserve", "settle"]
    assert Decimal(str(final["credits_charged"])) == charged
    assert wallet.reserved == 0
    print(f"\nworker drain ({DRAIN_S:.0f} s): process exited {exited:.2f} s after SIGTERM; "
          f"retry event {handed_back:.2f} s after it; long job done "
          f"{long.events[-1][0] - sent:.2f} s after it")


def test_a_stopping_worker_hands_back_a_compare_call_it_cannot_finish(
    stack: Stack, mock: httpx.Client, drain_workers: dict[str, str]
) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 20, "token_ms": 300,
                                     "tokens": 60})
    mock.post("/_mock/config", json={"model": "claude-haiku-4-5", "ttft_ms": 20,
                                     "token_ms": 100, "tokens": 30})
    stack.start_worker("w-drain", env=drain_workers)
    key = stack.create_key(credits=100)
    reader, thread = start_reader(
        stack, key, body={"models": ["gpt-5-mini", "claude-haiku-4.5"], "messages": MSG},
        path="/api/v1/compare")
    deadline = time.monotonic() + 20
    while not any(e.get("model") == "gpt-5-mini" and e.get("event") == "chunk"
                  for _, e in reader.events):
        assert time.monotonic() < deadline, "the slow call never started"
        time.sleep(0.05)
    stack.start_worker("w-next")
    draining = stack.procs["w-drain"]
    sent = time.monotonic()
    draining.send_signal(signal.SIGTERM)
    draining.wait(DRAIN_S + 10)
    exited = time.monotonic() - sent
    thread.join(40)
    assert reader.done
    events = [e for _, e in reader.events]
    final = events[-1]
    assert final["final"] and final["status"] == "succeeded", final
    assert [e for e in events if e.get("final")] == [final]
    # One retry, for the call handed back; the other call ended on the stopping worker.
    retries = [(t, e) for t, e in reader.events if e.get("event") == "retry"]
    assert [e["model"] for _, e in retries] == ["gpt-5-mini"], retries
    retry_at = retries[0][0]
    redone = "".join(e.get("delta", "") for t, e in reader.events
                     if t > retry_at and e.get("event") == "chunk"
                     and e.get("model") == "gpt-5-mini")
    slow = next(r for r in final["results"] if r["model"] == "gpt-5-mini")
    assert redone == slow["full_content"]
    assert all("error" not in r for r in final["results"])
    assert DRAIN_S - 0.5 < retry_at - sent < DRAIN_S + 3, retry_at - sent
    kinds, wallet, charged = charges(stack, key, reader.job_id)
    assert kinds == ["reserve", "settle"]
    assert Decimal(str(final["credits_charged"])) == charged
    assert wallet.reserved == 0
    print(f"\ncompare call handed back: retry {retry_at - sent:.2f} s after SIGTERM, worker "
          f"exited after {exited:.2f} s, job done after {reader.events[-1][0] - sent:.2f} s")
