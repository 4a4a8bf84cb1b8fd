"""The ledger against real databases: invariants, idempotency and concurrent reservations."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from shared import keys, ledger
from shared.db import session_scope
from shared.migrate import upgrade
from shared.tables import Account, LedgerEntry
from tests.stack import create_pg_database, drop_pg_database


@pytest.fixture(params=["sqlite", "postgresql"], scope="module")
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated scratch database of each kind Chorus runs on."""
    if request.param == "sqlite":
        url = f"sqlite:///{Path(tmp_path_factory.mktemp('ledger')) / 'chorus.db'}"
        upgrade(url)
        yield url
        return
    url = create_pg_database()
    try:
        upgrade(url)
        yield url
    finally:
        from shared.db import get_engine

        get_engine(url).dispose()
        drop_pg_database(url)


def new_account(url: str, credits: Decimal | int = 0) -> int:
    with session_scope(url) as s:
        account = keys.ensure_account(s, f"acct-{uuid.uuid4().hex[:8]}")
        if credits:
            ledger.grant(s, account.id, Decimal(credits), note="test")
        return account.id


def reserve(url: str, account_id: int, credits: Decimal | int | str) -> str:
    job_id = str(uuid.uuid4())
    with session_scope(url) as s:
        ledger.reserve(s, account_id, job_id, Decimal(credits))
    return job_id


def assert_consistent(url: str, account_id: int) -> ledger.Wallet:
    with session_scope(url) as s:
        wallet, summed = ledger.audit(s, account_id)
    assert wallet == summed
    assert wallet.balance >= 0 and wallet.reserved >= 0 and wallet.available >= 0
    return wallet


def test_reserve_settle_release_keep_the_ledger_equal_to_the_wallet(db_url: str) -> None:
    acct = new_account(db_url, 10)
    job = reserve(db_url, acct, "4")
    assert assert_consistent(db_url, acct) == ledger.Wallet(Decimal(10), Decimal(4))
    with session_scope(db_url) as s:
        assert ledger.settle(s, job, Decimal("1.5")) == Decimal("1.5")
    assert assert_consistent(db_url, acct) == ledger.Wallet(Decimal("8.5"), Decimal(0))
    with session_scope(db_url) as s:
        kinds = s.execute(
            select(LedgerEntry.kind, LedgerEntry.amount, LedgerEntry.hold)
            .where(LedgerEntry.job_id == job).order_by(LedgerEntry.id)
        ).all()
    # One closing row pays the charge and releases the whole hold.
    assert [(k, Decimal(a), Decimal(h)) for k, a, h in kinds] == [
        ("reserve", 0, 4), ("settle", Decimal("-1.5"), -4),
    ]


def test_settling_a_job_that_was_never_reserved_is_a_no_op(db_url: str) -> None:
    with session_scope(db_url) as s:
        assert ledger.close(s, str(uuid.uuid4()), Decimal(3)) == ledger.Settlement(
            Decimal(0), fresh=True)


def test_a_second_settlement_charges_nothing(db_url: str) -> None:
    acct = new_account(db_url, 10)
    job = reserve(db_url, acct, 3)
    with session_scope(db_url) as s:
        first = ledger.close(s, job, Decimal(2))
    with session_scope(db_url) as s:
        again = ledger.close(s, job, Decimal(3))
    with session_scope(db_url) as s:
        released = ledger.release(s, job)
    assert first == ledger.Settlement(Decimal(2), fresh=True)
    assert again == ledger.Settlement(Decimal(2), fresh=False)
    assert released == Decimal(2)
    assert assert_consistent(db_url, acct) == ledger.Wallet(Decimal(8), Decimal(0))


def test_charge_is_capped_at_the_hold_and_never_negative(db_url: str) -> None:
    acct = new_account(db_url, 5)
    over, under = reserve(db_url, acct, 2), reserve(db_url, acct, 2)
    with session_scope(db_url) as s:
        assert ledger.settle(s, over, Decimal(99)) == Decimal(2)
        assert ledger.settle(s, under, Decimal(-1)) == Decimal(0)
    assert assert_consistent(db_url, acct) == ledger.Wallet(Decimal(3), Decimal(0))


def test_release_gives_the_whole_hold_back_and_blocks_a_later_settle(db_url: str) -> None:
    acct = new_account(db_url, 5)
    job = reserve(db_url, acct, 5)
    with session_scope(db_url) as s:
        assert ledger.release(s, job) == 0
    with session_scope(db_url) as s:
        assert ledger.close(s, job, Decimal(5)) == ledger.Settlement(Decimal(0), fresh=False)
    assert assert_consistent(db_url, acct) == ledger.Wallet(Decimal(5), Decimal(0))


def test_reserve_refuses_more_than_is_available(db_url: str) -> None:
    acct = new_account(db_url, 5)
    reserve(db_url, acct, 4)
    with pytest.raises(ledger.InsufficientCredits) as info, session_scope(db_url) as s:
        ledger.reserve(s, acct, str(uuid.uuid4()), Decimal(2))
    assert (info.value.available, info.value.required) == (Decimal(1), Decimal(2))
    assert assert_consistent(db_url, acct) == ledger.Wallet(Decimal(5), Decimal(4))


def test_refund_is_capped_at_the_charge_and_happens_once(db_url: str) -> None:
    acct = new_account(db_url, 10)
    job = reserve(db_url, acct, 4)
    with session_scope(db_url) as s:
        ledger.settle(s, job, Decimal(3))
    with session_scope(db_url) as s:
        assert ledger.refund(s, job, Decimal(50), note="goodwill") == Decimal(3)
    with session_scope(db_url) as s:
        assert ledger.refund(s, job, Decimal(1)) == Decimal(3)
    assert assert_consistent(db_url, acct) == ledger.Wallet(Decimal(10), Decimal(0))
    unpaid, free = reserve(db_url, acct, 1), reserve(db_url, acct, 1)
    with session_scope(db_url) as s:
        ledger.release(s, free)
    for job_id in (unpaid, free):
        with pytest.raises(ValueError, match="not charged"), session_scope(db_url) as s:
            ledger.refund(s, job_id)


def test_grants_must_be_positive(db_url: str) -> None:
    acct = new_account(db_url)
    for bad in (Decimal(0), Decimal(-5)):
        with pytest.raises(ValueError), session_scope(db_url) as s:
            ledger.grant(s, acct, bad)
    assert assert_consistent(db_url, acct) == ledger.Wallet(Decimal(0), Decimal(0))


def test_the_database_itself_refuses_an_overdrawn_wallet(db_url: str) -> None:
    acct = new_account(db_url, 1)
    reserve(db_url, acct, 1)
    with pytest.raises(IntegrityError), session_scope(db_url) as s:
        s.execute(update(Account).where(Account.id == acct).values(balance=Decimal("0.5")))
    with pytest.raises(IntegrityError), session_scope(db_url) as s:
        s.execute(update(Account).where(Account.id == acct).values(reserved=Decimal(-1)))


def test_entries_page_newest_first(db_url: str) -> None:
    acct = new_account(db_url, 1)
    for n in range(4):
        with session_scope(db_url) as s:
            ledger.grant(s, acct, Decimal(n + 1), note=f"g{n}")
    with session_scope(db_url) as s:
        first = ledger.entries(s, acct, limit=3)
        rest = ledger.entries(s, acct, limit=3, before_id=first[-1].id)
    assert [e.note for e in first] == ["g3", "g2", "g1"]
    assert [e.note for e in rest] == ["g0", "test"]
    assert first[0].view()["amount"] == 4.0


def test_concurrent_reservations_never_overdraw(db_url: str) -> None:
    """40 threads race for a wallet that covers 10 holds: exactly 10 win."""
    acct = new_account(db_url, Decimal("10.5"))
    won: list[str] = []
    lost: list[str] = []
    barrier = threading.Barrier(40)

    def attempt() -> None:
        barrier.wait()
        try:
            won.append(reserve(db_url, acct, 1))
        except ledger.InsufficientCredits:
            lost.append("x")

    threads = [threading.Thread(target=attempt) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(won), len(lost)) == (10, 30)
    assert assert_consistent(db_url, acct) == ledger.Wallet(Decimal("10.5"), Decimal(10))


def test_concurrent_settlements_of_one_job_charge_once(db_url: str) -> None:
    acct = new_account(db_url, 10)
    job = reserve(db_url, acct, 5)
    results: list[ledger.Settlement] = []
    barrier = threading.Barrier(8)

    def settle() -> None:
        barrier.wait()
        with session_scope(db_url) as s:
            results.append(ledger.close(s, job, Decimal(2)))

    threads = [threading.Thread(target=settle) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.fresh for r in results) == [False] * 7 + [True]
    assert {r.charged for r in results} == {Decimal(2)}
    assert assert_consistent(db_url, acct) == ledger.Wallet(Decimal(8), Decimal(0))
    with session_scope(db_url) as s:
        rows = s.execute(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.job_id == job)
        ).scalar_one()
    assert rows == 2  # reserve, settle
