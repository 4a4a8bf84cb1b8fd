"""Nothing lost: workers SIGKILLed with work queued, Redis killed and restarted empty, a
zero-retention request lost with it, a job past its deadline; every job ends, settled
once, and no hold is left. The stack runs on a Redis server of this module's own (it is
killed), with beat reconciling every second."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select

from shared import ledger
from shared.db import session_scope
from shared.keys import hash_key
from shared.migrate import upgrade
from shared.tables import ApiKey, Job, LedgerEntry
from tests.procs import free_port, start, stop
from tests.stack import Stack, create_pg_database, drop_pg_database

MSG = [{"role": "user", "content": "Explain how a lighthouse keeps its light turning."}]
FINAL = ("succeeded", "failed", "cancelled")
# Slow enough that work stays queued behind a few greenlets per worker.
SLOW = {"model": "gpt-5-mini", "ttft_ms": 100, "token_ms": 40, "tokens": 15}
# Fast, so that workers take messages all the time: a kill finds some in the moment
# between a queue and their unacknowledged record (about one a kill; without the
# reconciler their jobs stay queued).
FAST = {"model": "gpt-5-mini", "ttft_ms": 20, "token_ms": 10, "tokens": 10}
WORKER_ENV = {"CHORUS_BROKER_VISIBILITY_TIMEOUT": "10"}


class OwnRedis:
    """A redis-server of the module's own: the tests kill it and start it empty again."""

    def __init__(self, logs: Path) -> None:
        self.port = free_port()
        self.log = logs / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = start(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no"], dict(os.environ), self.log,
                          module=False)
        wait_for(lambda: _pings(self.url), 10, "redis-server to answer")

    def kill(self) -> None:
        assert self.proc is not None
        stop(self.proc, signal.SIGKILL)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def wait_for(cond: Callable[[], bool], timeout: float, what: str,
             state: Callable[[], object] = lambda: "", step: float = 0.1) -> float:
    """Seconds it took for ``cond`` to hold; fails after ``timeout``, showing ``state``."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"waited {timeout}s for {what} {state()}"
        time.sleep(step)
    return time.monotonic() - t0


Rig = tuple[Stack, OwnRedis, dict[str, float]]


@pytest.fixture(autouse=True)
def clean_breakers() -> None:
    """This module runs on a stack of its own; the shared one is not started for it."""


@pytest.fixture(scope="module")
def own(mock_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """The stack, its Redis server, and the recovery times the tests measure (printed at
    the end)."""
    logs = Path(tmp_path_factory.mktemp("reconcile"))
    server = OwnRedis(logs)
    server.start()
    db_url = create_pg_database()
    upgrade(db_url)
    env = dict(
        os.environ, CHORUS_DATABASE_URL=db_url, CHORUS_REDIS_URL=server.url,
        CHORUS_BROKER_URL=server.url, CHORUS_MOCK_URL=mock_url, CHORUS_DATA_DIR=str(logs),
        CHORUS_IDLE_TIMEOUT="3", CHORUS_CONNECT_TIMEOUT="2", CHORUS_RATE_LIMIT_SCALE="1000",
        CHORUS_SECRET_KEY="integration-test-secret-0123456789",
        CHORUS_RECONCILE_S="1", CHORUS_RECONCILE_GRACE_S="3", CHORUS_HEALTH_INTERVAL="3600",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    s = Stack(url="", mock_url=mock_url, database_url=db_url, redis_url=server.url, env=env,
              logs=logs)
    try:
        s.url = s.start_api()
        start_workers(s)
        s.procs["beat"] = start(["celery", "--app", "workers.app", "beat", "--loglevel",
                                 "info", "--schedule", str(logs / "beat-schedule")],
                                env, logs / "beat.log")
        timings: dict[str, float] = {}
        yield s, server, timings
    finally:
        s.shutdown()
        if server.proc is not None:
            stop(server.proc)
        drop_pg_database(db_url)
        print("\nrecovery timings (s):", json.dumps(timings))


def start_worker(s: Stack, name: str, queue: str, concurrency: int = 50,
                 env: dict[str, str] | None = None) -> None:
    """A worker whose log is then moved aside, so that the next start of the same name
    waits for a banner of its own."""
    s.start_worker(name, concurrency=concurrency, queues=queue,
                   env={**WORKER_ENV, **(env or {})})
    _set_log_aside(s, name)


def _set_log_aside(s: Stack, name: str) -> None:
    (s.logs / f"{name}.log").rename(s.logs / f"{name}-{time.monotonic_ns()}.log")


def ready_or_gone(proc: subprocess.Popen[bytes], log: Path) -> bool:
    return proc.poll() is not None or "ready" in log.read_text()


def start_workers(s: Stack, concurrency: int = 50) -> None:
    """An interactive and a batch worker, started at once (so both take work at once)."""
    pairs = (("worker", "interactive"), ("batch", "batch"))
    for name, queue in pairs:
        s.procs[name] = start(
            ["celery", "--app", "workers.app", "worker", "--pool", "gevent", "--concurrency",
             str(concurrency), "--queues", queue, "--without-gossip", "--without-mingle",
             "--loglevel", "info", "--hostname", f"{name}@%h"],
            {**s.env, **WORKER_ENV}, s.logs / f"{name}.log")
    for name, _queue in pairs:
        log, proc = s.logs / f"{name}.log", s.procs[name]
        wait_for(partial(ready_or_gone, proc, log), 30, f"{name} to be ready")
        assert proc.poll() is None, log.read_text()[-4000:]
        _set_log_aside(s, name)


def client(s: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=s.url, timeout=30, headers={"Authorization": f"Bearer {key}"})


def account_of(s: Stack, key: str) -> int:
    with session_scope(s.database_url) as db:
        return int(db.execute(select(ApiKey.account_id)
                              .where(ApiKey.key_hash == hash_key(key))).scalar_one())


def start_chat(api: httpx.Client, **extra: Any) -> str:
    """A streamed chat left running: the client reads its job id and goes."""
    body = {"model": "gpt-5-mini", "messages": MSG, "stream": True, "keep_running": True,
            **extra}
    with api.stream("POST", "/api/v1/chat", json=body) as resp:
        assert resp.status_code == 200, resp.read()
        return resp.headers["X-Chorus-Job-Id"]


def start_batch(api: httpx.Client, lines: int) -> tuple[str, list[str]]:
    body = b"".join(json.dumps({"custom_id": f"q{i}", "endpoint": "chat", "body": {
        "model": "gpt-5-mini", "messages": MSG}}).encode() + b"\n" for i in range(lines))
    r = api.post("/api/v1/batches", content=body,
                 headers={"Content-Type": "application/jsonl"})
    assert r.status_code == 201, r.text
    batch_id = r.json()["id"]
    rows = [json.loads(x) for x in api.get(f"/api/v1/batches/{batch_id}/results").text
            .splitlines()]
    return batch_id, [row["job_id"] for row in rows]


def statuses(s: Stack, ids: list[str]) -> dict[str, str]:
    with session_scope(s.database_url) as db:
        return dict(db.execute(select(Job.id, Job.status).where(Job.id.in_(ids))).all())


def popping(broker: redis.Redis, before: tuple[int, int]) -> bool:
    """Both workers have begun to take messages from their queues."""
    return bool(broker.llen("interactive") < before[0] and broker.llen("batch") < before[1])


def all_ended(s: Stack, ids: list[str]) -> bool:
    return all(v in FINAL for v in statuses(s, ids).values())


def assert_settled_once(s: Stack, ids: list[str], account: int) -> None:
    """One settle row a job, what each job row says it was charged, and a wallet that is
    the sum of its ledger with nothing held."""
    with session_scope(s.database_url) as db:
        settles = dict(db.execute(
            select(LedgerEntry.job_id, func.count()).where(
                LedgerEntry.job_id.in_(ids), LedgerEntry.kind == "settle")
            .group_by(LedgerEntry.job_id)).all())
        assert settles == {j: 1 for j in ids}
        paid = dict(db.execute(select(LedgerEntry.job_id, LedgerEntry.amount).where(
            LedgerEntry.job_id.in_(ids), LedgerEntry.kind == "settle")).all())
        for job in db.execute(select(Job).where(Job.id.in_(ids))).scalars():
            assert job.credits_charged == -paid[job.id], job.id
        wallet, summed = ledger.audit(db, account)
    assert wallet == summed
    assert wallet.reserved == Decimal(0)


def requeued_count(s: Stack) -> int:
    return sum(log.read_text().count("has no delivery; sending it again")
               for log in s.logs.glob("*.log") if log.name.startswith(("worker", "batch")))


@pytest.mark.timeout(400)
def test_workers_killed_with_work_queued_lose_nothing(
    own: Rig, mock: httpx.Client,
) -> None:
    s, server, timings = own
    mock.post("/_mock/config", json=FAST)
    key = s.create_key(credits=100_000)
    account = account_of(s, key)
    chats: list[str] = []
    lines: list[str] = []
    batches: list[str] = []
    depths: list[tuple[int, int]] = []
    broker = redis.Redis.from_url(server.url)
    for name in ("worker", "batch"):
        s.stop_proc(name)
    with client(s, key) as api:
        for _round in range(5):
            # Work queued on both queues while no worker runs; workers start and take it
            # as fast as they can, and both die before it is done.
            batch_id, fresh_lines = start_batch(api, 80)
            fresh_chats = [start_chat(api) for _ in range(80)]
            batches.append(batch_id)
            lines += fresh_lines
            chats += fresh_chats
            before = (broker.llen("interactive"), broker.llen("batch"))
            start_workers(s)
            wait_for(partial(popping, broker, before), 30, "work to be taken", step=0.01)
            depths.append((broker.llen("interactive"), broker.llen("batch")))
            for name in ("worker", "batch"):
                s.stop_proc(name, signal.SIGKILL)
        start_workers(s)
        took = wait_for(lambda: all_ended(s, chats + lines), 120,
                        "every job to end", lambda: Counter(statuses(s, chats + lines).values()))
        timings["workers_killed_all_ended_after_last_restart_s"] = round(took, 1)
        timings["workers_killed_requeued_by_reconciler"] = requeued_count(s)
        views = [api.get(f"/api/v1/batches/{b}").json() for b in batches]
    print("queue depths (interactive, batch) at each kill:", depths)
    assert all(chat_depth > 0 and line_depth > 0 for chat_depth, line_depth in depths)
    assert [v["status"] for v in views] == ["completed"] * 5, views
    assert set(statuses(s, chats + lines).values()) == {"succeeded"}
    assert_settled_once(s, chats + lines, account)


def test_redis_restarted_empty_with_batch_lines_queued(
    own: Rig, mock: httpx.Client,
) -> None:
    s, server, timings = own
    mock.post("/_mock/config", json=SLOW)
    for name in ("worker", "batch"):
        s.stop_proc(name)
    start_workers(s, concurrency=8)  # so that most lines wait in the queue
    key = s.create_key(credits=100_000)
    account = account_of(s, key)
    with client(s, key) as api:
        batch_id, lines = start_batch(api, 100)
        wait_for(lambda: "succeeded" in statuses(s, lines).values(), 30, "lines to run")
        server.kill()
        queued = [j for j, st in statuses(s, lines).items() if st == "queued"]
        assert len(queued) > 50
        server.start()
        broker = redis.Redis.from_url(server.url)
        back = wait_for(lambda: broker.llen("batch") > 0, 60, "lines to be queued again")
        took = back + wait_for(lambda: all_ended(s, lines), 60 - back,
                               "every line to end after the restart")
        timings["redis_restarted_lines_queued_again_s"] = round(back, 1)
        timings["redis_restarted_lines_ended_s"] = round(took, 1)
        timings["redis_restarted_lines_queued_at_kill"] = len(queued)
        view = api.get(f"/api/v1/batches/{batch_id}").json()
    assert view["status"] == "completed", view
    assert_settled_once(s, lines, account)


def test_a_compare_whose_pipeline_went_with_redis_starts_over(
    own: Rig, mock: httpx.Client,
) -> None:
    s, server, timings = own
    for model in ("gpt-5-mini", "gemini-3-flash"):
        mock.post("/_mock/config", json={"model": model, "ttft_ms": 50, "token_ms": 200,
                                         "tokens": 20})
    key = s.create_key(credits=1000)
    body = {"models": ["gpt-5-mini", "gemini-3-flash"], "messages": MSG, "stream": True,
            "keep_running": True}
    broker = redis.Redis.from_url(server.url)
    with client(s, key) as api:
        with api.stream("POST", "/api/v1/compare", json=body) as resp:
            assert resp.status_code == 200
            job_id = resp.headers["X-Chorus-Job-Id"]
        # Its calls are streaming: the pipeline's state is in Redis, and goes with it.
        wait_for(lambda: broker.exists(f"chorus:job:{job_id}:pipe") == 1, 20, "the pipeline")
        server.kill()
        server.start()
        took = wait_for(lambda: all_ended(s, [job_id]), 60, "the compare to end")
        timings["compare_pipeline_lost_ended_s"] = round(took, 1)
        view = api.get(f"/api/v1/jobs/{job_id}").json()
    assert view["status"] == "succeeded", view
    assert [r["model"] for r in view["result"]["results"]] == ["gpt-5-mini", "gemini-3-flash"]
    assert view["result"]["summary"]["answered"] == 2
    assert_settled_once(s, [job_id], account_of(s, key))


def test_a_zero_retention_request_lost_with_redis_ends_failed(
    own: Rig, mock: httpx.Client,
) -> None:
    s, server, timings = own
    mock.post("/_mock/config", json=SLOW)
    s.stop_proc("worker")  # the chats wait in the queue
    zr_key = s.create_key(credits=1000, zero_retention=True)
    key = s.create_key(credits=1000)
    with client(s, zr_key) as zr_api, client(s, key) as api:
        lost = start_chat(zr_api)
        kept = start_chat(api)
        server.kill()
        server.start()
        t0 = time.monotonic()
        start_worker(s, "worker", "interactive", 4)
        wait_for(lambda: all_ended(s, [lost, kept]), 60, "both chats to end")
        timings["zero_retention_lost_ended_s"] = round(time.monotonic() - t0, 1)
        with zr_api.stream("GET", f"/api/v1/jobs/{lost}/events") as resp:
            frames = [line for line in resp.iter_lines() if line.startswith("data: {")]
    assert statuses(s, [lost, kept]) == {lost: "failed", kept: "succeeded"}
    with session_scope(s.database_url) as db:
        job = db.get(Job, lost)
        assert job is not None and job.error is not None and job.error["code"] == "lost"
        assert job.credits_charged == 0
    final = json.loads(frames[-1][len("data: "):])
    assert final["final"] and final["error"]["code"] == "lost"
    assert final["credits_charged"] == 0
    assert_settled_once(s, [lost], account_of(s, zr_key))
    assert_settled_once(s, [kept], account_of(s, key))


def test_a_job_past_its_deadline_ends(own: Rig,
                                      mock: httpx.Client) -> None:
    s, _, timings = own
    # An answer that would take half a minute, token by token.
    mock.post("/_mock/config", json={"model": "gpt-5-mini", "ttft_ms": 50, "token_ms": 500,
                                     "tokens": 60})
    s.stop_proc("worker")
    start_worker(s, "worker", "interactive", 4, {"CHORUS_JOB_DEADLINE_S": "6"})
    key = s.create_key(credits=1000)
    try:
        with client(s, key) as api:
            job_id = start_chat(api)
            wait_for(lambda: statuses(s, [job_id])[job_id] == "running", 20, "the job to run")
            took = wait_for(lambda: all_ended(s, [job_id]), 30, "the overdue job to end")
            timings["deadline_6s_ended_after_running_s"] = round(took, 1)
            # The worker still on it was told to stop: the provider's stream is closed.
            wait_for(lambda: mock.get("/_mock/stats").json()["client_disconnects"]
                     .get("gpt-5-mini", 0) >= 1, 10, "the provider call to be stopped")
            with api.stream("GET", f"/api/v1/jobs/{job_id}/events") as resp:
                frames = [ln for ln in resp.iter_lines() if ln.startswith("data: {")]
    finally:
        s.stop_proc("worker")
        start_worker(s, "worker", "interactive", 4)
    with session_scope(s.database_url) as db:
        job = db.get(Job, job_id)
        assert job is not None and job.status == "failed"
        assert job.error is not None and job.error["code"] == "timeout"
    assert json.loads(frames[-1][len("data: "):])["error"]["code"] == "timeout"
    assert_settled_once(s, [job_id], account_of(s, key))

