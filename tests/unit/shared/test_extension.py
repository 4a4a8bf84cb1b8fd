"""Extending a running job's hold, on real PostgreSQL and SQLite: all or nothing, never
past the wallet or a budget, never after the job's close, exact under a racing close."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Connection, select

from shared import budgets, extension, keys, ledger, onestatement
from shared.db import autocommit, get_engine, is_postgres, session_scope
from shared.migrate import upgrade
from shared.tables import ApiKey, Budget, BudgetHold, Job, LedgerEntry


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest, pg_url: str, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[str]:
    if request.param == "postgresql":
        yield pg_url
        return
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('extension')) / 'chorus.db'}"
    upgrade(url)
    yield url
    get_engine(url).dispose()


def account(db: str, credits: str, session_budget: str | None = None) -> tuple[int, int]:
    with session_scope(db) as s:
        keys.create_key(s, f"acct-{uuid.uuid4().hex[:8]}", credits=Decimal(credits))
        key = s.execute(select(ApiKey).order_by(ApiKey.id.desc()).limit(1)).scalar_one()
        if session_budget is not None:
            budgets.set_session_default(s, key.account_id, Decimal(session_budget))
        return key.account_id, key.id


def open_job(db: str, acct: int, key: int, hold: str, session_id: str | None = None) -> str:
    """A running job holding ``hold`` (and on the session's budget, if any), as the API
    opens one in a transaction."""
    job_id = str(uuid.uuid4())
    with session_scope(db) as s:
        s.add(Job(id=job_id, account_id=acct, key_id=key, kind="chat", status="running",
                  request={"model": "m"}, session_id=session_id,
                  credits_reserved=Decimal(hold)))
        s.flush()
        terms = budgets.terms(s, key)
        budgets.reserve(s, terms, account_id=acct, key_id=key, session_id=session_id,
                        job_id=job_id, amount=Decimal(hold))
        ledger.reserve(s, acct, job_id, Decimal(hold))
    return job_id


def extend(db: str, job_id: str, credits: str) -> str:
    if is_postgres(db):
        with autocommit(db) as conn:
            return extension.extend(conn, job_id, Decimal(credits)).outcome
    with session_scope(db) as s:
        return extension.extend(s.connection(), job_id, Decimal(credits)).outcome


def close(db: str, job_id: str, price: str) -> Decimal | None:
    def run(conn: Connection) -> Decimal | None:
        return onestatement.close_job(conn, job_id=job_id, status="succeeded", result=None,
                                      error=None, resolved_model="m", calls=[],
                                      price=Decimal(price))

    if is_postgres(db):
        with autocommit(db) as conn:
            return run(conn)
    with session_scope(db) as s:
        return run(s.connection())


def state(db: str, acct: int, job_id: str) -> tuple[ledger.Wallet, Decimal, Decimal]:
    """(the audited wallet, the reserve row's hold, the job's credits_reserved)."""
    with session_scope(db) as s:
        wallet, summed = ledger.audit(s, acct)
        hold = s.execute(select(LedgerEntry.hold).where(
            LedgerEntry.job_id == job_id, LedgerEntry.kind == "reserve")).scalar_one()
        job = s.get(Job, job_id)
        assert job is not None
        reserved = job.credits_reserved
    assert wallet == summed, (wallet, summed)
    return wallet, hold, reserved


def test_an_extension_grows_the_wallet_row_and_job_together(db: str) -> None:
    acct, key = account(db, "10")
    job_id = open_job(db, acct, key, "2")
    assert extend(db, job_id, "3.000001") == extension.OK
    assert state(db, acct, job_id) == (
        ledger.Wallet(Decimal(10), Decimal("5.000001")), Decimal("5.000001"),
        Decimal("5.000001"))
    # The close charges up to the grown hold and releases all of it.
    assert close(db, job_id, "4.5") == Decimal("4.5")
    assert state(db, acct, job_id)[0] == ledger.Wallet(Decimal("5.5"), Decimal(0))


def test_an_extension_the_wallet_cannot_cover_changes_nothing(db: str) -> None:
    acct, key = account(db, "10")
    job_id = open_job(db, acct, key, "6")
    assert extend(db, job_id, "4.000001") == extension.INSUFFICIENT
    assert state(db, acct, job_id) == (ledger.Wallet(Decimal(10), Decimal(6)), Decimal(6),
                                       Decimal(6))
    assert extend(db, job_id, "4") == extension.OK
    assert state(db, acct, job_id)[0] == ledger.Wallet(Decimal(10), Decimal(10))


def test_an_ended_job_is_never_extended(db: str) -> None:
    acct, key = account(db, "10")
    job_id = open_job(db, acct, key, "2")
    assert close(db, job_id, "1") == Decimal(1)
    assert extend(db, job_id, "1") == extension.ENDED_JOB
    assert state(db, acct, job_id)[0] == ledger.Wallet(Decimal(9), Decimal(0))


def test_a_session_budget_bounds_extensions_and_grows_with_them(db: str) -> None:
    acct, key = account(db, "100", session_budget="5")
    job_id = open_job(db, acct, key, "2", session_id="user-1")
    assert extend(db, job_id, "3.000001") == extension.OVER_BUDGET
    assert extend(db, job_id, "2.5") == extension.OK
    with session_scope(db) as s:
        b = s.execute(select(Budget)).scalars().all()
        row = next(x for x in b if x.account_id == acct)
        assert (row.reserved, row.spent) == (Decimal("4.5"), Decimal(0))
        held = s.execute(select(BudgetHold.amount).where(BudgetHold.job_id == job_id))
        assert held.scalar_one() == Decimal("4.5")
    assert state(db, acct, job_id)[0] == ledger.Wallet(Decimal(100), Decimal("4.5"))
    assert close(db, job_id, "4") == Decimal(4)
    with session_scope(db) as s:
        row = s.execute(select(Budget).where(Budget.account_id == acct)).scalar_one()
        assert (row.reserved, row.spent) == (Decimal(0), Decimal(4))


def test_extensions_racing_closes_leave_nothing_held(db: str) -> None:
    """Each job is extended by several threads while another closes it: whatever the
    interleaving, the close releases every extension that got in, and none comes after."""
    acct, key = account(db, "1000")
    jobs = [open_job(db, acct, key, "1") for _ in range(12)]
    outcomes: list[str] = []

    def extender(job_id: str) -> None:
        for _ in range(5):
            outcomes.append(extend(db, job_id, "0.5"))

    threads = [threading.Thread(target=extender, args=(j,)) for j in jobs for _ in range(3)]
    threads += [threading.Thread(target=close, args=(db, j, "1.25")) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert extension.OK in outcomes and extension.ENDED_JOB in outcomes
    charged = Decimal(0)
    for job_id in jobs:
        wallet, hold, reserved = state(db, acct, job_id)
        assert hold == reserved
        with session_scope(db) as s:
            job = s.get(Job, job_id)
            assert job is not None and job.credits_charged is not None
            charged += job.credits_charged
    assert wallet == ledger.Wallet(Decimal(1000) - charged, Decimal(0))
