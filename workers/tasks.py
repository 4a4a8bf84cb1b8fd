"""Celery tasks: thin wrappers that take ids and call plain functions."""

from __future__ import annotations

import redis
from celery import Task
from sqlalchemy.exc import SQLAlchemyError

# Imported to register their job handlers (and the pipelines' Celery tasks).
from workers import blend, chat, compare, judge  # noqa: F401
from workers.app import celery
from workers.health import probe_all
from workers.jobs import give_up, run_job
from workers.lease import REFRESH_S, JobBusy
from workers.reconciler import run_pass
from workers.runtime import get_runtime

# Redis or the database failing under a job must not lose it: try again with backoff, and
# after that give up loudly (the client gets a final error event, the hold is released).
# A job whose provider calls were made never comes back here for its end: ``finish``
# retries that write on its own (workers/ending.py), so a rerun cannot call them twice.
INFRA_RETRIES = 8


@celery.task(name="chorus.run_job", ignore_result=True, bind=True, max_retries=None)
def run_job_task(self: Task, job_id: str) -> None:
    rt = get_runtime()
    try:
        # Handed back to the queue if still running at a stopping worker's drain deadline.
        with rt.drain.running(f"job {job_id}", rt.publisher.flush):
            run_job(job_id)
    except JobBusy as exc:
        raise self.retry(countdown=REFRESH_S, exc=exc) from exc
    except (SQLAlchemyError, redis.RedisError) as exc:
        tries = self.request.retries
        if tries >= INFRA_RETRIES:
            give_up(job_id, exc)
            raise
        raise self.retry(countdown=min(30.0, 0.25 * 2**tries), exc=exc) from exc


@celery.task(name="chorus.health_probe", ignore_result=True)
def health_probe_task() -> None:
    probe_all(get_runtime())


@celery.task(name="chorus.reconcile", ignore_result=True)
def reconcile_task() -> None:
    run_pass(get_runtime(), celery)
