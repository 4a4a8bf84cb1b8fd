"""A job's final event, as its worker announces it or as its database row still tells it
once the replay list is gone (expired, or lost with Redis)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from shared import events
from shared.tables import Job

FINAL_STATUSES = ("succeeded", "failed", "cancelled")


def final_event_for(
    job_id: str,
    status: str,
    result: dict[str, Any],
    error: dict[str, Any] | None,
    charged: Decimal,
    resolved_model: str | None,
) -> dict[str, Any]:
    kind = "done" if status != "failed" else "error"
    fields: dict[str, Any] = {"job_id": job_id, "status": status, **result}
    if error is not None:
        fields["error"] = error
    fields["credits_charged"] = float(charged)
    if resolved_model is not None:
        fields["resolved_model"] = resolved_model
    return events.final_event(kind, **fields)


def expired_event(job_id: str, status: str) -> dict[str, Any]:
    """The end of a job whose events are gone and whose answer is not kept: its status."""
    return events.final_event(
        "expired", job_id=job_id, status=status,
        message="the job's events are no longer kept; its answer was not stored",
    )


def from_row(job: Job) -> dict[str, Any] | None:
    """The final event of an ended job as its row has it; None while the job runs.

    A zero-retention job's row holds no request (and no content in its result): such a
    job gets ``expired_event``, its status only.
    """
    if job.status not in FINAL_STATUSES:
        return None
    if job.request is None:
        return expired_event(job.id, job.status)
    return final_event_for(job.id, job.status, job.result or {}, job.error,
                           job.credits_charged or Decimal(0), job.resolved_model)
