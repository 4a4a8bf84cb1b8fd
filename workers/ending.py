"""A job's end in the database: one write on either database, retried on its own.

The end of a job is written after its provider calls were made and paid for upstream:
when the write fails, only the write is tried again (``written``), never the job, whose
rerun would call, and pay, the providers a second time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import gevent
from sqlalchemy.exc import SQLAlchemyError

from shared import onestatement
from shared.db import autocommit, is_postgres, session_scope

log = logging.getLogger(__name__)

# Pauses between attempts at writing a job's end (about 16 s in all), then at writing
# its failure instead: a database that cannot take it meanwhile is down, not busy.
WRITE_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
GIVE_UP_BACKOFF_S = (0.5, 2.0)


def close(
    job_id: str, status: str, stored: dict[str, Any], error: dict[str, Any] | None,
    resolved_model: str | None, calls: list[dict[str, Any]], cost: Decimal,
) -> Decimal | None:
    """End the job, log its calls, settle; the charge, or None if it had already ended.

    One write on either database (``onestatement.close_job``): one statement in
    autocommit on PostgreSQL, its steps in one transaction on SQLite."""
    kwargs: dict[str, Any] = {
        "job_id": job_id, "status": status, "result": stored, "error": error,
        "resolved_model": resolved_model, "calls": calls, "price": cost,
    }
    if is_postgres():
        with autocommit() as conn:
            return onestatement.close_job(conn, **kwargs)
    return _in_a_transaction(kwargs)


def _in_a_transaction(kwargs: dict[str, Any]) -> Decimal | None:
    """SQLite: the steps of ``onestatement.close_job``, committed together."""
    with session_scope() as session:
        return onestatement.close_job(session.connection(), **kwargs)


def written(
    job_id: str, backoff: tuple[float, ...], write: Callable[[], Decimal | None],
) -> tuple[Decimal | None, bool]:
    """``write()``, tried again after each pause of ``backoff`` while the database fails;
    its answer and whether an attempt failed first. Raises the last failure."""
    for attempt, pause in enumerate((*backoff, None)):
        try:
            return write(), attempt > 0
        except SQLAlchemyError as exc:
            if pause is None:
                raise
            log.warning("writing the end of job %s failed (%s); again in %ss", job_id,
                        str(exc).splitlines()[0][:200], pause)
            gevent.sleep(pause)
    raise AssertionError("unreachable")
