"""A job's final event rebuilt from its database row: the worker's event for a retained
job, its status only for a zero-retention one, nothing while it runs."""

from __future__ import annotations

from decimal import Decimal

from shared import events
from shared.finals import final_event_for, from_row
from shared.tables import Job


def row(**kw: object) -> Job:
    fields: dict[str, object] = dict(id="j1", account_id=1, kind="chat", status="succeeded",
                                     request={"messages": []},
                                     result={"full_content": "hello", "model": "m"},
                                     error=None, credits_charged=Decimal("1.5"),
                                     resolved_model="m")
    return Job(**{**fields, **kw})


def test_an_ended_job_gets_the_event_its_worker_sent() -> None:
    job = row()
    assert from_row(job) == final_event_for("j1", "succeeded", {"full_content": "hello",
                                                                "model": "m"},
                                            None, Decimal("1.5"), "m")
    failed = from_row(row(status="failed", result={}, error={"code": "x", "message": "y"},
                          credits_charged=Decimal(0), resolved_model=None))
    assert failed == events.final_event("error", job_id="j1", status="failed",
                                        error={"code": "x", "message": "y"},
                                        credits_charged=0.0)
    assert events.is_final(events.encode(failed))


def test_a_running_job_has_no_final_event() -> None:
    assert from_row(row(status="running", result=None, credits_charged=None)) is None
    assert from_row(row(status="queued", result=None, credits_charged=None)) is None


def test_a_zero_retention_job_gets_its_status_only() -> None:
    final = from_row(row(request=None, status="cancelled"))
    assert final is not None
    assert final["final"] is True and final["event"] == "expired"
    assert final["status"] == "cancelled" and final["job_id"] == "j1"
    assert set(final) == {"final", "event", "job_id", "status", "message"}
