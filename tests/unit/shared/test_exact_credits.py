"""Credits stay exact on SQLite and PostgreSQL through thousands of holds and settles, the
close is the same write on both, and ``give_up`` ends a job once on both."""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from shared import budgets, keys, ledger, onestatement
from shared.db import autocommit, get_engine, is_postgres, session_scope
from shared.migrate import upgrade
from shared.settings import get_settings
from shared.tables import ApiKey, Budget, Job, LedgerEntry, RequestLog
from tests.stack import create_pg_database, drop_pg_database
from workers import jobs

# Amounts that are not binary fractions, the smallest credit, and a hold of the size of a
# long answer on a priced model: the old storage drifted on exactly these.
AMOUNTS = [Decimal("0.000001"), Decimal("0.333333"), Decimal("0.666667"), Decimal("0.1"),
           Decimal("164.85"), Decimal("164.851234"), Decimal("2.999999"), Decimal("0.7")]


@pytest.fixture(params=["sqlite", "postgresql"], scope="module")
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{Path(tmp_path_factory.mktemp('exact')) / 'chorus.db'}"
        upgrade(url)
        yield url
        get_engine(url).dispose()
        return
    url = create_pg_database()
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        drop_pg_database(url)


def new_key(url: str, credits: Decimal, cap: Decimal | None = None) -> tuple[int, int]:
    with session_scope(url) as s:
        keys.create_key(s, f"acct-{uuid.uuid4().hex[:8]}", credits=credits)
        key = s.execute(select(ApiKey).order_by(ApiKey.id.desc()).limit(1)).scalar_one()
        if cap is not None:
            budgets.set_key_budget(s, key.id, cap)
        return key.account_id, key.id


def open_job(url: str, account_id: int, key_id: int, hold: Decimal) -> str:
    """The hold as the API makes it when a transaction is needed (either database)."""
    job_id = str(uuid.uuid4())
    with session_scope(url) as s:
        terms = budgets.terms(s, key_id)
        s.add(Job(id=job_id, account_id=account_id, key_id=key_id, kind="chat",
                  status="running", request={"model": "m"}, credits_reserved=hold))
        s.flush()
        budgets.reserve(s, terms, account_id=account_id, key_id=key_id, session_id=None,
                        job_id=job_id, amount=hold)
        ledger.reserve(s, account_id, job_id, hold)
    return job_id


def close_job(url: str, job_id: str, price: Decimal, calls: list[dict[str, Any]] | None = None
              ) -> Decimal | None:
    """The job's end as a worker writes it: one statement on PostgreSQL, steps on SQLite."""
    kwargs: dict[str, Any] = {
        "job_id": job_id, "status": "succeeded", "result": {"full_content": "hi"},
        "error": None, "resolved_model": "m", "calls": calls or [], "price": price,
    }
    if is_postgres(url):
        with autocommit(url) as conn:
            return onestatement.close_job(conn, **kwargs)
    with session_scope(url) as s:
        return onestatement.close_job(s.connection(), **kwargs)


def exact_audit(url: str, account_id: int) -> ledger.Wallet:
    with session_scope(url) as s:
        wallet, summed = ledger.audit(s, account_id)
    assert wallet == summed
    return wallet


def test_thousands_of_holds_and_settles_add_up_to_the_micro_credit(db_url: str) -> None:
    granted = Decimal("100000")
    acct, key = new_key(db_url, granted)
    rng = random.Random(7)
    open_jobs: list[tuple[str, Decimal]] = []
    paid = closed = Decimal(0)
    for _ in range(2000):
        if open_jobs and rng.random() < 0.5:
            job_id, hold = open_jobs.pop(rng.randrange(len(open_jobs)))
            # Prices a third, all, or a micro-credit over the hold (the charge is capped).
            price = rng.choice([hold / 3, hold, hold + Decimal("0.000001"), Decimal(0)])
            if rng.random() < 0.5:
                charged = close_job(db_url, job_id, price)
                closed += charged or 0
            else:
                with session_scope(db_url) as s:
                    charged = ledger.settle(s, job_id, price)
            assert charged == min(hold, ledger.q(price))
            paid += charged
        else:
            hold = rng.choice(AMOUNTS)
            open_jobs.append((open_job(db_url, acct, key, hold), hold))
    for job_id, _hold in open_jobs:
        assert close_job(db_url, job_id, Decimal(0)) == 0
    wallet = exact_audit(db_url, acct)
    assert wallet == ledger.Wallet(granted - paid, Decimal(0))
    with session_scope(db_url) as s:
        charged = s.execute(select(func.sum(Job.credits_charged))
                            .where(Job.account_id == acct)).scalar_one()
    # The jobs' own record of their charges (written by the worker's close) is exact too.
    assert charged == closed


def test_the_old_storage_drifted_on_these_values(tmp_path: Path) -> None:
    """NUMERIC(18, 6) on SQLite, as the schema had it: 164.85 and a micro-credit held and
    released left ``reserved`` at -2.5e-15, and the check refused the last release."""
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance NUMERIC(18, 6), "
                 "reserved NUMERIC(18, 6), CHECK (reserved >= 0))")
    conn.execute("INSERT INTO accounts VALUES (1, 1000, 0)")
    for hold in ("164.85", "0.000001"):
        conn.execute("UPDATE accounts SET reserved = reserved + ? WHERE id = 1", (hold,))
    conn.execute("UPDATE accounts SET reserved = reserved - ? WHERE id = 1", ("164.85",))
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        conn.execute("UPDATE accounts SET reserved = reserved - ? WHERE id = 1", ("0.000001",))
    conn.close()


def test_the_values_that_drifted_are_exact_now(db_url: str) -> None:
    acct, key = new_key(db_url, Decimal(1000))
    big = open_job(db_url, acct, key, Decimal("164.85"))
    tiny = open_job(db_url, acct, key, Decimal("0.000001"))
    assert close_job(db_url, big, Decimal(0)) == 0
    assert close_job(db_url, tiny, Decimal(0)) == 0
    assert exact_audit(db_url, acct) == ledger.Wallet(Decimal(1000), Decimal(0))
    with session_scope(db_url) as s:
        stored = s.execute(select(func.sum(LedgerEntry.hold))
                           .where(LedgerEntry.account_id == acct)).scalar_one()
    assert stored == Decimal(0)


def test_close_writes_the_same_rows_on_both_databases(db_url: str) -> None:
    acct, key = new_key(db_url, Decimal(50), cap=Decimal(20))
    job_id = open_job(db_url, acct, key, Decimal("10.5"))
    calls = [{"model": f"m{i}", "provider": "p", "role": "", "prompt_tokens": 3,
              "completion_tokens": 5, "ttft_ms": 12.5, "latency_ms": 40.0, "status": "ok",
              "cost": Decimal("0.333333"), "error": None} for i in range(2)]
    assert close_job(db_url, job_id, Decimal("0.666666"), calls) == Decimal("0.666666")
    # Once: a second close (a redelivered task) writes and charges nothing.
    assert close_job(db_url, job_id, Decimal(5), calls) is None
    assert exact_audit(db_url, acct) == ledger.Wallet(Decimal("49.333334"), Decimal(0))
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "succeeded"
        assert job.credits_charged == Decimal("0.666666") and job.finished_at is not None
        assert job.result == {"full_content": "hi"} and job.error is None
        logged = s.execute(select(RequestLog.model, RequestLog.cost, RequestLog.ttft_ms)
                           .where(RequestLog.job_id == job_id)
                           .order_by(RequestLog.model)).all()
        assert [(m, c, float(t)) for m, c, t in logged] == [
            ("m0", Decimal("0.333333"), 12.5), ("m1", Decimal("0.333333"), 12.5)]
        spent = s.execute(select(Budget.spent, Budget.reserved)
                          .where(Budget.account_id == acct)).one()
    assert tuple(spent) == (Decimal("0.666666"), Decimal(0))


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, job_id: str, event: dict[str, Any], *_: Any) -> None:
        self.events.append(event)

    def flush(self) -> None:
        pass


class Runtime:
    def __init__(self) -> None:
        self.publisher = Recorder()


def test_give_up_ends_a_running_job_once_and_releases_its_hold(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHORUS_DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        acct, key = new_key(db_url, Decimal(10), cap=Decimal(5))
        job_id = open_job(db_url, acct, key, Decimal("3.333333"))
        rt = Runtime()
        jobs.give_up(job_id, RuntimeError("broker gone"), rt)  # type: ignore[arg-type]
        jobs.give_up(job_id, RuntimeError("again"), rt)  # type: ignore[arg-type]
    finally:
        get_settings.cache_clear()
    assert [e["status"] for e in rt.publisher.events] == ["failed"]
    assert rt.publisher.events[0]["credits_charged"] == 0
    assert exact_audit(db_url, acct) == ledger.Wallet(Decimal(10), Decimal(0))
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "failed" and job.credits_charged == 0
        assert job.error is not None and job.error["code"] == "unavailable"
        assert s.execute(select(Budget.reserved).where(Budget.account_id == acct)
                         ).scalar_one() == 0
