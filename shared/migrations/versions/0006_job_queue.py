"""job queue and the open-jobs index

Each job records the queue it runs on, so a job whose broker message was lost can be
put back where it belongs; a partial index on the jobs not yet ended lets the
reconciler find them without reading the whole table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 12:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OPEN = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queue", sa.String(length=16), nullable=False,
                                      server_default="interactive"))
    op.create_index("ix_jobs_open", "jobs", ["created_at"], postgresql_where=OPEN,
                    sqlite_where=OPEN)


def downgrade() -> None:
    op.drop_index("ix_jobs_open", table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("queue")
