"""Jobs the broker lost are found from the database and put back: the job's row is its
durable record, a broker message only the call that wakes a worker up for it.

A worker killed between taking a message and recording it as unacknowledged, or a Redis
that restarts empty, loses messages; their jobs would stay ``queued`` (or ``running``)
forever with their credits held. A pass, on Celery beat and at each worker's start, one
at a time across all processes, reads the jobs not yet ended and, for each that is older
than a grace and has no live delivery (a message in its queue or unacknowledged, or its
lease held), either sends its task again, on its own queue, or, when its request is gone
(a zero-retention request lived only in Redis), ends it failed. A job past its deadline
ends failed whatever its state. Every such end releases the job's hold and publishes its
final event, once: ``workers.jobs.finish`` guards on the job's status.

A message is invisible for a moment while a worker takes it (between the queue and the
unacknowledged record), so a job is acted on only once two passes, ``CONFIRM_S`` apart,
both found it without a delivery. Sending a task twice is safe anyway: ``run_job`` takes
the job's lease before anything else and its claim accepts only a job not yet ended.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import Celery
from sqlalchemy import Text, cast, or_, select

from shared import events
from shared.db import session_scope
from shared.settings import Settings
from shared.tables import Job, as_utc
from workers.jobs import JobSpec, Outcome, finish
from workers.messages import CHUNK, held
from workers.runtime import Runtime

log = logging.getLogger(__name__)

LOCK_KEY = "chorus:reconcile:lock"
SUSPECTS_KEY = "chorus:reconcile:suspects"
# Far longer than a message is ever in flight between a queue and its unacknowledged
# record (milliseconds), far shorter than a pass's interval.
CONFIRM_S = 2.0
OPEN = ("queued", "running")
QUEUES = ("interactive", "batch")


def lease_key(job_id: str) -> str:
    """The key ``workers.lease.Lease`` holds while a worker runs the job."""
    return f"chorus:job:{job_id}:lease"


@dataclass(frozen=True)
class OpenJob:
    id: str
    kind: str
    status: str
    queue: str
    account_id: int
    zero_retention: bool  # its request is not in the database, only in its ticket
    created_at: datetime


@dataclass(frozen=True)
class Seen:
    """What the broker and Redis say of the open jobs."""

    delivered: frozenset[str]  # a message names it: queued, or taken and not acknowledged
    leased: frozenset[str]  # a worker is running it
    ticketed: frozenset[str]  # its ticket (the request a zero-retention job needs) is there


@dataclass
class Plan:
    orphans: list[OpenJob] = field(default_factory=list)  # to send again
    lost: list[OpenJob] = field(default_factory=list)  # cannot be rebuilt: end failed
    overdue: list[OpenJob] = field(default_factory=list)  # past their deadline: end failed


@dataclass(frozen=True)
class Report:
    examined: int
    requeued: list[str]
    lost: list[str]
    overdue: list[str]
    took_ms: float


def open_jobs(now: datetime, grace_s: float, database_url: str | None = None) -> list[OpenJob]:
    """The jobs not yet ended that were created more than ``grace_s`` ago, oldest first.

    One indexed read (``ix_jobs_open``); the requests themselves are not read."""
    cutoff = now - timedelta(seconds=grace_s)
    # The ORM stores a missing request as JSON null; the one-statement hold as SQL NULL.
    zero_retention = or_(Job.request.is_(None), cast(Job.request, Text) == "null")
    stmt = (
        select(Job.id, Job.kind, Job.status, Job.queue, Job.account_id, zero_retention,
               Job.created_at)
        .where(Job.status.in_(OPEN), Job.created_at < cutoff)
        .order_by(Job.created_at)
    )
    with session_scope(database_url) as session:
        rows = session.execute(stmt).all()
    return [OpenJob(r[0], r[1], r[2], r[3], r[4], bool(r[5]), as_utc(r[6])) for r in rows]


def _chunks(items: list[str], size: int = CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def look(app: Celery, client: redis.Redis, jobs: list[OpenJob]) -> Seen:
    """Read the broker's queues and unacknowledged deliveries, then the leases and tickets
    of the jobs no message names (one round trip per ``CHUNK`` of them). Nothing is read
    when there are no jobs."""
    if not jobs:
        return Seen(frozenset(), frozenset(), frozenset())
    delivered = held(app, QUEUES, [j.id for j in jobs])
    rest = [j.id for j in jobs if j.id not in delivered]
    leased: set[str] = set()
    ticketed: set[str] = set()
    for part in _chunks(rest):
        with client.pipeline(transaction=False) as pipe:
            for job_id in part:
                pipe.exists(lease_key(job_id))
                pipe.exists(events.request_key(job_id))
            replies = pipe.execute()
        for n, job_id in enumerate(part):
            if replies[2 * n]:
                leased.add(job_id)
            if replies[2 * n + 1]:
                ticketed.add(job_id)
    return Seen(frozenset(delivered), frozenset(leased), frozenset(ticketed))


def deadline_s(settings: Settings, queue: str) -> float:
    return settings.batch_job_deadline_s if queue == "batch" else settings.job_deadline_s


def decide(jobs: Iterable[OpenJob], seen: Seen, now: datetime, settings: Settings) -> Plan:
    """What a pass does with each open job (the caller has left out those inside the grace).

    Past its deadline: end it. A message or a lease: leave it to them (a compare, blend
    or judge job's pipeline sends messages naming the job from stage to stage; a state
    hash with none of them left is a pipeline that will never advance). Otherwise send it
    again, unless its request is gone with Redis."""
    plan = Plan()
    for job in jobs:
        if (now - job.created_at).total_seconds() > deadline_s(settings, job.queue):
            plan.overdue.append(job)
        elif job.id in seen.delivered or job.id in seen.leased:
            continue
        elif job.zero_retention and job.id not in seen.ticketed:
            plan.lost.append(job)
        else:
            plan.orphans.append(job)
    return plan


def confirm(client: redis.Redis, found: list[OpenJob], now: float) -> list[OpenJob]:
    """Those of ``found`` that an earlier pass, at least ``CONFIRM_S`` ago, found too; the
    rest are remembered for the next pass (one round trip)."""
    with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(SUSPECTS_KEY)
        pipe.delete(SUSPECTS_KEY)
        before_raw, _ = pipe.execute()
    before = {k.decode(): float(v) for k, v in before_raw.items()}
    ready = [j for j in found if j.id in before and now - before[j.id] >= CONFIRM_S]
    ready_ids = {j.id for j in ready}
    later = {j.id: before.get(j.id, now) for j in found if j.id not in ready_ids}
    if later:
        with client.pipeline(transaction=True) as pipe:
            pipe.hset(SUSPECTS_KEY, items=[x for pair in later.items() for x in pair])
            pipe.expire(SUSPECTS_KEY, 3600)
            pipe.execute()
    return ready


def requeue(app: Celery, job: OpenJob) -> None:
    """Send the job's task again, on its own queue, as the API first sent it."""
    app.send_task("chorus.run_job", args=[job.id], queue=job.queue, ignore_result=True,
                  task_id=job.id, root_id=job.id, parent_id=None)


LOST = {"code": "lost", "http_status": 503,
        "message": "the job's request was lost before a worker could run it (a "
                   "zero-retention request is kept only until a worker takes it); nothing "
                   "was charged for it"}


def overdue_error(limit_s: float) -> dict[str, Any]:
    return {"code": "timeout", "http_status": 504,
            "message": f"the job did not end within {limit_s:g} s and was stopped; nothing "
                       "was charged for it"}


def end(rt: Runtime, job: OpenJob, error: dict[str, Any]) -> None:
    """End the job failed, charging nothing and releasing its hold, and publish its final
    event; a job that ended meanwhile is left as it is. A worker still on it is told to
    stop, as a cancel tells it."""
    spec = JobSpec(job.id, job.kind, job.account_id, {}, job.zero_retention)
    finish(spec, Outcome("failed", error=error), rt)
    with rt.redis.pipeline(transaction=False) as pipe:
        pipe.set(events.cancel_key(job.id), "1", ex=3600)
        pipe.publish(events.CANCELS_CHANNEL, job.id)
        pipe.execute()


@contextmanager
def _lock(client: redis.Redis, ttl_s: int) -> Iterator[bool]:
    """One pass at a time across every process; the TTL frees it if its holder dies."""
    token = uuid.uuid4().hex
    taken = bool(client.set(LOCK_KEY, token, nx=True, ex=ttl_s))
    try:
        yield taken
    finally:
        if taken:
            client.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                        "return redis.call('DEL', KEYS[1]) end return 0", 1, LOCK_KEY, token)


def _end_overdue(rt: Runtime, job: OpenJob, *, limit: float) -> None:
    end(rt, job, overdue_error(limit))


def _each(job: OpenJob, action: Callable[[OpenJob], object]) -> None:
    """One job's failure (the database or the broker briefly gone) must not hold back the
    others; the next pass finds it again."""
    try:
        action(job)
    except Exception:
        log.exception("reconciling job %s failed", job.id)


def run_pass(rt: Runtime, app: Celery) -> Report | None:
    """One pass; None if another process is running one."""
    settings = rt.settings
    ttl = int(max(60.0, 6 * settings.reconcile_s))
    with _lock(rt.redis, ttl) as taken:
        if not taken:
            return None
        started = time.perf_counter()
        now = datetime.now(UTC)
        jobs = open_jobs(now, settings.reconcile_grace_s)
        plan = decide(jobs, look(app, rt.redis, jobs), now, settings)
        ready = confirm(rt.redis, [*plan.orphans, *plan.lost], time.time())
        ready_ids = {j.id for j in ready}
        requeued = [j for j in plan.orphans if j.id in ready_ids]
        lost = [j for j in plan.lost if j.id in ready_ids]
        for job in requeued:
            log.warning("job %s (%s, %s) has no delivery; sending it again on %s",
                        job.id, job.kind, job.status, job.queue)
            _each(job, lambda j: requeue(app, j))
        for job in lost:
            log.error("job %s lost its request with Redis; ending it failed", job.id)
            _each(job, lambda j: end(rt, j, LOST))
        for job in plan.overdue:
            limit = deadline_s(settings, job.queue)
            log.error("job %s is past its %g s deadline; ending it failed", job.id, limit)
            _each(job, functools.partial(_end_overdue, rt, limit=limit))
        report = Report(len(jobs), [j.id for j in requeued], [j.id for j in lost],
                        [j.id for j in plan.overdue], (time.perf_counter() - started) * 1000)
    if report.requeued or report.lost or report.overdue:
        log.warning("reconcile: %s", json.dumps(report.__dict__))
    return report

