"""Money on the real stack: many chats on SQLite end with a ledger exact to the micro-credit,
and a job whose end cannot be written calls its provider once, never again."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest
from sqlalchemy import func, select

from shared import keys, ledger
from shared.db import get_engine, session_scope
from shared.migrate import upgrade
from shared.tables import Job, LedgerEntry, RequestLog
from tests.child import run_json
from tests.sse import stream_post
from tests.stack import Stack, claim_redis_db, release_redis_db
from workers.ending import GIVE_UP_BACKOFF_S, WRITE_BACKOFF_S

MODEL = "gpt-5-mini"


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def account_of(database_url: str, key: str) -> int:
    with session_scope(database_url) as s:
        owner = keys.lookup(s, key)
        assert owner is not None
        return owner.account_id


def provider_calls(mock: httpx.Client) -> int:
    return sum(mock.get("/_mock/stats").json()["calls"].values())


def assert_exact(database_url: str, account_id: int, granted: Decimal) -> Decimal:
    """The wallet equals its ledger, holds nothing, and paid what the jobs were charged."""
    with session_scope(database_url) as s:
        wallet, summed = ledger.audit(s, account_id)
        charged = s.execute(select(func.coalesce(func.sum(Job.credits_charged), 0))
                            .where(Job.account_id == account_id)).scalar_one()
        open_jobs = s.execute(select(func.count()).select_from(Job).where(
            Job.account_id == account_id,
            Job.status.not_in(("succeeded", "failed", "cancelled")))).scalar_one()
    assert wallet == summed, (wallet, summed)
    assert open_jobs == 0
    assert wallet == ledger.Wallet(granted - Decimal(charged), Decimal(0))
    return Decimal(charged)


@pytest.fixture(scope="module")
def sqlite_stack(mock_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The one-machine start's database: a SQLite file, with an API and a worker on it."""
    logs = Path(tmp_path_factory.mktemp("sqlite-stack"))
    db_url = f"sqlite:///{logs / 'chorus.db'}"
    upgrade(db_url)
    redis_url, token = claim_redis_db()
    env = dict(
        os.environ, CHORUS_DATABASE_URL=db_url, CHORUS_REDIS_URL=redis_url,
        CHORUS_MOCK_URL=mock_url, CHORUS_DATA_DIR=str(logs), CHORUS_IDLE_TIMEOUT="3",
        CHORUS_CONNECT_TIMEOUT="2", CHORUS_RATE_LIMIT_SCALE="1000",
        CHORUS_SECRET_KEY="integration-test-secret-0123456789",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    s = Stack(url="", mock_url=mock_url, database_url=db_url, redis_url=redis_url, env=env,
              logs=logs)
    try:
        s.start_worker(concurrency=50)
        s.url = s.start_api()
        yield s
    finally:
        s.shutdown()
        get_engine(db_url).dispose()
        release_redis_db(redis_url, token)


def test_many_chats_on_sqlite_end_and_leave_an_exact_ledger(
    sqlite_stack: Stack, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": MODEL, "ttft_ms": 0, "token_ms": 0,
                                     "tokens": 7}).raise_for_status()
    granted = Decimal("1000.000001")
    key = sqlite_stack.create_key(credits=granted)
    acct = account_of(sqlite_stack.database_url, key)
    n = 120

    def chat(i: int) -> dict[str, Any]:
        # Prompts and caps of every length: holds and charges in odd micro-credits.
        body = {"model": MODEL, "max_tokens": 1 + i % 37,
                "messages": [{"role": "user", "content": "x" * (1 + 7 * i)}]}
        with httpx.Client(base_url=sqlite_stack.url, timeout=60,
                          headers={"Authorization": f"Bearer {key}"}) as api:
            return stream_post(api, "/api/v1/chat", body).final

    with ThreadPoolExecutor(max_workers=12) as pool:
        finals = list(pool.map(chat, range(n)))
    assert [f["status"] for f in finals] == ["succeeded"] * n
    assert provider_calls(mock) == n  # not one call more: no write failed, nothing re-ran
    charged = assert_exact(sqlite_stack.database_url, acct, granted)
    assert charged == sum((Decimal(str(f["credits_charged"])) for f in finals), Decimal(0))
    with session_scope(sqlite_stack.database_url) as s:
        settles = s.execute(select(func.count()).select_from(LedgerEntry).where(
            LedgerEntry.account_id == acct, LedgerEntry.kind == "settle")).scalar_one()
        logged = s.execute(select(func.count()).select_from(RequestLog)
                           .where(RequestLog.account_id == acct)).scalar_one()
    assert settles == logged == n


# --- a job whose end cannot be written (PostgreSQL, the shared stack) -------------------

REFUSE = """
CREATE SEQUENCE IF NOT EXISTS refused_ends;
CREATE OR REPLACE FUNCTION refuse_end() RETURNS trigger AS $$
BEGIN
    PERFORM nextval('refused_ends');  -- not rolled back with the refused write
    RAISE EXCEPTION 'the database refuses this job''s end';
END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_end BEFORE UPDATE ON jobs FOR EACH ROW
    WHEN (NEW.status = 'succeeded' AND OLD.status = 'running') EXECUTE FUNCTION refuse_end();
SELECT setval('refused_ends', 1, false);
"""
ALLOW = "DROP TRIGGER IF EXISTS refuse_end ON jobs"


def psql(stack: Stack, sql: str) -> Any:
    conn = psycopg2.connect(stack.database_url.replace("+psycopg2", ""))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone() if cur.description is not None else None
    finally:
        conn.close()


def refused(stack: Stack) -> int:
    """How many times a worker tried to write a job's end and was refused."""
    row = psql(stack, "SELECT CASE WHEN is_called THEN last_value ELSE 0 END "
                      "FROM refused_ends")
    return int(row[0])


@pytest.fixture
def refusing(stack: Stack) -> Iterator[None]:
    psql(stack, REFUSE)
    try:
        yield
    finally:
        psql(stack, ALLOW)


def start_chat(stack: Stack, key: str) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        with httpx.Client(base_url=stack.url, timeout=120,
                          headers={"Authorization": f"Bearer {key}"}) as api:
            out.append(stream_post(api, "/api/v1/chat", {
                "model": MODEL, "max_tokens": 20,
                "messages": [{"role": "user", "content": "settle me"}]}))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_an_end_written_once_the_database_takes_it_again_calls_the_provider_once(
    stack: Stack, mock: httpx.Client, refusing: None
) -> None:
    mock.post("/_mock/config", json={"model": MODEL, "ttft_ms": 0, "token_ms": 0,
                                     "tokens": 9}).raise_for_status()
    granted = Decimal(50)
    key = stack.create_key(credits=granted)
    acct = account_of(stack.database_url, key)
    thread, out = start_chat(stack, key)
    wait_for("two refused writes", lambda: refused(stack) >= 2)
    psql(stack, ALLOW)
    thread.join(timeout=60)
    assert out, "the stream never ended"
    final = out[0].final
    assert final["status"] == "succeeded" and final["credits_charged"] > 0
    assert provider_calls(mock) == 1
    charged = assert_exact(stack.database_url, acct, granted)
    assert charged == Decimal(str(final["credits_charged"]))


def test_an_end_that_is_never_taken_fails_the_job_and_releases_its_hold(
    stack: Stack, mock: httpx.Client, refusing: None
) -> None:
    mock.post("/_mock/config", json={"model": MODEL, "ttft_ms": 0, "token_ms": 0,
                                     "tokens": 9}).raise_for_status()
    granted = Decimal(50)
    key = stack.create_key(credits=granted)
    acct = account_of(stack.database_url, key)
    thread, out = start_chat(stack, key)
    thread.join(timeout=sum(WRITE_BACKOFF_S) + 60)
    assert out, "the stream never ended"
    final = out[0].final
    assert final["status"] == "failed" and final["credits_charged"] == 0
    assert final["error"]["code"] == "unavailable"
    assert "could not be recorded" in final["error"]["message"]
    assert refused(stack) == len(WRITE_BACKOFF_S) + 1
    assert provider_calls(mock) == 1
    assert assert_exact(stack.database_url, acct, granted) == 0
    with session_scope(stack.database_url) as s:
        job = s.execute(select(Job).where(Job.account_id == acct)).scalar_one()
    assert job.status == "failed" and job.error is not None


GIVE_UP = """
import json, sys
from workers.jobs import give_up
give_up(sys.argv[1], RuntimeError("found running by the reconciler"))
print(json.dumps({"ok": True}))
"""


def test_an_end_the_database_refuses_in_every_form_is_left_to_the_reconciler(
    stack: Stack, mock: httpx.Client, refusing: None
) -> None:
    """Not even the job's failure can be written: the job stays running, unannounced, and
    no provider is called again; ``give_up`` (the reconciler's call) ends it later."""
    psql(stack, "DROP TRIGGER refuse_end ON jobs; CREATE TRIGGER refuse_end BEFORE UPDATE "
                "ON jobs FOR EACH ROW WHEN (OLD.status = 'running' AND NEW.status <> "
                "'running') EXECUTE FUNCTION refuse_end()")
    mock.post("/_mock/config", json={"model": MODEL, "ttft_ms": 0, "token_ms": 0,
                                     "tokens": 9}).raise_for_status()
    granted = Decimal(50)
    key = stack.create_key(credits=granted)
    acct = account_of(stack.database_url, key)
    thread, out = start_chat(stack, key)
    attempts = len(WRITE_BACKOFF_S) + 1 + len(GIVE_UP_BACKOFF_S) + 1
    wait_for("every attempt refused", lambda: refused(stack) >= attempts,
             timeout=sum(WRITE_BACKOFF_S) + sum(GIVE_UP_BACKOFF_S) + 60)
    with session_scope(stack.database_url) as s:
        job = s.execute(select(Job).where(Job.account_id == acct)).scalar_one()
        assert job.status == "running"
    assert thread.is_alive()  # never told ``final`` while the job runs
    psql(stack, ALLOW)
    run_json(GIVE_UP, job.id, CHORUS_DATABASE_URL=stack.database_url,
             CHORUS_REDIS_URL=stack.redis_url)
    thread.join(timeout=30)
    assert out, "the stream never ended"
    final = out[0].final
    assert final["status"] == "failed" and final["credits_charged"] == 0
    assert provider_calls(mock) == 1
    assert refused(stack) == attempts
    assert assert_exact(stack.database_url, acct, granted) == 0


def test_on_sqlite_an_end_refused_for_a_while_is_written_later_with_one_provider_call(
    sqlite_stack: Stack, mock: httpx.Client
) -> None:
    mock.post("/_mock/config", json={"model": MODEL, "ttft_ms": 0, "token_ms": 0,
                                     "tokens": 9}).raise_for_status()
    granted = Decimal(50)
    key = sqlite_stack.create_key(credits=granted)
    acct = account_of(sqlite_stack.database_url, key)
    log = sqlite_stack.logs / "worker.log"
    seen = log.read_text().count("writing the end of job")
    engine = get_engine(sqlite_stack.database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse_end BEFORE UPDATE ON jobs WHEN NEW.status = 'succeeded' "
            "AND OLD.status = 'running' BEGIN SELECT RAISE(ABORT, 'refused'); END")
    try:
        thread, out = start_chat(sqlite_stack, key)
        wait_for("two refused writes",
                 lambda: log.read_text().count("writing the end of job") >= seen + 2)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS refuse_end")
    thread.join(timeout=60)
    assert out, "the stream never ended"
    final = out[0].final
    assert final["status"] == "succeeded" and final["credits_charged"] > 0
    assert provider_calls(mock) == 1
    assert assert_exact(sqlite_stack.database_url, acct, granted) == Decimal(
        str(final["credits_charged"]))
