"""Spending caps per API key and per ``session_id``, held and settled with the wallet.

A budget row counts what its subject has spent and holds. Reserving against it is one
conditional UPDATE (``spent + reserved + x <= cap``), in the same transaction as the
wallet hold, so concurrent requests cannot overrun a cap any more than the wallet. The
job's holds are recorded in ``budget_holds`` and settled with the wallet, by the steps
of ``ledger.settling``; a running job's extension (``shared.extension``) grows them with
the wallet's hold, within each cap.

Caps: a key's is ``api_keys.budget`` (set by the operator); a session's is its own
``limit_credits`` or else the account's ``session_budget``. Spending is counted from the
moment a cap applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.credits import q as _q
from shared.tables import CREDITS, Account, ApiKey, Budget, BudgetHold, ProviderKey

KEY = "key"
SESSION = "session"


class BudgetExceeded(Exception):
    def __init__(self, scope: str, limit: Decimal, used: Decimal, required: Decimal) -> None:
        super().__init__(f"{scope} budget: {used} of {limit} used, {required} more needed")
        self.scope = scope
        self.limit = limit
        self.used = used
        self.required = required

    @property
    def remaining(self) -> Decimal:
        return max(Decimal(0), self.limit - self.used)


@dataclass(frozen=True)
class Usage:
    limit: Decimal | None
    spent: Decimal
    reserved: Decimal

    def view(self) -> dict[str, Any]:
        remaining = None if self.limit is None else max(
            Decimal(0), self.limit - self.spent - self.reserved
        )
        return {
            "limit": None if self.limit is None else float(self.limit),
            "spent": float(self.spent),
            "reserved": float(self.reserved),
            "remaining": None if remaining is None else float(remaining),
        }


def _subject(account_id: int, scope: str, subject: str) -> ColumnElement[bool]:
    return and_(Budget.account_id == account_id, Budget.scope == scope, Budget.subject == subject)


def _ensure_row(session: Session, account_id: int, scope: str, subject: str) -> None:
    """Create the counter unless it exists (a concurrent request may create it first)."""
    try:
        with session.begin_nested():
            session.add(Budget(account_id=account_id, scope=scope, subject=subject,
                               spent=Decimal(0), reserved=Decimal(0)))
    except IntegrityError:
        pass


# Statements on a request's path are built once, with bind parameters (see shared.ledger).
_B, _H = cast(Table, Budget.__table__), cast(Table, BudgetHold.__table__)
_AMOUNT = bindparam("b_amount", type_=CREDITS)
_CAP = func.coalesce(_B.c.limit_credits, bindparam("b_default_limit", type_=CREDITS))
_MINE = and_(_B.c.account_id == bindparam("b_account_id"), _B.c.scope == bindparam("b_scope"),
             _B.c.subject == bindparam("b_subject"))
_TAKE = (
    update(_B)
    .where(_MINE, or_(_CAP.is_(None), _B.c.spent + _B.c.reserved + _AMOUNT <= _CAP))
    .values(reserved=_B.c.reserved + _AMOUNT)
    .returning(_B.c.id)
)
_TAKEN = insert(_H).values(job_id=bindparam("b_job_id"), budget_id=bindparam("b_budget_id"),
                           amount=_AMOUNT, refunded=0)
_STATE = select(_B.c.limit_credits, _B.c.spent, _B.c.reserved).where(_MINE)


def _hold(
    session: Session,
    account_id: int,
    scope: str,
    subject: str,
    job_id: str,
    amount: Decimal,
    default_limit: Decimal | None,
) -> None:
    """Hold ``amount`` on one budget if one applies; raise ``BudgetExceeded`` if it won't fit."""
    conn = session.connection()
    # Bind names differ from column names: SQLAlchemy reserves those in UPDATE/INSERT.
    params = {"b_account_id": account_id, "b_scope": scope, "b_subject": subject,
              "b_amount": amount, "b_default_limit": default_limit}
    for attempt in range(2):
        budget_id = conn.execute(_TAKE, params).scalar_one_or_none()
        if budget_id is not None:
            conn.execute(_TAKEN, {"b_job_id": job_id, "b_budget_id": budget_id,
                                     "b_amount": amount})
            return
        row = conn.execute(_STATE, params).first()
        if row is not None:
            limit = row[0] if row[0] is not None else default_limit
            assert limit is not None
            raise BudgetExceeded(scope, _q(limit), _q(row[1] + row[2]), amount)
        if default_limit is None or attempt:
            return
        # The first request under a default cap: create the counter, then hold on it.
        _ensure_row(session, account_id, scope, subject)


@dataclass(frozen=True)
class Terms:
    """What shapes a job's hold, read fresh in the reserving transaction (caches lag)."""

    key_budget: Decimal | None
    session_budget: Decimal | None
    # Providers the account brings its own key for: their calls cost it no tokens.
    own_providers: list[str]


_TERMS = (
    select(ApiKey.budget, Account.session_budget, ProviderKey.provider)
    .join(Account, Account.id == ApiKey.account_id)
    .outerjoin(ProviderKey, ProviderKey.account_id == Account.id)
    .where(ApiKey.id == bindparam("key_id"))
)


def terms(db: Session | Connection, key_id: int) -> Terms:
    """The key's cap, the account's session cap and its BYOK providers, in one round trip."""
    conn = db.connection() if isinstance(db, Session) else db
    # Built once and run on the connection: this is on every request's path.
    rows = conn.execute(_TERMS, {"key_id": key_id}).all()
    if not rows:
        return Terms(None, None, [])
    key_budget, session_budget = rows[0][0], rows[0][1]
    return Terms(
        None if key_budget is None else _q(key_budget),
        None if session_budget is None else _q(session_budget),
        sorted(r[2] for r in rows if r[2] is not None),
    )


def reserve(
    session: Session,
    terms: Terms,
    *,
    account_id: int,
    key_id: int,
    session_id: str | None,
    job_id: str,
    amount: Decimal,
) -> None:
    """Hold a job's reservation on its key's and its session's budgets (before the wallet)."""
    amount = _q(amount)
    if terms.key_budget is not None:
        _hold(session, account_id, KEY, str(key_id), job_id, amount, terms.key_budget)
    if session_id is not None:
        _hold(session, account_id, SESSION, session_id, job_id, amount, terms.session_budget)


def refund(session: Session, job_id: str, amount: Decimal) -> None:
    """A refunded job no longer counts that much against its budgets."""
    holds = session.execute(
        update(BudgetHold)
        .where(BudgetHold.job_id == job_id, BudgetHold.charged.is_not(None))
        .values(refunded=BudgetHold.refunded + amount)
        .returning(BudgetHold.budget_id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    for budget_id in holds:
        session.execute(
            update(Budget)
            .where(Budget.id == budget_id)
            .values(spent=Budget.spent - amount)
            .execution_options(synchronize_session=False)
        )


def usage(
    session: Session, account_id: int, scope: str, subject: str, default_limit: Decimal | None
) -> Usage:
    row = session.execute(
        select(Budget.limit_credits, Budget.spent, Budget.reserved)
        .where(_subject(account_id, scope, subject))
    ).first()
    if row is None:
        return Usage(default_limit, Decimal(0), Decimal(0))
    limit = row[0] if row[0] is not None else default_limit
    return Usage(None if limit is None else _q(limit), _q(row[1]), _q(row[2]))


def key_usage(session: Session, account_id: int, key_id: int) -> Usage:
    cap = session.execute(select(ApiKey.budget).where(ApiKey.id == key_id)).scalar_one()
    return usage(session, account_id, KEY, str(key_id), cap)


def session_default(session: Session, account_id: int) -> Decimal | None:
    value = session.execute(
        select(Account.session_budget).where(Account.id == account_id)
    ).scalar_one()
    return None if value is None else _q(value)


def set_session_default(session: Session, account_id: int, limit: Decimal | None) -> None:
    session.execute(
        update(Account).where(Account.id == account_id)
        .values(session_budget=None if limit is None else _q(limit))
        .execution_options(synchronize_session=False)
    )


def set_session_limit(
    session: Session, account_id: int, session_id: str, limit: Decimal | None
) -> None:
    """Give one session its own cap (None: fall back to the account's default)."""
    _ensure_row(session, account_id, SESSION, session_id)
    session.execute(
        update(Budget).where(_subject(account_id, SESSION, session_id))
        .values(limit_credits=None if limit is None else _q(limit))
        .execution_options(synchronize_session=False)
    )


def set_key_budget(session: Session, key_id: int, limit: Decimal | None) -> None:
    session.execute(
        update(ApiKey).where(ApiKey.id == key_id)
        .values(budget=None if limit is None else _q(limit))
        .execution_options(synchronize_session=False)
    )

