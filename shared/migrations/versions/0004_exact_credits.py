"""exact credits

Every credit column becomes a whole number of micro-credits (BIGINT): SQLite stored
NUMERIC(18, 6) as binary floating point, and sums of holds drifted (see shared.credits).
Values are scaled by 10^6 and rounded once, here; the check constraints compare the
scaled values just as they compared the old ones.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 12:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OLD = sa.Numeric(precision=18, scale=6)
NEW = sa.BigInteger()
# (table, column, nullable)
COLUMNS = [
    ("accounts", "balance", False),
    ("accounts", "reserved", False),
    ("accounts", "session_budget", True),
    ("api_keys", "budget", True),
    ("ledger", "amount", False),
    ("ledger", "hold", False),
    ("jobs", "credits_reserved", False),
    ("jobs", "credits_charged", True),
    ("request_log", "cost", False),
    ("budgets", "limit_credits", True),
    ("budgets", "spent", False),
    ("budgets", "reserved", False),
    ("budget_holds", "amount", False),
    ("budget_holds", "charged", True),
    ("budget_holds", "refunded", False),
]


def _tables() -> dict[str, list[tuple[str, bool]]]:
    out: dict[str, list[tuple[str, bool]]] = {}
    for table, column, nullable in COLUMNS:
        out.setdefault(table, []).append((column, nullable))
    return out


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _retype(table: str, changes: list[str]) -> None:
    """PostgreSQL: a table's columns in one ALTER, so that its checks (``balance >=
    reserved``) see every column at the new scale, never one scaled and one not."""
    op.execute(f"ALTER TABLE {table} " + ", ".join(f"ALTER COLUMN {c}" for c in changes))


def upgrade() -> None:
    for table, columns in _tables().items():
        if _sqlite():
            # Scaled while the column is still NUMERIC (whole values are stored as
            # integers), then retyped: the batch copy casts, and a cast would truncate.
            sets = ", ".join(f"{c} = CAST(ROUND({c} * 1000000) AS INTEGER)" for c, _ in columns)
            op.execute(f"UPDATE {table} SET {sets}")
            with op.batch_alter_table(table) as batch_op:
                for column, nullable in columns:
                    batch_op.alter_column(column, existing_type=OLD, type_=NEW,
                                          existing_nullable=nullable)
            continue
        _retype(table, [f"{c} TYPE BIGINT USING round({c} * 1000000)::bigint"
                         for c, _ in columns])


def downgrade() -> None:
    for table, columns in _tables().items():
        if _sqlite():
            with op.batch_alter_table(table) as batch_op:
                for column, nullable in columns:
                    batch_op.alter_column(column, existing_type=NEW, type_=OLD,
                                          existing_nullable=nullable)
            sets = ", ".join(f"{c} = {c} / 1000000.0" for c, _ in columns)
            op.execute(f"UPDATE {table} SET {sets}")
            continue
        _retype(table, [f"{c} TYPE NUMERIC(18, 6) USING {c}::numeric / 1000000"
                         for c, _ in columns])
