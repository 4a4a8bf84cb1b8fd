"""Celery tasks: thin wrappers that take ids and call plain functions."""

from __future__ import annotations

from workers import chat  # noqa: F401  (registers the chat handler)
from workers.app import celery
from workers.jobs import run_job


@celery.task(name="chorus.run_job", ignore_result=True)
def run_job_task(job_id: str) -> None:
    run_job(job_id)
