"""A job as its own account sees it: the row, or a 404 that tells nothing of others'."""

from __future__ import annotations

import uuid

from sqlalchemy.exc import SQLAlchemyError

from api.errors import not_found, unavailable
from shared.db import session_scope
from shared.tables import Job


def load_job(job_id: str, account_id: int) -> Job:
    # Job ids are UUIDs; anything else (a NUL byte PostgreSQL would refuse, say) is not one.
    try:
        uuid.UUID(job_id)
    except ValueError:
        raise not_found() from None
    try:
        with session_scope() as session:
            job = session.get(Job, job_id)
    except SQLAlchemyError as exc:
        raise unavailable("database") from exc
    # Another account's job is indistinguishable from a missing one.
    if job is None or job.account_id != account_id:
        raise not_found()
    return job
