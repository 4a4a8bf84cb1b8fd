"""The migration to exact credits keeps every stored amount, to the micro-credit, on SQLite
and on PostgreSQL, and its downgrade gives them back."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, select, text

from shared import ledger
from shared.db import get_engine, session_scope
from shared.migrate import alembic_config, upgrade
from shared.tables import Account, Job, LedgerEntry
from tests.stack import create_pg_database, drop_pg_database

BEFORE = [
    "INSERT INTO accounts (id, name, tier, balance, reserved, zero_retention, created_at) "
    "VALUES (1, 'a', 'paid', 835.15, 164.850001, false, CURRENT_TIMESTAMP)",
    "INSERT INTO ledger (account_id, job_id, kind, amount, hold, note, created_at) VALUES "
    "(1, NULL, 'grant', 1000.000001, 0, '', CURRENT_TIMESTAMP), "
    "(1, 'j1', 'reserve', 0, 164.850001, '', CURRENT_TIMESTAMP), "
    "(1, 'j2', 'reserve', 0, 0.333333, '', CURRENT_TIMESTAMP), "
    "(1, 'j2', 'settle', -164.850001, -0.333333, '', CURRENT_TIMESTAMP)",
    "INSERT INTO jobs (id, account_id, kind, status, credits_reserved, credits_charged, "
    "created_at) VALUES ('j2', 1, 'chat', 'succeeded', 0.333333, 0.000001, CURRENT_TIMESTAMP)",
]


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    url = create_pg_database()
    try:
        yield url
    finally:
        get_engine(url).dispose()
        drop_pg_database(url)


def test_stored_credits_survive_the_migration_both_ways(fresh_url: str) -> None:
    upgrade(fresh_url, "0003")
    engine = create_engine(fresh_url)
    with engine.begin() as conn:
        for sql in BEFORE:
            conn.execute(text(sql))
    upgrade(fresh_url)
    with session_scope(fresh_url) as s:
        account = s.get(Account, 1)
        assert account is not None
        assert (account.balance, account.reserved) == (Decimal("835.15"),
                                                        Decimal("164.850001"))
        wallet, summed = ledger.audit(s, 1)
        assert wallet == summed
        job = s.get(Job, "j2")
        assert job is not None and job.credits_charged == Decimal("0.000001")
        holds = sorted(s.execute(select(LedgerEntry.hold)).scalars())
        assert holds == [Decimal("-0.333333"), 0, Decimal("0.333333"), Decimal("164.850001")]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT balance FROM accounts")).scalar_one() == 835150000
    get_engine(fresh_url).dispose()
    command.downgrade(alembic_config(fresh_url), "0003")
    with engine.connect() as conn:
        balance = conn.execute(text("SELECT balance FROM accounts")).scalar_one()
        charged = conn.execute(text("SELECT credits_charged FROM jobs")).scalar_one()
    assert Decimal(str(balance)).quantize(ledger.QUANTUM) == Decimal("835.15")
    assert Decimal(str(charged)).quantize(ledger.QUANTUM) == Decimal("0.000001")
    engine.dispose()
