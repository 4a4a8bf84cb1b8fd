"""The credits ledger: grant, reserve, settle, release, refund; atomic, idempotent, never overdrawn.

Every change to a wallet is one ledger row written in the same transaction as the
wallet update, so ``balance == sum(amount)`` and ``reserved == sum(hold)`` always hold.
A (job, kind) pair is unique in the table, so idempotency is the database's job: a
redelivered task that settles again finds the job's ``settle`` row already there and
charges nothing. The accounts table refuses ``balance < reserved`` on its own.

Rows per job: ``reserve`` (hold +h); at the end one ``settle`` (amount -c, hold -h: the
charge is paid and the rest of the hold released; c = 0 for a job that never ran); later
at most one ``refund`` (amount +r). Rows are never deleted and only the ``reserve`` row
changes: while the job runs, an extension (``shared.extension``) adds to its hold, in the
statement that adds as much to the wallet's ``reserved`` and the job's
``credits_reserved``; the settlement releases the hold as it then stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Insert,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared import budgets, steps

# Re-exported: callers quantize credits through the ledger.
from shared.credits import QUANTUM as QUANTUM
from shared.credits import from_micros, micros
from shared.credits import q as q
from shared.tables import Account, LedgerEntry, as_utc

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


# What a hold and a settlement write, defined once (``shared.steps``): ``reserve`` and
# ``close`` below run them on either database, and ``shared.onestatement`` joins the
# same steps into its one-statement open and close of a job. Raw SQL: credits are the
# columns' micro-credits here (``shared.credits``).
RESERVED = steps.Step("reserve", """
    SELECT account_id, hold FROM ledger WHERE job_id = :job_id AND kind = 'reserve'
""", ("account_id", "hold"))


def holding(guard: str = "") -> tuple[steps.Step, ...]:
    """The wallet's conditional hold of ``:hold`` and its ``reserve`` row; ``guard`` (``AND
    …``) narrows the condition. Under concurrency the row lock orders the updates and
    each re-checks the condition against the committed balance."""
    return (
        steps.Step("held", f"""
    UPDATE accounts SET reserved = reserved + :hold
    WHERE id = :account_id AND balance - reserved >= :hold{guard}
    RETURNING id
""", ("id",)),
        steps.Step("entry", """
    INSERT INTO ledger (account_id, job_id, kind, amount, hold, note, created_at)
    SELECT id, :job_id, 'reserve', 0, :hold, '', :now FROM {held}
"""),
    )


def settling(charged: str) -> tuple[steps.Step, ...]:
    """The ``settle`` row (the charge paid, the whole hold released) from the ``reserve``
    step and the step named ``charged`` (its ``credits_charged`` and the ``hold`` to
    release), unless the job has one; then the wallet and the job's budgets, from the row
    written (none: nothing)."""
    return (
        steps.Step("settled", f"""
    INSERT INTO ledger (account_id, job_id, kind, amount, hold, note, created_at)
    SELECT r.account_id, :job_id, 'settle', -e.credits_charged, -e.hold, '', :now
    FROM {{reserve}} r, {{{charged}}} e WHERE true
    ON CONFLICT DO NOTHING
    RETURNING account_id, amount, hold
""", ("account_id", "amount", "hold")),
        steps.Step("paid", """
    UPDATE accounts SET balance = accounts.balance + s.amount,
        reserved = accounts.reserved + s.hold
    FROM {settled} s WHERE accounts.id = s.account_id
"""),
        steps.Step("holds", """
    UPDATE budget_holds SET charged = -s.amount
    FROM {settled} s WHERE budget_holds.job_id = :job_id AND budget_holds.charged IS NULL
    RETURNING budget_holds.budget_id, budget_holds.amount, budget_holds.charged
""", ("budget_id", "amount", "charged")),
        steps.Step("spent", """
    UPDATE budgets SET reserved = budgets.reserved - h.amount,
        spent = budgets.spent + h.charged
    FROM {holds} h WHERE budgets.id = h.budget_id
"""),
    )


# The charge: the price capped at the hold (``r``, the ``reserve`` step).
CAPPED = "CASE WHEN r.hold < :price THEN r.hold ELSE :price END"
NOW = bindparam("now", type_=DateTime(timezone=True))
_RESERVE = steps.Write(holding(), answer="SELECT count(*) FROM {held}", binds=(NOW,))
_CLOSE = steps.Write((RESERVED, steps.Step("charged", f"""
    SELECT {CAPPED} AS credits_charged, r.hold AS hold FROM {{reserve}} r
""", ("credits_charged", "hold")), *settling("charged")), answer="SELECT amount FROM {settled}",
    binds=(NOW,))


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
    row = _RESERVE.run(session.connection(), {"account_id": account_id, "job_id": job_id,
                                              "hold": micros(hold), "now": datetime.now(UTC)})
    if row is None or not row[0]:
        raise InsufficientCredits(available(session, account_id), hold)


def close(session: Session, job_id: str, cost: Decimal) -> Settlement:
    """Charge a job's actual cost (capped at its reservation) and release the rest, once.

    One write (one statement on PostgreSQL) adds the job's ``settle`` row from its
    ``reserve`` row unless a ``settle`` row exists, and settles the wallet and budgets
    from the row it added: whichever settlement inserts it first wins, and any later one
    (a redelivered or concurrent task) inserts nothing and gets the first charge back
    with ``fresh=False``.
    """
    row = _CLOSE.run(session.connection(), {"job_id": job_id, "price": micros(max(ZERO, cost)),
                                            "now": datetime.now(UTC)})
    if row is None:
        # Settled before, or never reserved (then there is nothing to settle either).
        return Settlement(charged(session, job_id), fresh=not _reserved(session, job_id))
    return Settlement(-from_micros(row[0]), fresh=True)


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
