"""The credits ledger: grant, reserve, settle, release, refund; atomic, idempotent, never overdrawn.

Every change to a wallet is one ledger row written in the same transaction as the
wallet update, so ``balance == sum(amount)`` and ``reserved == sum(hold)`` always hold.
A (job, kind) pair is unique in the table, so idempotency is the database's job: a
redelivered task that settles again finds the job's ``release`` row already there and
charges nothing. The accounts table refuses ``balance < reserved`` on its own.

Rows per job: ``reserve`` (hold +h), then at the end ``settle`` (amount -c, hold -c; only
when c > 0) and ``release`` (hold -(h - c)); later at most one ``refund`` (amount +r).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Insert, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared import budgets
from shared.tables import Account, LedgerEntry, as_utc

ZERO = Decimal(0)
QUANTUM = Decimal("0.000001")


def q(value: Decimal | int | float | str) -> Decimal:
    return Decimal(str(value)).quantize(QUANTUM)


class InsufficientCredits(Exception):
    def __init__(self, available: Decimal, required: Decimal) -> None:
        super().__init__(f"need {required} credits, {available} available")
        self.available = available
        self.required = required


@dataclass(frozen=True)
class Settlement:
    charged: Decimal
    # False when an earlier settlement of the same job already counted (a redelivery).
    fresh: bool


@dataclass(frozen=True)
class Wallet:
    balance: Decimal
    reserved: Decimal

    @property
    def available(self) -> Decimal:
        return self.balance - self.reserved


def insert_ignore(session: Session, table: Any) -> Insert:
    """``INSERT … ON CONFLICT DO NOTHING`` for the session's database (PostgreSQL or SQLite)."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    stmt: Insert = module.insert(table).on_conflict_do_nothing()
    return stmt


def grant(session: Session, account_id: int, credits: Decimal, note: str = "") -> None:
    amount = q(credits)
    if amount <= 0:
        raise ValueError("a grant must be a positive number of credits")
    session.add(LedgerEntry(account_id=account_id, kind="grant", amount=amount, note=note))
    session.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(balance=Account.balance + amount)
        .execution_options(synchronize_session=False)
    )


def wallet(session: Session, account_id: int) -> Wallet:
    row = session.execute(
        select(Account.balance, Account.reserved).where(Account.id == account_id)
    ).one()
    return Wallet(q(row[0]), q(row[1]))


def available(session: Session, account_id: int) -> Decimal:
    return wallet(session, account_id).available


def reserve(session: Session, account_id: int, job_id: str, credits: Decimal) -> None:
    """Hold ``credits`` for a job, or raise ``InsufficientCredits``; one conditional UPDATE.

    Under concurrency the row lock orders the updates and each re-checks the condition
    against the committed balance, so no interleaving can hold more than is there.
    """
    hold = q(credits)
    if hold < 0:
        raise ValueError("a reservation cannot be negative")
    result = session.execute(
        update(Account)
        .where(Account.id == account_id, Account.balance - Account.reserved >= hold)
        .values(reserved=Account.reserved + hold)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise InsufficientCredits(available(session, account_id), hold)
    session.add(LedgerEntry(account_id=account_id, job_id=job_id, kind="reserve", hold=hold))


def close(session: Session, job_id: str, cost: Decimal) -> Settlement:
    """Charge a job's actual cost (capped at its reservation) and release the rest, once.

    The ``release`` row is the guard: whichever settlement inserts it first wins; any
    later one (a redelivered or concurrent task) inserts nothing and gets the first
    charge back with ``fresh=False``. Budgets the job held are settled in the same step.
    """
    held = session.execute(
        select(LedgerEntry.account_id, LedgerEntry.hold).where(
            LedgerEntry.job_id == job_id, LedgerEntry.kind == "reserve"
        )
    ).first()
    if held is None:
        return Settlement(ZERO, fresh=True)
    account_id, hold = held[0], q(held[1])
    charge = max(ZERO, min(q(cost), hold))
    guard = session.execute(
        insert_ignore(session, LedgerEntry)
        .values(account_id=account_id, job_id=job_id, kind="release", amount=ZERO,
                hold=-(hold - charge), note="")
        .returning(LedgerEntry.id)
    ).first()
    if guard is None:
        return Settlement(charged(session, job_id), fresh=False)
    if charge:
        session.add(
            LedgerEntry(account_id=account_id, job_id=job_id, kind="settle", amount=-charge,
                        hold=-charge)
        )
    session.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(balance=Account.balance - charge, reserved=Account.reserved - hold)
        .execution_options(synchronize_session=False)
    )
    budgets.settle(session, job_id, charge)
    return Settlement(charge, fresh=True)


def settle(session: Session, job_id: str, cost: Decimal) -> Decimal:
    """``close`` returning only the amount charged (the first settlement's, if repeated)."""
    return close(session, job_id, cost).charged


def release(session: Session, job_id: str) -> Decimal:
    """Give a job's whole hold back (it never ran); a no-op if it was already settled."""
    return close(session, job_id, ZERO).charged


def charged(session: Session, job_id: str) -> Decimal:
    amount = session.execute(
        select(LedgerEntry.amount).where(LedgerEntry.job_id == job_id, LedgerEntry.kind == "settle")
    ).scalar_one_or_none()
    return ZERO if amount is None else q(-amount)


def refund(
    session: Session, job_id: str, credits: Decimal | None = None, note: str = ""
) -> Decimal:
    """Give back (part of) what a settled job was charged; at most once per job.

    Returns the amount refunded now, or the earlier refund's amount when one exists.
    """
    row = session.execute(
        select(LedgerEntry.account_id, LedgerEntry.amount).where(
            LedgerEntry.job_id == job_id, LedgerEntry.kind == "settle"
        )
    ).first()
    if row is None:
        raise ValueError(f"job {job_id} was not charged anything")
    account_id, paid = row[0], q(-row[1])
    amount = paid if credits is None else min(q(credits), paid)
    if amount <= 0:
        raise ValueError("a refund must be a positive number of credits")
    inserted = session.execute(
        insert_ignore(session, LedgerEntry)
        .values(account_id=account_id, job_id=job_id, kind="refund", amount=amount, hold=ZERO,
                note=note[:200])
        .returning(LedgerEntry.id)
    ).first()
    if inserted is None:
        prior = session.execute(
            select(LedgerEntry.amount).where(
                LedgerEntry.job_id == job_id, LedgerEntry.kind == "refund"
            )
        ).scalar_one()
        return q(prior)
    session.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(balance=Account.balance + amount)
        .execution_options(synchronize_session=False)
    )
    budgets.refund(session, job_id, amount)
    return amount


@dataclass(frozen=True)
class Entry:
    id: int
    kind: str
    amount: Decimal
    hold: Decimal
    job_id: str | None
    note: str
    created_at: datetime

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "amount": float(self.amount),
            "hold": float(self.hold),
            "job_id": self.job_id,
            "note": self.note,
            "created_at": as_utc(self.created_at).isoformat(),
        }


def entries(
    session: Session, account_id: int, limit: int = 20, before_id: int | None = None
) -> list[Entry]:
    """The account's ledger rows, newest first; ``before_id`` pages back (keyset)."""
    stmt = select(LedgerEntry).where(LedgerEntry.account_id == account_id)
    if before_id is not None:
        stmt = stmt.where(LedgerEntry.id < before_id)
    rows = session.execute(stmt.order_by(LedgerEntry.id.desc()).limit(limit)).scalars()
    return [
        Entry(r.id, r.kind, q(r.amount), q(r.hold), r.job_id, r.note, r.created_at) for r in rows
    ]


def audit(session: Session, account_id: int) -> tuple[Wallet, Wallet]:
    """(the wallet, the wallet the ledger adds up to); equal unless something is broken."""
    sums = session.execute(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0),
               func.coalesce(func.sum(LedgerEntry.hold), 0))
        .where(LedgerEntry.account_id == account_id)
    ).one()
    return wallet(session, account_id), Wallet(q(sums[0]), q(sums[1]))
