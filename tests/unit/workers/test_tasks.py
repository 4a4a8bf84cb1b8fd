"""The job task never drops a job: busy leases and infrastructure errors are retried,
and only after the retries run out is the job given up (ended with an error)."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Retry
from sqlalchemy.exc import OperationalError

from workers import tasks
from workers.lease import JobBusy


def run_task(retries: int) -> None:
    task = tasks.run_job_task
    task.push_request(retries=retries, id="t", called_directly=False)
    try:
        task.run("job-1")
    finally:
        task.pop_request()


def test_database_error_is_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(job_id: str) -> None:
        raise OperationalError("SELECT 1", {}, Exception("too many clients"))

    monkeypatch.setattr(tasks, "run_job", boom)
    monkeypatch.setattr(tasks.run_job_task, "retry",
                        lambda **kw: Retry(when=kw["countdown"]))
    with pytest.raises(Retry) as first:
        run_task(0)
    with pytest.raises(Retry) as later:
        run_task(5)
    assert first.value.when < later.value.when <= 30


def test_busy_lease_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(job_id: str) -> None:
        raise JobBusy(job_id)

    monkeypatch.setattr(tasks, "run_job", busy)
    monkeypatch.setattr(tasks.run_job_task, "retry", lambda **kw: Retry(when=kw["countdown"]))
    with pytest.raises(Retry):
        run_task(50)


def test_gives_up_after_the_last_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    given_up: list[Any] = []

    def boom(job_id: str) -> None:
        raise OperationalError("SELECT 1", {}, Exception("db gone"))

    monkeypatch.setattr(tasks, "run_job", boom)
    monkeypatch.setattr(tasks, "give_up", lambda job_id, exc: given_up.append(job_id))
    with pytest.raises(OperationalError):
        run_task(tasks.INFRA_RETRIES)
    assert given_up == ["job-1"]
