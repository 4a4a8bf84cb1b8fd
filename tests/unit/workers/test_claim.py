"""The claim statement on PostgreSQL: moves a queued job to running, returns its request,
leaves a final job alone, and commits without waiting for the disk only for itself."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select

from shared import dbapi, keys
from shared.db import autocommit, session_scope
from shared.tables import ApiKey, Job
from workers.jobs import _CLAIM_PG


def job(pg_url: str, status: str) -> str:
    job_id = str(uuid.uuid4())
    with session_scope(pg_url) as s:
        keys.create_key(s, f"acct-{uuid.uuid4().hex[:8]}", credits=Decimal(10))
        key = s.execute(select(ApiKey).order_by(ApiKey.id.desc()).limit(1)).scalar_one()
        s.add(Job(id=job_id, account_id=key.account_id, key_id=key.id, kind="chat",
                  status=status, request={"model": "m"}, credits_reserved=Decimal(1)))
    return job_id


def test_a_queued_job_is_claimed_and_the_session_keeps_durable_commits(pg_url: str) -> None:
    job_id = job(pg_url, "queued")
    with autocommit(pg_url) as conn:
        row = dbapi.fetch_one(conn, _CLAIM_PG, {"job_id": job_id, "now": datetime.now(UTC)})
        assert row is not None and row[0] == "chat" and row[2] == {"model": "m"}
        # set_config(..., true) lasted only for the claim's own transaction.
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    with session_scope(pg_url) as s:
        claimed = s.get(Job, job_id)
        assert claimed is not None and claimed.status == "running"
        assert claimed.started_at is not None


def test_a_final_job_is_not_claimed(pg_url: str) -> None:
    job_id = job(pg_url, "succeeded")
    with autocommit(pg_url) as conn:
        row = dbapi.fetch_one(conn, _CLAIM_PG, {"job_id": job_id, "now": datetime.now(UTC)})
    assert row is None
