"""Celery tasks: thin wrappers that take ids and call plain functions."""

from __future__ import annotations

from celery import Task

# Imported to register their job handlers (and the pipelines' Celery tasks).
from workers import blend, chat, compare, judge  # noqa: F401
from workers.app import celery
from workers.health import probe_all
from workers.jobs import run_job
from workers.lease import REFRESH_S, JobBusy
from workers.runtime import get_runtime


@celery.task(name="chorus.run_job", ignore_result=True, bind=True, max_retries=None)
def run_job_task(self: Task, job_id: str) -> None:
    try:
        run_job(job_id)
    except JobBusy as exc:
        raise self.retry(countdown=REFRESH_S, exc=exc) from exc


@celery.task(name="chorus.health_probe", ignore_result=True)
def health_probe_task() -> None:
    probe_all(get_runtime())
