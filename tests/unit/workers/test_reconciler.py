"""Which jobs a reconciler pass picks, read from a real database, a real broker (kombu's
Redis transport) and real leases and tickets; and how it ends a job it cannot rebuild."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis
from celery import Celery
from sqlalchemy import func, select, update

from shared import events, keys, ledger
from shared.db import session_scope
from shared.settings import Settings, get_settings
from shared.tables import ApiKey, Job, LedgerEntry
from workers.app import make_celery
from workers.reconciler import (
    CONFIRM_S,
    LOST,
    OpenJob,
    Plan,
    confirm,
    decide,
    end,
    lease_key,
    look,
    open_jobs,
    run_pass,
)
from workers.runtime import Runtime
from workers.stages import state_key

GRACE_S = 15.0


@pytest.fixture(scope="module")
def settings(pg_url: str, redis_db_url: str) -> Settings:
    return Settings(database_url=pg_url, redis_url=redis_db_url, broker_url=redis_db_url)


@pytest.fixture(scope="module")
def app(settings: Settings) -> Celery:
    return make_celery(settings)


@pytest.fixture
def client(redis_db_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_db_url)
    c.flushdb()
    yield c
    c.flushdb()
    c.close()


@pytest.fixture
def account(pg_url: str) -> tuple[int, int]:
    with session_scope(pg_url) as s:
        keys.create_key(s, f"acct-{uuid.uuid4().hex[:8]}", credits=Decimal(100))
        key = s.execute(select(ApiKey).order_by(ApiKey.id.desc()).limit(1)).scalar_one()
        return key.account_id, key.id


def add_job(pg_url: str, account: tuple[int, int], *, status: str = "queued",
            age_s: float = 60, kind: str = "chat", queue: str = "interactive",
            zero_retention: bool = False, hold: Decimal = Decimal(0)) -> str:
    job_id = str(uuid.uuid4())
    with session_scope(pg_url) as s:
        s.add(Job(id=job_id, account_id=account[0], key_id=account[1], kind=kind,
                  status=status, queue=queue,
                  request=None if zero_retention else {"model": "gpt-5-mini"},
                  credits_reserved=hold,
                  created_at=datetime.now(UTC) - timedelta(seconds=age_s)))
        if hold:
            s.flush()
            ledger.reserve(s, account[0], job_id, hold)
    return job_id


def picks(plan: Plan) -> dict[str, str]:
    out = {j.id: "requeue" for j in plan.orphans}
    out.update({j.id: "lost" for j in plan.lost})
    out.update({j.id: "overdue" for j in plan.overdue})
    return out


def plan_now(app: Celery, client: redis.Redis, settings: Settings) -> tuple[Plan, list[OpenJob]]:
    now = datetime.now(UTC)
    jobs = open_jobs(now, GRACE_S, settings.database_url)
    return decide(jobs, look(app, client, jobs), now, settings), jobs


def test_a_pass_picks_the_jobs_without_a_delivery(
    pg_url: str, app: Celery, client: redis.Redis, settings: Settings,
    account: tuple[int, int],
) -> None:
    queued_msg = add_job(pg_url, account, queue="batch")
    app.send_task("chorus.run_job", args=[queued_msg], queue="batch", task_id=queued_msg)
    queued_lost = add_job(pg_url, account, queue="batch")
    fresh = add_job(pg_url, account, age_s=1)  # inside the grace: not looked at
    ended = add_job(pg_url, account, status="succeeded")
    running_leased = add_job(pg_url, account, status="running")
    client.set(lease_key(running_leased), "w1", ex=15)
    running_lapsed = add_job(pg_url, account, status="running")
    # A pipeline whose state is there but no message or lease names it: it will never
    # advance, so it is restarted. A step message naming the job keeps another alive.
    stuck_pipe = add_job(pg_url, account, status="running", kind="compare")
    client.hset(state_key(stuck_pipe), "spec", "{}")
    live_pipe = add_job(pg_url, account, status="running", kind="compare")
    client.hset(state_key(live_pipe), "spec", "{}")
    app.send_task("chorus.model_call", args=[live_pipe, {"key": "c0"}], queue="interactive",
                  argsrepr=f"({live_pipe!r}, 'c0')")
    # A chord's body names the job after the results it carries, from a task whose root
    # is not the job (a job sent before task ids were job ids).
    body_pipe = add_job(pg_url, account, status="running", kind="compare")
    client.hset(state_key(body_pipe), "spec", "{}")
    app.send_task("chorus.pipeline_next", args=[[{"model": "m", "text": "x" * 2000}],
                                                body_pipe, "candidates"], queue="interactive")
    zr_ticket = add_job(pg_url, account, zero_retention=True)
    client.set(events.request_key(zr_ticket), json.dumps({"kind": "chat"}))
    zr_gone = add_job(pg_url, account, zero_retention=True)
    overdue = add_job(pg_url, account, age_s=7200)
    app.send_task("chorus.run_job", args=[overdue], queue="interactive", task_id=overdue)
    batch_old = add_job(pg_url, account, queue="batch", age_s=7200)  # a day is its limit

    plan, examined = plan_now(app, client, settings)
    assert {j.id for j in examined}.isdisjoint({fresh, ended})
    assert picks(plan) == {
        queued_lost: "requeue", running_lapsed: "requeue", stuck_pipe: "requeue",
        zr_ticket: "requeue", batch_old: "requeue", zr_gone: "lost", overdue: "overdue",
    }
    assert {j.id: j.queue for j in plan.orphans}[queued_lost] == "batch"
    # A job is left alone when its message is taken but not acknowledged, too.
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        message = channel.basic_get("batch", no_ack=False)
        assert message is not None and message.headers["id"] == queued_msg
        assert client.llen("batch") == 0 and client.hlen("unacked") == 1
        plan, _ = plan_now(app, client, settings)
        assert queued_msg not in picks(plan)
    with session_scope(pg_url) as s:  # leave nothing open for the other tests
        s.execute(update(Job).where(Job.status.in_(("queued", "running")))
                  .values(status="failed"))


def test_a_job_is_acted_on_once_two_passes_agree(client: redis.Redis) -> None:
    now = datetime.now(UTC)
    a = OpenJob(str(uuid.uuid4()), "chat", "queued", "interactive", 1, False, now)
    b = OpenJob(str(uuid.uuid4()), "chat", "queued", "interactive", 1, False, now)
    assert confirm(client, [a], 1000.0) == []
    assert confirm(client, [a, b], 1000.0 + CONFIRM_S / 2) == []  # too soon for a
    # a was seen the whole time; b too, but only since the second pass.
    assert confirm(client, [a, b], 1000.0 + CONFIRM_S) == [a]
    # a found its delivery again: it is forgotten, b alone goes on.
    assert confirm(client, [b], 1000.0 + 3 * CONFIRM_S) == [b]
    assert confirm(client, [b], 1000.0 + 4 * CONFIRM_S) == []


@pytest.fixture
def runtime(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """A worker's runtime on the test database: ``finish`` reads the process settings."""
    monkeypatch.setenv("CHORUS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CHORUS_REDIS_URL", settings.redis_url)
    get_settings.cache_clear()
    rt = Runtime(get_settings())
    yield rt
    get_settings.cache_clear()


def test_a_lost_job_ends_failed_once_with_its_hold_released(
    pg_url: str, client: redis.Redis, account: tuple[int, int], runtime: Runtime,
) -> None:
    job_id = add_job(pg_url, account, zero_retention=True, hold=Decimal(7))
    with session_scope(pg_url) as s:
        assert ledger.wallet(s, account[0]).reserved == Decimal(7)
    job = OpenJob(job_id, "chat", "queued", "interactive", account[0], True,
                  datetime.now(UTC))
    end(runtime, job, LOST)
    end(runtime, job, LOST)  # a second pass (or process) changes nothing
    with session_scope(pg_url) as s:
        row = s.get(Job, job_id)
        assert row is not None and row.status == "failed" and row.error is not None
        assert row.error["code"] == "lost" and row.credits_charged == 0
        settles = s.execute(select(func.count()).select_from(LedgerEntry).where(
            LedgerEntry.job_id == job_id, LedgerEntry.kind == "settle")).scalar_one()
        assert settles == 1
        wallet, summed = ledger.audit(s, account[0])
        assert wallet == summed and wallet.reserved == 0
        assert wallet.balance == Decimal(100)
    final = [e.decode() if isinstance(e, bytes) else e
             for e in client.lrange(events.events_key(job_id), 0, -1)]
    assert len(final) == 1 and events.is_final(final[0])
    assert json.loads(final[0])["error"]["code"] == "lost"
    assert client.get(events.cancel_key(job_id)) == b"1"  # a worker still on it stops


def test_one_pass_at_a_time(client: redis.Redis, app: Celery, runtime: Runtime) -> None:
    client.set("chorus:reconcile:lock", "another process", ex=30)
    assert run_pass(runtime, app) is None
    client.delete("chorus:reconcile:lock")
    report = run_pass(runtime, app)
    assert report is not None and client.get("chorus:reconcile:lock") is None
