"""Opening and closing a job in one statement, against a real PostgreSQL database."""

from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import func, select, update

from shared import budgets, keys, ledger, onestatement
from shared.db import autocommit, session_scope
from shared.tables import ApiKey, Budget, Job, LedgerEntry, RequestLog


def account(pg_url: str, credits: int) -> tuple[int, int]:
    """(account id, key id) of a new account holding ``credits``."""
    name = f"acct-{uuid.uuid4().hex[:8]}"
    with session_scope(pg_url) as s:
        keys.create_key(s, name, credits=Decimal(credits))
        key = s.execute(select(ApiKey).order_by(ApiKey.id.desc()).limit(1)).scalar_one()
        return key.account_id, key.id


def open_job(pg_url: str, account_id: int, key_id: int, hold: str, guarded: bool = True
             ) -> tuple[str, onestatement.Opened]:
    job_id = str(uuid.uuid4())
    with autocommit(pg_url) as conn:
        opened = onestatement.open_job(
            conn, job_id=job_id, account_id=account_id, key_id=key_id, kind="chat",
            request={"model": "m", "messages": []}, session_id=None, hold=Decimal(hold),
            byok=None, guarded=guarded,
        )
    return job_id, opened


def close_job(pg_url: str, job_id: str, price: str, calls: int = 2) -> Decimal | None:
    rows = [{"model": f"m{i}", "provider": "p", "role": "", "prompt_tokens": 3,
             "completion_tokens": 5, "ttft_ms": 12.5, "latency_ms": 40.0, "status": "ok",
             "cost": Decimal("0.5"), "error": None} for i in range(calls)]
    with autocommit(pg_url) as conn:
        return onestatement.close_job(
            conn, job_id=job_id, status="succeeded", result={"full_content": "hi"},
            error=None, resolved_model="m0", calls=rows, price=Decimal(price),
        )


def audit(pg_url: str, account_id: int) -> ledger.Wallet:
    with session_scope(pg_url) as s:
        wallet, summed = ledger.audit(s, account_id)
    assert wallet == summed
    return wallet


def test_open_holds_writes_the_reserve_row_and_stores_the_job(pg_url: str) -> None:
    acct, key = account(pg_url, 100)
    job_id, opened = open_job(pg_url, acct, key, "30")
    assert opened == onestatement.Opened(plain=True, held=True)
    assert audit(pg_url, acct) == ledger.Wallet(Decimal(100), Decimal(30))
    with session_scope(pg_url) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "queued" and job.credits_reserved == 30
        assert job.request == {"model": "m", "messages": []}


def test_open_that_the_wallet_cannot_cover_writes_nothing(pg_url: str) -> None:
    acct, key = account(pg_url, 10)
    job_id, opened = open_job(pg_url, acct, key, "10.000001")
    assert opened == onestatement.Opened(plain=True, held=False)
    assert audit(pg_url, acct) == ledger.Wallet(Decimal(10), Decimal(0))
    with session_scope(pg_url) as s:
        assert s.get(Job, job_id) is None


def test_a_guarded_open_leaves_a_capped_key_to_the_budget_path(pg_url: str) -> None:
    acct, key = account(pg_url, 100)
    with session_scope(pg_url) as s:
        s.execute(update(ApiKey).where(ApiKey.id == key).values(budget=Decimal(5)))
    job_id, opened = open_job(pg_url, acct, key, "1")
    assert opened == onestatement.Opened(plain=False, held=False)
    assert audit(pg_url, acct).reserved == 0
    with session_scope(pg_url) as s:
        assert s.get(Job, job_id) is None
    # Unguarded (the caller read the terms), the same statement holds.
    _, opened = open_job(pg_url, acct, key, "1", guarded=False)
    assert opened.held and audit(pg_url, acct).reserved == 1


def test_close_charges_at_most_the_hold_logs_the_calls_and_happens_once(pg_url: str) -> None:
    acct, key = account(pg_url, 100)
    job_id, _ = open_job(pg_url, acct, key, "30")
    assert close_job(pg_url, job_id, "45.5") == Decimal(30)
    assert audit(pg_url, acct) == ledger.Wallet(Decimal(70), Decimal(0))
    with session_scope(pg_url) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "succeeded" and job.credits_charged == 30
        assert job.result == {"full_content": "hi"} and job.finished_at is not None
        logged = s.execute(select(RequestLog).where(RequestLog.job_id == job_id)).scalars()
        assert sorted((r.model, r.completion_tokens, r.cost) for r in logged) == [
            ("m0", 5, Decimal("0.5")), ("m1", 5, Decimal("0.5"))]
    # A redelivered task ends it again: nothing is written, nothing charged.
    assert close_job(pg_url, job_id, "1") is None
    assert audit(pg_url, acct) == ledger.Wallet(Decimal(70), Decimal(0))
    with session_scope(pg_url) as s:
        assert s.scalar(select(func.count()).select_from(RequestLog)
                        .where(RequestLog.job_id == job_id)) == 2
        assert s.scalar(select(func.count()).select_from(LedgerEntry)
                        .where(LedgerEntry.job_id == job_id)) == 2


def test_close_settles_the_budgets_the_job_held(pg_url: str) -> None:
    acct, key = account(pg_url, 100)
    job_id = str(uuid.uuid4())
    with session_scope(pg_url) as s:
        s.add(Job(id=job_id, account_id=acct, key_id=key, kind="chat", status="queued",
                  credits_reserved=Decimal(8)))
        s.flush()
        budgets.reserve(s, budgets.Terms(Decimal(20), None, []), account_id=acct, key_id=key,
                        session_id=None, job_id=job_id, amount=Decimal(8))
        ledger.reserve(s, acct, job_id, Decimal(8))
    assert close_job(pg_url, job_id, "3.25", calls=1) == Decimal("3.25")
    assert audit(pg_url, acct) == ledger.Wallet(Decimal("96.75"), Decimal(0))
    with session_scope(pg_url) as s:
        budget = s.execute(select(Budget).where(Budget.account_id == acct)).scalar_one()
        assert (budget.spent, budget.reserved) == (Decimal("3.25"), Decimal(0))
