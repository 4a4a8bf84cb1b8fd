"""The credits ledger: grant, reserve, settle, release, refund; atomic, idempotent, never overdrawn.

Every change to a wallet is one ledger row written in the same transaction as the
wallet update, so ``balance == sum(amount)`` and ``reserved == sum(hold)`` always hold.
A (job, kind) pair is unique in the table, so idempotency is the database's job: a
redelivered task that settles again finds the job's ``settle`` row already there and
charges nothing. The accounts table refuses ``balance < reserved`` on its own.

Rows per job: ``reserve`` (hold +h); at the end one ``settle`` (amount -c, hold -h: the
charge is paid and the rest of the hold released; c = 0 for a job that never ran); later
at most one ``refund`` (amount +r).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Insert,
    Table,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared import budgets

# Re-exported: callers quantize credits through the ledger.
from shared.credits import QUANTUM as QUANTUM
from shared.credits import q as q
from shared.tables import CREDITS, Account, BudgetHold, LedgerEntry, as_utc

ZERO = Decimal(0)


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


# The hot path's statements are built once, with bind parameters, and run on the
# session's connection: per request that saves the ORM's statement building, which costs
# more than the database round trips themselves.
_A, _L = cast(Table, Account.__table__), cast(Table, LedgerEntry.__table__)
_HOLD = (
    update(_A)
    .where(_A.c.id == bindparam("account_id"),
           _A.c.balance - _A.c.reserved >= bindparam("hold", type_=CREDITS))
    .values(reserved=_A.c.reserved + bindparam("hold", type_=CREDITS))
)
_HOLD_ROW = insert(_L).values(
    account_id=bindparam("account_id"), job_id=bindparam("job_id"), kind="reserve",
    amount=ZERO, hold=bindparam("hold", type_=CREDITS), note="",
    created_at=bindparam("now", type_=_L.c.created_at.type),
)
_PAY = (
    update(_A)
    .where(_A.c.id == bindparam("account_id"))
    .values(balance=_A.c.balance - bindparam("charge", type_=CREDITS),
            reserved=_A.c.reserved - bindparam("hold", type_=CREDITS))
)
_closers: dict[str, Insert] = {}


def _closer(session: Session) -> Insert:
    """``settle`` row from the ``reserve`` row, charge capped in SQL, unless one exists."""
    dialect = session.get_bind().dialect.name
    if dialect not in _closers:
        held = _L.alias("held")
        price = bindparam("price", type_=CREDITS)
        charge = case((held.c.hold < price, held.c.hold), else_=price)
        holds_budget = (
            select(BudgetHold.job_id).where(BudgetHold.job_id == bindparam("b_job_id")).exists()
        )
        _closers[dialect] = (
            insert_ignore(session, _L)
            .from_select(
                ["account_id", "job_id", "kind", "amount", "hold", "note", "created_at"],
                select(held.c.account_id, held.c.job_id, literal("settle"), -charge,
                       -held.c.hold, literal(""), bindparam("now", type_=_L.c.created_at.type))
                .where(held.c.job_id == bindparam("b_job_id"), held.c.kind == "reserve"),
            )
            .returning(_L.c.account_id, _L.c.amount, _L.c.hold, holds_budget)
        )
    return _closers[dialect]


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


def wallet(db: Session | Connection, account_id: int) -> Wallet:
    row = db.execute(
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
    conn = session.connection()
    if conn.execute(_HOLD, {"account_id": account_id, "hold": hold}).rowcount != 1:
        raise InsufficientCredits(available(session, account_id), hold)
    conn.execute(_HOLD_ROW, {"account_id": account_id, "job_id": job_id, "hold": hold,
                             "now": datetime.now(UTC)})


def close(session: Session, job_id: str, cost: Decimal) -> Settlement:
    """Charge a job's actual cost (capped at its reservation) and release the rest, once.

    One statement writes the job's ``settle`` row from its ``reserve`` row (the charge is
    capped there, in SQL) unless a ``settle`` row exists: whichever settlement inserts it
    first wins, and any later one (a redelivered or concurrent task) inserts nothing and
    gets the first charge back with ``fresh=False``. Budgets are settled in the same step.
    """
    conn = session.connection()
    row = conn.execute(
        _closer(session),
        {"b_job_id": job_id, "price": max(ZERO, q(cost)), "now": datetime.now(UTC)},
    ).first()
    if row is None:
        # Settled before, or never reserved (then there is nothing to settle either).
        return Settlement(charged(session, job_id), fresh=not _reserved(session, job_id))
    account_id, charged_now, hold, holds_budget = row[0], q(-row[1]), q(-row[2]), row[3]
    conn.execute(_PAY, {"account_id": account_id, "charge": charged_now, "hold": hold})
    if holds_budget:
        budgets.settle(session, job_id, charged_now)
    return Settlement(charged_now, fresh=True)


def _reserved(session: Session, job_id: str) -> bool:
    return session.execute(
        select(LedgerEntry.id).where(LedgerEntry.job_id == job_id, LedgerEntry.kind == "reserve")
    ).first() is not None


def settle(session: Session, job_id: str, cost: Decimal) -> Decimal:
    """``close`` returning only the amount charged (the first settlement's, if repeated)."""
    return close(session, job_id, cost).charged


def release(session: Session, job_id: str) -> Decimal:
    """Give a job's whole hold back (it never ran); a no-op if it was already settled.

    Written as a ``settle`` row charging 0, so that the same guard stops a later settle."""
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
    if row is None or not row[1]:
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
