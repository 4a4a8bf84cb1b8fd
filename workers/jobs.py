"""A job's life on a worker: claim it, run its handler, settle, publish the final event."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import gevent
from sqlalchemy import Table, bindparam, text, update
from sqlalchemy.exc import SQLAlchemyError

from shared import byok, dbapi, events
from shared.db import autocommit, is_postgres, session_scope
from shared.finals import FINAL_STATUSES as FINAL
from shared.finals import final_event_for
from shared.pricing import BASE_CREDITS
from shared.tables import Job
from workers import ending
from workers.calls import CallResult, JobContext
from workers.lease import JobBusy, Lease
from workers.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)

UNRECORDED = {"code": "unavailable", "message": "the job's result could not be recorded; "
              "nothing was charged", "http_status": 503}
GAVE_UP = {"code": "unavailable", "message": "a dependency of Chorus failed; nothing was "
           "charged", "http_status": 503}
CONTENT_FIELDS = ("full_content", "content", "tool_calls", "answers", "results", "summary_text",
                  "scores")


@dataclass
class JobSpec:
    id: str
    kind: str
    account_id: int
    body: dict[str, Any]
    zero_retention: bool
    # Providers whose calls run on the account's own key (names only; keys load in run_job).
    byok: list[str] = field(default_factory=list)
    # The cancel flag was already up when the job was claimed.
    cancelled: bool = False


@dataclass
class Outcome:
    status: str
    result: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    calls: list[CallResult] = field(default_factory=list)
    resolved_model: str | None = None


# A handler returns None when it handed the job to a pipeline whose last task finishes it.
Handler = Callable[[JobContext, JobSpec], Outcome | None]
HANDLERS: dict[str, Handler] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn

    return register


# One statement, so one round trip in autocommit; Core and built once, not the ORM's bulk
# update: this is on every job's path to its first token.
_JOBS = cast(Table, Job.__table__)
_CLAIM = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.status.in_(("queued", "running")))
    .values(status="running", started_at=bindparam("now", type_=_JOBS.c.started_at.type))
    .returning(_JOBS.c.kind, _JOBS.c.account_id, _JOBS.c.request, _JOBS.c.byok)
)
# PostgreSQL: the same, run on the DBAPI cursor (see shared.dbapi). It need not flush a
# claim to disk before answering: a claim lost in a crash leaves the job queued, which the
# next claim of its redelivered task accepts as well.
_CLAIM_PG = dbapi.compiled(text("""
UPDATE jobs SET status = 'running', started_at = :now
WHERE id = :job_id AND status IN ('queued', 'running')
  AND set_config('synchronous_commit', 'off', true) IS NOT NULL
RETURNING kind, account_id, request, byok
"""))


@dataclass(frozen=True)
class Known:
    """What Redis knows of a job, read in the round trip that takes its lease."""

    had_events: bool  # a worker died mid-job: its clients saw part of an answer
    cancel: bool
    stored_request: bytes | None  # the job's ticket (see api.submit), if it is there


class Unclaimed(Exception):
    """A job started before its claim came back was not ours to run (it had ended)."""


class ClaimFailed(Exception):
    """The claim of a job started before it came back failed (the database is down)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def ticket_spec(job_id: str, known: Known) -> JobSpec | None:
    """The job as the API left it in Redis for the worker, if it did (see api.submit)."""
    doc = json.loads(known.stored_request) if known.stored_request else None
    if not isinstance(doc, dict) or "kind" not in doc or "body" not in doc:
        return None  # none, or an older API's zero-retention request: the body alone
    return JobSpec(job_id, str(doc["kind"]), int(doc["account_id"]), doc["body"],
                   bool(doc.get("zero_retention")), list(doc.get("byok") or []),
                   cancelled=known.cancel)


def claim(job_id: str, rt: Runtime, known: Known) -> JobSpec | None:
    """Move the job to running; None if it is already final (a redelivered task).

    One UPDATE ... RETURNING on the hot path. A job whose request is not in the database
    belongs to a zero-retention account: its request waits in Redis instead.
    """
    params = {"job_id": job_id, "now": datetime.now(UTC)}
    with autocommit() as conn:
        if is_postgres():
            row = dbapi.fetch_one(conn, _CLAIM_PG, params)
        else:
            row = conn.execute(_CLAIM, params).first()
    if row is None:
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job is None:
                log.warning("job %s does not exist", job_id)
            else:
                _republish_final(job, rt)
        return None
    kind, account_id, body, own = row
    zero_retention = body is None
    if zero_retention:
        ticket = ticket_spec(job_id, known)
        # Without a ticket: an older API stored a zero-retention request alone.
        body = ticket.body if ticket is not None else json.loads(known.stored_request or "{}")
    if known.had_events:
        # A worker died mid-job: tell clients the answer restarts from scratch.
        rt.publisher.publish(job_id, {"event": "retry", "reason": "worker lost"})
    return JobSpec(job_id, kind, account_id, body, zero_retention, own or [],
                   cancelled=known.cancel)


def load_own_keys(account_id: int, providers: list[str], rt: Runtime) -> dict[str, str]:
    """Provider -> the account's clear key, for the providers the job's hold left out.

    Decrypted here, in the worker, and kept only in memory; ``ByokError`` if one is gone.
    """
    if not providers:
        return {}
    with session_scope() as session:
        return byok.load(session, rt.settings.secret_key, account_id, providers)


def job_context(spec: JobSpec, rt: Runtime) -> tuple[JobContext, Outcome | None]:
    """The job's context with its own provider keys, or a failed outcome if they are gone."""
    try:
        own = load_own_keys(spec.account_id, spec.byok, rt)
    except byok.ByokError as exc:
        error = {"code": "byok_unavailable", "message": str(exc)}
        return JobContext(spec.id, spec.account_id, rt), Outcome("failed", error=error)
    return JobContext(spec.id, spec.account_id, rt, own_keys=own), None


def _republish_final(job: Job, rt: Runtime) -> None:
    """A worker that died between commit and publish left no final event: write it now."""
    last = rt.redis.lrange(events.events_key(job.id), -1, -1)
    if last and events.is_final(last[0].decode() if isinstance(last[0], bytes) else last[0]):
        return
    rt.publisher.publish(job.id, final_event_for(job.id, job.status, job.result or {},
                                                 job.error, job.credits_charged or Decimal(0),
                                                 job.resolved_model))
    rt.publisher.flush()


def charge_for(kind: str, outcome: Outcome) -> Decimal:
    tokens = sum((c.cost for c in outcome.calls), Decimal(0))
    # Failed and cancelled jobs pay only for the tokens produced, not the base fee.
    base = BASE_CREDITS.get(kind, Decimal(1)) if outcome.status == "succeeded" else Decimal(0)
    return tokens + base


def finish(spec: JobSpec, outcome: Outcome, rt: Runtime, lease: Lease | None = None) -> None:
    """Settle, store and announce the job's end, once.

    The status change is the guard: a second run of the same job (a redelivered task
    racing the first) finds it final and writes, charges and publishes nothing. The
    job's ticket (and ``lease``) go in the same round trip as its final event.

    The provider calls are made and their outcome is kept: a write that fails is retried
    here, on its own, never by running the job (and calling the providers) again. When it
    keeps failing, the job ends failed with its hold released; when even that cannot be
    written, it stays running for the reconciler (``give_up``), and nothing is announced.
    """
    cost = charge_for(spec.kind, outcome)
    stored = outcome.result
    if spec.zero_retention:
        stored = {k: v for k, v in outcome.result.items() if k not in CONTENT_FIELDS}
    calls = [_log_row(c) for c in outcome.calls]
    try:
        charged, retried = ending.written(spec.id, ending.WRITE_BACKOFF_S, functools.partial(
            ending.close, spec.id, outcome.status, stored, outcome.error,
            outcome.resolved_model, calls, cost))
    except SQLAlchemyError as exc:
        log.error("could not record the end of job %s (%s); failing it", spec.id, exc)
        outcome = Outcome("failed", error=UNRECORDED)
        try:
            charged, retried = ending.written(
                spec.id, ending.GIVE_UP_BACKOFF_S, functools.partial(
                    ending.close, spec.id, "failed", {}, UNRECORDED, None, [], Decimal(0)))
        except SQLAlchemyError:
            log.exception("job %s stays running for the reconciler", spec.id)
            return
    if charged is None:
        if retried:
            # An attempt that failed may have committed before its answer was lost.
            _announce_recorded(spec.id, rt)
        log.info("job %s already ended; not finishing it again", spec.id)
        return
    drop = [events.request_key(spec.id), events.relay_key(spec.id),
            *(lease.hand_back() if lease is not None else [])]
    rt.publisher.publish(
        spec.id,
        final_event_for(spec.id, outcome.status, outcome.result, outcome.error, charged,
                        outcome.resolved_model),
        drop,
    )
    rt.publisher.flush()


def _announce_recorded(job_id: str, rt: Runtime) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is not None and job.status in FINAL:
            _republish_final(job, rt)


def _log_row(c: CallResult) -> dict[str, Any]:
    """The request_log row of one provider call."""
    return {
        "model": c.model,
        "provider": c.provider,
        "role": c.role or "",
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "ttft_ms": c.ttft_ms,
        "latency_ms": round(c.latency_ms, 3),
        "status": "cancelled" if c.cancelled else ("ok" if c.ok else "error"),
        "cost": c.cost,
        "error": None if c.error is None else f"{c.error.code}: {c.error.message}"[:500],
    }


def give_up(job_id: str, exc: BaseException, rt: Runtime | None = None) -> None:
    """The job cannot be run (its dependencies kept failing): end it as failed, release
    its hold, and tell its clients, as far as whatever is still up allows.

    Safe to call for any job, any number of times, from any process (the reconciler):
    a job that has ended is left as it is, and only the call that ends it announces it.
    """
    rt = rt or get_runtime()
    log.error("giving up on job %s: %s", job_id, exc)
    try:
        charged = ending.close(job_id, "failed", {}, GAVE_UP, None, [], Decimal(0))
    except Exception:
        # Announced only once recorded: a stream is never told that a running job ended.
        log.exception("could not record the failure of job %s; the reconciler will",
                      job_id)
        return
    if charged is None:
        return
    try:
        rt.publisher.publish(job_id, final_event_for(job_id, "failed", {}, GAVE_UP, charged,
                                                     None))
        rt.publisher.flush()
    except Exception:
        log.exception("could not announce the failure of job %s", job_id)


def run_job(job_id: str, rt: Runtime | None = None) -> None:
    rt = rt or get_runtime()
    lease = Lease(rt.redis, job_id)
    # One round trip: the lease, and what Redis knows of the job (read while at it; it
    # counts only once the lease is ours).
    pipe = rt.redis.pipeline(transaction=False)
    lease.queue_acquire(pipe)
    pipe.exists(events.events_key(job_id))
    pipe.exists(events.cancel_key(job_id))
    pipe.get(events.request_key(job_id))
    taken, had_events, cancel, stored = pipe.execute()
    if not lease.acquired(taken):
        # Its owner may be alive (a long job's second delivery) or just died: look again
        # after the lease could have lapsed, and never drop the job.
        raise JobBusy(job_id)
    try:
        _run_leased(job_id, rt, Known(bool(had_events), bool(cancel), stored), lease)
    finally:
        lease.release()


def _run_leased(job_id: str, rt: Runtime, known: Known, lease: Lease) -> None:
    ticket = ticket_spec(job_id, known)
    claiming: gevent.Greenlet | None = None
    if ticket is not None and ticket.kind == "chat" and not known.had_events \
            and not known.cancel:
        # A fresh chat: its provider call starts while the database claims the job, and
        # its first event waits for the claim (which takes a round trip and more).
        spec: JobSpec | None = ticket
        claiming = gevent.spawn(claim, job_id, rt, known)
    else:
        spec = claim(job_id, rt, known)
    if spec is None:
        return
    ctx, refused = job_context(spec, rt)
    ctx.seed_cancel(spec.cancelled)
    if claiming is not None:
        ctx.gate = functools.partial(_claimed, claiming)
    try:
        outcome = _outcome(ctx, spec, refused)
        if ctx.gate is not None:
            ctx.gate()
    except Unclaimed:
        return
    except ClaimFailed as exc:
        raise exc.cause from None  # the task retries, as when a claim fails up front
    if outcome is not None:
        finish(spec, outcome, rt, lease)


def _claimed(claiming: gevent.Greenlet) -> None:
    try:
        spec = claiming.get()
    except Exception as exc:
        raise ClaimFailed(exc) from exc
    if spec is None:
        raise Unclaimed


def _outcome(ctx: JobContext, spec: JobSpec, refused: Outcome | None) -> Outcome | None:
    if refused is not None:
        return refused
    if not spec.body:
        return Outcome("failed", error={"code": "request_expired",
                                        "message": "the job's request is no longer stored"})
    if spec.cancelled:
        return Outcome("cancelled")
    try:
        return HANDLERS[spec.kind](ctx, spec)
    except (Unclaimed, ClaimFailed):
        raise
    except Exception:
        log.exception("job %s crashed", spec.id)
        return Outcome("failed", error={"code": "internal_error",
                                        "message": "the job failed inside Chorus"})
