"""What requests left behind for one account: its jobs, batches, budgets, stored provider
keys, ledger and wallet. A refused request must leave all of it as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from shared.db import session_scope
from shared.keys import hash_key
from shared.tables import (
    Account,
    ApiKey,
    Batch,
    Budget,
    Job,
    LedgerEntry,
    ProviderKey,
)
from tests.stack import Stack


@dataclass(frozen=True)
class Footprint:
    jobs: int
    batches: int
    budgets: int
    provider_keys: int
    ledger_rows: int
    balance: Decimal
    reserved: Decimal
    session_budget: Decimal | None


def _count(session: Session, column: InstrumentedAttribute[int], account_id: int) -> int:
    return int(session.execute(select(func.count(column)).where(column == account_id))
               .scalar_one())


def footprint(stack: Stack, key: str) -> Footprint:
    with session_scope(stack.database_url) as session:
        account_id = session.execute(select(ApiKey.account_id)
                                     .where(ApiKey.key_hash == hash_key(key))).scalar_one()
        account = session.get(Account, account_id)
        assert account is not None
        return Footprint(
            jobs=_count(session, Job.account_id, account_id),
            batches=_count(session, Batch.account_id, account_id),
            budgets=_count(session, Budget.account_id, account_id),
            provider_keys=_count(session, ProviderKey.account_id, account_id),
            ledger_rows=_count(session, LedgerEntry.account_id, account_id),
            balance=Decimal(account.balance),
            reserved=Decimal(account.reserved),
            session_budget=account.session_budget,
        )


@contextmanager
def unchanged(stack: Stack, key: str) -> Iterator[None]:
    """The block's requests change nothing of the key's account."""
    before = footprint(stack, key)
    yield
    assert footprint(stack, key) == before
