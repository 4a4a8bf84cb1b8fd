"""The credits ledger: grant, reserve, settle; atomic, idempotent, never overdrawn.

Every change to a wallet is one ledger row written in the same transaction as the
wallet update, so ``balance == sum(amount)`` and ``reserved == sum(hold)`` always hold.
A (job, kind) pair is unique in the table: a redelivered task that settles again hits
the constraint and charges nothing.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.tables import Account, LedgerEntry

ZERO = Decimal(0)
QUANTUM = Decimal("0.000001")


def q(value: Decimal | int | float | str) -> Decimal:
    return Decimal(str(value)).quantize(QUANTUM)


class InsufficientCredits(Exception):
    def __init__(self, available: Decimal, required: Decimal) -> None:
        super().__init__(f"need {required} credits, {available} available")
        self.available = available
        self.required = required


def grant(session: Session, account_id: int, credits: Decimal, note: str = "") -> None:
    amount = q(credits)
    session.add(LedgerEntry(account_id=account_id, kind="grant", amount=amount, note=note))
    session.execute(
        update(Account).where(Account.id == account_id).values(balance=Account.balance + amount)
    )


def available(session: Session, account_id: int) -> Decimal:
    row = session.execute(
        select(Account.balance, Account.reserved).where(Account.id == account_id)
    ).one()
    return q(row[0] - row[1])


def reserve(session: Session, account_id: int, job_id: str, credits: Decimal) -> None:
    """Hold ``credits`` for a job, or raise ``InsufficientCredits``; one conditional UPDATE."""
    hold = q(credits)
    result = session.execute(
        update(Account)
        .where(Account.id == account_id, Account.balance - Account.reserved >= hold)
        .values(reserved=Account.reserved + hold)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise InsufficientCredits(available(session, account_id), hold)
    session.add(LedgerEntry(account_id=account_id, job_id=job_id, kind="reserve", hold=hold))


def settle(session: Session, job_id: str, cost: Decimal) -> Decimal:
    """Charge a job's actual cost (capped at its reservation) and release the hold.

    Idempotent: the second call for the same job finds the settle row and returns the
    amount charged the first time.
    """
    held = session.execute(
        select(LedgerEntry.account_id, LedgerEntry.hold).where(
            LedgerEntry.job_id == job_id, LedgerEntry.kind == "reserve"
        )
    ).first()
    if held is None:
        return ZERO
    account_id, hold = held[0], q(held[1])
    charge = min(q(cost), hold)
    try:
        with session.begin_nested():
            session.add(
                LedgerEntry(
                    account_id=account_id, job_id=job_id, kind="settle", amount=-charge, hold=-hold
                )
            )
            session.flush()
    except IntegrityError:
        prior = session.execute(
            select(LedgerEntry.amount).where(
                LedgerEntry.job_id == job_id, LedgerEntry.kind == "settle"
            )
        ).scalar_one()
        return q(-prior)
    session.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(balance=Account.balance - charge, reserved=Account.reserved - hold)
        .execution_options(synchronize_session=False)
    )
    return charge
