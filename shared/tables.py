"""SQLAlchemy tables: accounts, keys, the credits ledger, budgets, BYOK keys, jobs, batches,
idempotency keys, request log."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.credits import Credits

# Whole micro-credits in the database, Decimal credits in Python (see shared.credits).
CREDITS = Credits()
_OPEN = text("status IN ('queued', 'running')")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; every stored one is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    # The database itself refuses an overdrawn wallet, whatever the code above it does.
    __table_args__ = (
        CheckConstraint("reserved >= 0", name="ck_accounts_reserved_nonneg"),
        CheckConstraint("balance >= reserved", name="ck_accounts_covered"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    tier: Mapped[str] = mapped_column(String(10), default="free")
    # balance = sum of the ledger's amounts; reserved = sum of its holds.
    balance: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0))
    reserved: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0))
    zero_retention: Mapped[bool] = mapped_column(Boolean, default=False)
    # Default cap on what one ``session_id`` may spend (None: sessions are not capped).
    session_budget: Mapped[Decimal | None] = mapped_column(CREDITS, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100), default="")
    # Cap on what this key may spend in total, set by the operator (None: no cap).
    budget: Mapped[Decimal | None] = mapped_column(CREDITS, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LedgerEntry(Base):
    """Append-only, but for a running job's ``reserve`` row, whose ``hold`` its extensions
    grow. ``amount`` moves the balance, ``hold`` moves the reservation."""

    __tablename__ = "ledger"
    __table_args__ = (
        UniqueConstraint("job_id", "kind", name="uq_ledger_job_kind"),
        Index("ix_ledger_account_entry", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0))
    hold: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0))
    note: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_account_created", "account_id", "created_at"),
        # The jobs not yet ended, for the reconciler (workers/reconciler.py).
        Index("ix_jobs_open", "created_at", postgresql_where=_OPEN, sqlite_where=_OPEN),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # The broker queue its task goes to (interactive or batch): where a lost one goes back.
    queue: Mapped[str] = mapped_column(String(16), default="interactive",
                                       server_default="interactive")
    # None for zero-retention accounts: the request then lives only in Redis, briefly.
    request: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    resolved_model: Mapped[str | None] = mapped_column(String(100), nullable=True)
    credits_reserved: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0))
    # Providers whose calls ran on the account's own key when the hold was computed.
    byok: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    credits_charged: Mapped[Decimal | None] = mapped_column(CREDITS, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Batch(Base):
    """Many jobs submitted at once (JSONL in and out); its items say which."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_account_created", "account_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    total: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)


class BatchItem(Base):
    """One line of a batch: its job, or why it has none (its hold was refused)."""

    __tablename__ = "batch_items"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key``: the job (or batch) its first request made, stored in
    the transaction that made it, and the hash of that request's canonical body."""

    __tablename__ = "idempotency_keys"
    # Each insert deletes the oldest expired keys: found by this index.
    __table_args__ = (Index("ix_idempotency_keys_created", "created_at"),)

    # The primary key is the constraint that decides between two requests racing on a key.
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(32))
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RequestLog(Base):
    """One row per provider call: the metadata kept even for zero-retention accounts."""

    __tablename__ = "request_log"
    __table_args__ = (
        Index("ix_request_log_account_created", "account_id", "created_at"),
        Index("ix_request_log_account_entry", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    model: Mapped[str] = mapped_column(String(100))
    provider: Mapped[str] = mapped_column(String(50))
    role: Mapped[str] = mapped_column(String(20), default="")
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    ttft_ms: Mapped[float | None] = mapped_column(Numeric(12, 3), nullable=True)
    latency_ms: Mapped[float] = mapped_column(Numeric(12, 3), default=0)
    status: Mapped[str] = mapped_column(String(16))
    cost: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Budget(Base):
    """What a key or a session has spent and holds, against its cap.

    ``scope`` is ``key`` (subject: the key id; the cap is ``api_keys.budget``) or ``session``
    (subject: the session id; the cap is ``limit_credits`` or the account's default).
    """

    __tablename__ = "budgets"
    __table_args__ = (
        UniqueConstraint("account_id", "scope", "subject", name="uq_budgets_subject"),
        CheckConstraint("reserved >= 0", name="ck_budgets_reserved_nonneg"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    scope: Mapped[str] = mapped_column(String(10))
    subject: Mapped[str] = mapped_column(String(200))
    limit_credits: Mapped[Decimal | None] = mapped_column(CREDITS, nullable=True)
    spent: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0))
    reserved: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BudgetHold(Base):
    """A job's hold on one budget; ``charged`` is set once, when the job settles."""

    __tablename__ = "budget_holds"

    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id"), primary_key=True)
    amount: Mapped[Decimal] = mapped_column(CREDITS)
    charged: Mapped[Decimal | None] = mapped_column(CREDITS, nullable=True)
    refunded: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0))


class ProviderKey(Base):
    """An account's own provider key (BYOK), sealed with the server's secret; never clear."""

    __tablename__ = "provider_keys"
    __table_args__ = (UniqueConstraint("account_id", "provider", name="uq_provider_keys"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    provider: Mapped[str] = mapped_column(String(50))
    sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
