"""credits hardening, budgets, BYOK keys

Wallet check constraints, budget caps and counters per key and per session, sealed
provider keys, the BYOK providers a job was reserved with, and keyset-pagination indexes
for the ledger and the request log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 09:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CREDITS = sa.Numeric(precision=18, scale=6)


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_budget", CREDITS, nullable=True))
        batch_op.create_check_constraint("ck_accounts_reserved_nonneg", "reserved >= 0")
        batch_op.create_check_constraint("ck_accounts_covered", "balance >= reserved")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("budget", CREDITS, nullable=True))

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("byok", sa.JSON(), nullable=True))

    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_account_entry", ["account_id", "id"], unique=False)

    with op.batch_alter_table("request_log", schema=None) as batch_op:
        batch_op.create_index(
            "ix_request_log_account_entry", ["account_id", "id"], unique=False
        )

    op.create_table(
        "budgets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=10), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("limit_credits", CREDITS, nullable=True),
        sa.Column("spent", CREDITS, nullable=False),
        sa.Column("reserved", CREDITS, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("reserved >= 0", name="ck_budgets_reserved_nonneg"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "scope", "subject", name="uq_budgets_subject"),
    )
    op.create_table(
        "budget_holds",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("budget_id", sa.Integer(), nullable=False),
        sa.Column("amount", CREDITS, nullable=False),
        sa.Column("charged", CREDITS, nullable=True),
        sa.Column("refunded", CREDITS, nullable=False),
        sa.ForeignKeyConstraint(["budget_id"], ["budgets.id"]),
        sa.PrimaryKeyConstraint("job_id", "budget_id"),
    )
    op.create_table(
        "provider_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("sealed", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "provider", name="uq_provider_keys"),
    )


def downgrade() -> None:
    op.drop_table("provider_keys")
    op.drop_table("budget_holds")
    op.drop_table("budgets")
    with op.batch_alter_table("request_log", schema=None) as batch_op:
        batch_op.drop_index("ix_request_log_account_entry")
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_account_entry")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("byok")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("budget")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_constraint("ck_accounts_covered", type_="check")
        batch_op.drop_constraint("ck_accounts_reserved_nonneg", type_="check")
        batch_op.drop_column("session_budget")
