"""Key and session budgets: held with the wallet, settled once, exact under concurrency."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import select

from shared import budgets, byok, keys, ledger
from shared.db import session_scope
from shared.tables import ApiKey
from tests.unit.shared.test_ledger import assert_consistent, db_url

__all__ = ["db_url"]  # the fixture, shared with the ledger tests

SECRET = "unit-test-secret-0123456789"


def new_key(url: str, credits: int = 100, budget: Decimal | None = None) -> tuple[int, int]:
    """(account id, key id) of a fresh account with one key."""
    name = f"acct-{uuid.uuid4().hex[:8]}"
    with session_scope(url) as s:
        keys.create_key(s, name, credits=Decimal(credits), budget=budget)
        row = s.execute(select(ApiKey.account_id, ApiKey.id).order_by(ApiKey.id.desc())).first()
        assert row is not None
        return row[0], row[1]


def hold(url: str, account_id: int, key_id: int, amount: str, session_id: str | None = None) -> str:
    """What api/submit does: budgets first, then the wallet, in one transaction."""
    job_id = str(uuid.uuid4())
    with session_scope(url) as s:
        terms = budgets.terms(s, key_id)
        budgets.reserve(s, terms, account_id=account_id, key_id=key_id, session_id=session_id,
                        job_id=job_id, amount=Decimal(amount))
        ledger.reserve(s, account_id, job_id, Decimal(amount))
    return job_id


def settle(url: str, job_id: str, cost: str) -> None:
    with session_scope(url) as s:
        ledger.settle(s, job_id, Decimal(cost))


def key_usage(url: str, account_id: int, key_id: int) -> budgets.Usage:
    with session_scope(url) as s:
        return budgets.key_usage(s, account_id, key_id)


def test_key_budget_counts_reserved_and_spent(db_url: str) -> None:
    acct, key = new_key(db_url, budget=Decimal(5))
    job = hold(db_url, acct, key, "3")
    assert key_usage(db_url, acct, key) == budgets.Usage(Decimal(5), Decimal(0), Decimal(3))
    with pytest.raises(budgets.BudgetExceeded) as info:
        hold(db_url, acct, key, "2.5")
    err = info.value
    assert (err.scope, err.limit, err.used, err.required) == ("key", 5, 3, Decimal("2.5"))
    assert err.remaining == Decimal(2)
    settle(db_url, job, "1")
    assert key_usage(db_url, acct, key) == budgets.Usage(Decimal(5), Decimal(1), Decimal(0))
    hold(db_url, acct, key, "4")  # now it fits: 1 spent + 4 held = the cap
    # The refused request left nothing behind: no wallet hold, no budget hold.
    assert assert_consistent(db_url, acct).reserved == Decimal(4)


def test_settling_twice_counts_the_spend_once(db_url: str) -> None:
    acct, key = new_key(db_url, budget=Decimal(10))
    job = hold(db_url, acct, key, "4")
    settle(db_url, job, "3")
    settle(db_url, job, "4")
    assert key_usage(db_url, acct, key) == budgets.Usage(Decimal(10), Decimal(3), Decimal(0))


def test_refund_gives_budget_back(db_url: str) -> None:
    acct, key = new_key(db_url, budget=Decimal(10))
    job = hold(db_url, acct, key, "4")
    settle(db_url, job, "3")
    with session_scope(db_url) as s:
        ledger.refund(s, job, Decimal(2))
    assert key_usage(db_url, acct, key).spent == Decimal(1)


def test_session_default_and_per_session_limits(db_url: str) -> None:
    acct, key = new_key(db_url)
    hold(db_url, acct, key, "50", session_id="before-any-cap")  # no cap, nothing counted
    with session_scope(db_url) as s:
        budgets.set_session_default(s, acct, Decimal(2))
        budgets.set_session_limit(s, acct, "vip", Decimal(6))
    hold(db_url, acct, key, "1.5", session_id="u1")
    with pytest.raises(budgets.BudgetExceeded) as info:
        hold(db_url, acct, key, "1", session_id="u1")
    assert (info.value.scope, info.value.limit) == ("session", Decimal(2))
    hold(db_url, acct, key, "1.5", session_id="u2")  # another user has their own cap
    hold(db_url, acct, key, "5", session_id="vip")  # an explicit cap beats the default
    hold(db_url, acct, key, "1")  # no session: only the wallet limits it
    with session_scope(db_url) as s:
        u1 = budgets.usage(s, acct, budgets.SESSION, "u1", Decimal(2))
        fresh = budgets.usage(s, acct, budgets.SESSION, "new", Decimal(2))
    assert u1.view() == {"limit": 2.0, "spent": 0.0, "reserved": 1.5, "remaining": 0.5}
    assert fresh.view()["remaining"] == 2.0


def test_key_and_session_caps_both_apply(db_url: str) -> None:
    acct, key = new_key(db_url, budget=Decimal(3))
    with session_scope(db_url) as s:
        budgets.set_session_default(s, acct, Decimal(10))
    hold(db_url, acct, key, "2", session_id="s")
    with pytest.raises(budgets.BudgetExceeded) as info:
        hold(db_url, acct, key, "2", session_id="s")
    assert info.value.scope == "key"
    with session_scope(db_url) as s:
        assert budgets.usage(s, acct, budgets.SESSION, "s", Decimal(10)).reserved == Decimal(2)


def test_terms_read_caps_and_byok_providers_fresh(db_url: str) -> None:
    acct, key = new_key(db_url, budget=Decimal(7))
    with session_scope(db_url) as s:
        assert budgets.terms(s, key) == budgets.Terms(Decimal(7), None, [])
        byok.put(s, SECRET, acct, "prov-b", "sk-test-bbbbbbbb")
        byok.put(s, SECRET, acct, "prov-a", "sk-test-aaaaaaaa")
        budgets.set_session_default(s, acct, Decimal(1))
        budgets.set_key_budget(s, key, None)
    with session_scope(db_url) as s:
        assert budgets.terms(s, key) == budgets.Terms(None, Decimal(1), ["prov-a", "prov-b"])


def test_concurrent_requests_in_one_session_never_overrun_its_cap(db_url: str) -> None:
    """30 threads race to spend a 10-credit session cap in 1-credit holds: exactly 10 fit."""
    acct, key = new_key(db_url, credits=1000)
    with session_scope(db_url) as s:
        budgets.set_session_default(s, acct, Decimal(10))
    won: list[str] = []
    refused: list[str] = []
    barrier = threading.Barrier(30)

    def attempt() -> None:
        barrier.wait()
        try:
            won.append(hold(db_url, acct, key, "1", session_id="chatty-user"))
        except budgets.BudgetExceeded:
            refused.append("x")

    threads = [threading.Thread(target=attempt) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(won), len(refused)) == (10, 20)
    with session_scope(db_url) as s:
        u = budgets.usage(s, acct, budgets.SESSION, "chatty-user", Decimal(10))
    assert u == budgets.Usage(Decimal(10), Decimal(0), Decimal(10))
    assert assert_consistent(db_url, acct).reserved == Decimal(10)
