"""Compare, blend and judge as Celery canvases: parallel model calls joined by chords.

A pipeline runs in stages. A stage is a list of model calls run as a chord (in parallel)
or a chain (in order); its body task asks the job's kind what comes next: another stage,
or the outcome that ends the job through ``workers.jobs.finish``, exactly once.

Tasks carry the job id and small JSON steps. The request and every finished call (its
text included) live in one Redis hash per job that is deleted when the job ends, so chord
results stay small and a zero-retention answer never reaches the result backend.
Header tasks never raise: on the Redis backend a failed header fails the chord and its
body never runs, so a failed call comes back as a record with an error instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, Signature, Task, chain, chord, current_task

from shared.db import session_scope
from shared.events import cancel_key
from shared.registry import ModelSpec
from shared.tables import Job
from workers import meter, pace
from workers.app import celery
from workers.breaking import acquire, breaker_for, report, skipped
from workers.calls import CallResult, JobContext, run_model_call
from workers.jobs import FINAL, JobSpec, Outcome, finish, job_context
from workers.lease import REFRESH_S, JobBusy, Lease, step_lease
from workers.providers.base import ChatCall
from workers.runtime import Runtime, get_runtime
from workers.stages import (
    BUILDERS,
    DEFAULT_QUEUE,
    KINDS,
    NOT_RUN,
    STATE_TTL_S,
    PipeState,
    Record,
    Stage,
    Step,
    canvas_key,
    is_ok,
    spec_from_doc,
    state_key,
)

log = logging.getLogger(__name__)

# --- starting and advancing -------------------------------------------------------------


def start(ctx: JobContext, spec: JobSpec, first: Stage) -> None:
    """Hand the job to its pipeline; ``run_job`` gets None and leaves finishing to it."""
    queue = _current_queue()
    doc = {"kind": spec.kind, "account_id": spec.account_id, "byok": spec.byok,
           "zero_retention": spec.zero_retention, "body": spec.body, "queue": queue}
    launch(ctx, first, queue, spec_doc=json.dumps(doc))


def _current_queue() -> str:
    # Stay on the queue the job came in on, so batch pipelines never crowd interactive ones.
    info = getattr(current_task.request, "delivery_info", None) if current_task else None
    return str((info or {}).get("routing_key") or DEFAULT_QUEUE)


def launch(ctx: JobContext, stage: Stage, queue: str, *, spec_doc: str | None = None) -> None:
    rt, job_id = ctx.runtime, ctx.job_id
    ids = [str(uuid.uuid4()) for _ in stage.steps]
    body = next_task.s(job_id, stage.name).set(queue=queue)
    with rt.redis.pipeline(transaction=False) as pipe:
        if spec_doc is not None:
            pipe.delete(state_key(job_id))  # a redelivered job starts over
            pipe.hset(state_key(job_id), "spec", spec_doc)
        pipe.expire(state_key(job_id), STATE_TTL_S)
        if not stage.sequential:
            # Before sending, so a cancel racing the launch still finds them.
            pipe.sadd(canvas_key(job_id), *ids)
            pipe.expire(canvas_key(job_id), STATE_TTL_S)
            pace.queue_read(pipe, [s.model for s in stage.steps])
        replies = pipe.execute()
    for event in stage.events:
        ctx.publish(event)
    if stage.events:
        # A header task on another worker must not publish before these are in Redis.
        rt.publisher.flush()
    if stage.sequential:
        steps = [_step_task(job_id, s, i, queue) for s, i in zip(stage.steps, ids, strict=True)]
        chain(*steps, body).apply_async()
    else:
        planned = pace.slowest_first(list(zip(stage.steps, ids, strict=True)), replies[-1])
        headers = [_step_task(job_id, s, i, queue) for s, i in planned]
        # A revoked header breaks the chord; the errback goes on with what arrived.
        chord(headers, body.on_error(broken_task.si(job_id, stage.name))).apply_async()


def _step_task(job_id: str, step: Step, task_id: str, queue: str) -> Signature:
    # A short repr for logs and monitors, given so Celery need not format the whole step.
    return model_call_task.si(job_id, step.to_json()).set(
        task_id=task_id, queue=queue, argsrepr=f"({job_id!r}, {step.key!r})", kwargsrepr="{}")


class StepError(Exception):
    """A step that cannot make its call; ``error`` is its record's error."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", ""))
        self.error = error


def run_step(job_id: str, raw: dict[str, Any], rt: Runtime | None = None) -> Record:
    """One chord header: stream the step's model call and store its record.

    Never raises for a failed call; raises ``JobBusy`` when another live worker is running
    this very step (the broker redelivered a long call), so the task looks again later.
    """
    rt = rt or get_runtime()
    step = Step.from_json(raw)
    lease = Lease(rt.redis, step_lease(job_id, step.key))
    # One round trip for the lease, the request, this step's record if it already ran,
    # the quoted answers, the cancel flag and the count of runs that got this far.
    with rt.redis.pipeline(transaction=False) as pipe:
        lease.queue_acquire(pipe)
        pipe.hmget(state_key(job_id),
                   ["spec", f"call:{step.key}", *(f"call:{k}" for k in step.quoted)])
        pipe.exists(cancel_key(job_id))
        pipe.eval(_COUNT_RUN, 1, state_key(job_id), f"runs:{step.key}")
        taken, values, cancelled, runs = pipe.execute()
    if not lease.acquired(taken):
        raise JobBusy(f"{job_id}:{step.key}")
    try:
        return _run_leased_step(job_id, step, rt, values, bool(cancelled), lease,
                                rerun=int(runs) > 1)
    finally:
        lease.release()


# Counted in a live pipeline only, as ``_STORE`` stores: a late copy must not recreate it.
_COUNT_RUN = ("if redis.call('EXISTS', KEYS[1]) == 1 then "
              "return redis.call('HINCRBY', KEYS[1], ARGV[1], 1) end return 0")


def _run_leased_step(job_id: str, step: Step, rt: Runtime, values: list[Any],
                     cancelled: bool, lease: Lease, *, rerun: bool = False) -> Record:
    """``rerun``: an earlier delivery of this step got as far as this one and left no
    record (its worker died), so its partial answer may be on the client's screen."""
    tags = {"role": step.role, "layer": step.layer, **step.tags}
    try:
        if values[0] is None:
            # The job is over (or its state expired): a late copy of the step does nothing.
            return {"model": step.model, **tags, "key": step.key, "error": NOT_RUN}
        if values[1] is not None:
            # A redelivered step that already ran: hand on its record, call nothing again.
            return _chord_result(json.loads(values[1]))
        spec = spec_from_doc(job_id, json.loads(values[0]))
        quoted = {k: json.loads(v) for k, v in zip(step.quoted, values[2:], strict=True) if v}
        ctx, refused = job_context(spec, rt)
        if refused is not None and refused.error is not None:
            raise StepError(refused.error)
        ctx.seed_cancel(cancelled)
        model = rt.registry.get(step.model)
        if cancelled:
            res = CallResult(model.id, model.provider.name, step.role, step.layer, cancelled=True)
        else:
            call = BUILDERS[step.prompt](spec.body, step, quoted, model)
            if step.temperature is not None:
                call = dataclasses.replace(call, temperature=step.temperature)
            if rerun:
                # As the chunks tag this call, so a client drops its text from before.
                shown = {k: v for k, v in tags.items() if v is not None}
                ctx.publish({"event": "retry", "model": model.id, **shown,
                             "reason": "worker lost"})
            res = _guarded_call(ctx, model, call, step, tags,
                                _excess(rt, spec.body, step, quoted))
        record: Record = {**res.to_record(), **tags, "key": step.key}
    except Exception as exc:  # a broken step is an answer that did not arrive, not a crash
        if isinstance(exc, StepError):
            error = exc.error
        else:
            log.exception("pipeline step %s of job %s failed", step.key, job_id)
            error = {"code": "internal_error",
                     "message": f"the call could not run: {type(exc).__name__}"}
        record = {"model": step.model, "provider": "", **tags, "key": step.key, "error": error}
        shown = {k: v for k, v in tags.items() if v is not None}
        _safe(lambda: rt.publisher.publish(job_id, {"event": "error", "model": step.model,
                                                    **shown, "error": error}))
    _safe(lambda: _store(rt, job_id, step.key, record, lease))
    # This call's events must be in Redis before the chord body publishes anything.
    _safe(rt.publisher.flush)
    return _chord_result(record)


# Fan-out roles, whose siblings carry the stage on: an open breaker skips them at once
# instead of letting them wait out a failing provider. A synthesizer or a judge is the
# one call of its stage and always goes ahead, as a chat with no fallback does.
SKIPPABLE = frozenset({"candidate", "contestant"})


def _excess(rt: Runtime, body: dict[str, Any], step: Step, quoted: dict[str, Record]) -> int:
    """Prompt tokens of the answers this step quotes beyond what the job's hold planned
    for them (a chain step quotes its inputs and its last running answer)."""
    running = [k for k in step.running if k in quoted and is_ok(quoted[k])][-1:]
    used = [quoted[k] for k in [*step.inputs, *running] if k in quoted]
    return meter.quoted_excess([(rt.registry.get(r["model"]), r.get("text") or "")
                                for r in used if r.get("model") in rt.registry],
                               body.get("max_tokens"))


def _guarded_call(ctx: JobContext, model: ModelSpec, call: ChatCall, step: Step,
                  tags: dict[str, Any], prompt_excess: int = 0) -> CallResult:
    """The step's call, asking the model's shared breaker first and telling it after."""
    breaker = breaker_for(ctx.runtime)
    ticket = acquire(breaker, model.id) if step.role in SKIPPABLE else None
    if ticket is not None and not ticket.allowed:
        res = skipped(model, ticket, step.role, step.layer)
        assert res.error is not None
        shown = {k: v for k, v in tags.items() if v is not None}
        ctx.publish({"event": "error", "model": model.id, **shown,
                     "error": res.error.describe(), "content_length": 0})
        return res
    res = run_model_call(ctx, model, call, role=step.role, layer=step.layer,
                         extra_tags=step.tags, prompt_excess=prompt_excess)
    report(breaker, model.id, res, ticket)
    return res


# Into a live pipeline only: a call that outlived its job must not recreate its state.
_STORE = ("if redis.call('EXISTS', KEYS[1]) == 1 then "
          "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end")


def _store(rt: Runtime, job_id: str, key: str, record: Record, lease: Lease) -> None:
    """Store the step's record, give its lease back and time its model, in one round
    trip."""
    with rt.redis.pipeline(transaction=False) as pipe:
        pipe.eval(_STORE, 1, state_key(job_id), f"call:{key}", json.dumps(record))
        lease.queue_release(pipe)
        if is_ok(record) and record.get("latency_ms"):
            pace.queue_update(pipe, record["model"], float(record["latency_ms"]))
        pipe.execute()


def _chord_result(record: Record) -> Record:
    """What the chord carries: the record without its text (which stays in the state)."""
    return {k: v for k, v in record.items() if k not in ("text", "tool_calls")}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _safe(fn: Callable[[], object]) -> None:
    try:
        fn()
    except redis.RedisError:
        log.exception("redis failed in a pipeline step")


def advance(job_id: str, stage: str, rt: Runtime | None = None) -> None:
    """A stage ended: launch the next one, or finish the job."""
    rt = rt or get_runtime()
    state = load_state(rt, job_id)
    if state is None:
        _finish_lost(rt, job_id)
        return
    try:
        advance_fn, partial = KINDS[state.spec.kind]
        if state.cancelled:
            nxt: Stage | Outcome = Outcome("cancelled", result=partial(state))
        else:
            nxt = advance_fn(state, stage)
        if isinstance(nxt, Stage):
            launch(state.ctx, nxt, state.queue)
            return
    except Exception:
        log.exception("pipeline of job %s failed after stage %s", job_id, stage)
        nxt = Outcome("failed", error={"code": "internal_error",
                                       "message": "the job failed inside Chorus"})
    conclude(state, nxt, rt)


def load_state(rt: Runtime, job_id: str) -> PipeState | None:
    with rt.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(state_key(job_id))
        pipe.exists(cancel_key(job_id))
        everything, cancelled = pipe.execute()
    raw = {_text(k): v for k, v in everything.items()}
    if "spec" not in raw:
        return None
    doc = json.loads(raw["spec"])
    spec = spec_from_doc(job_id, doc)
    records = {k[5:]: json.loads(v) for k, v in raw.items() if k.startswith("call:")}
    ctx = JobContext(job_id=job_id, account_id=spec.account_id, runtime=rt)
    return PipeState(spec, doc.get("queue", DEFAULT_QUEUE), records, ctx, bool(cancelled))


def conclude(state: PipeState, outcome: Outcome, rt: Runtime) -> None:
    """Finish the job (``finish`` ends a job once: a redelivered body finds it final and
    writes nothing), then drop the pipeline's state."""
    outcome.calls = state.calls()
    finish(state.spec, outcome, rt)
    cleanup(rt, state.spec.id)


def cleanup(rt: Runtime, job_id: str) -> None:
    rt.redis.delete(state_key(job_id), canvas_key(job_id))


def _finish_lost(rt: Runtime, job_id: str) -> None:
    """The pipeline's state expired or was lost: end the job failed rather than never."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.status in FINAL:
            return
        spec = JobSpec(job_id, job.kind, job.account_id, {}, job.request is None)
    log.error("pipeline state of job %s is gone; failing it", job_id)
    finish(spec, Outcome("failed", error={"code": "internal_error",
                                          "message": "the job's pipeline state was lost"}), rt)


def revoke_canvas(app: Celery, client: redis.Redis, job_id: str) -> int:
    """Revoke the job's chord header tasks (queued ones never start; running ones stop at
    the cancel flag). Bodies are not revoked: they must run to finish the job."""
    ids = [_text(i) for i in client.smembers(canvas_key(job_id))]
    if ids:
        app.control.revoke(ids)
    return len(ids)


# --- the Celery tasks: thin wrappers over the functions above ---------------------------


# No stored result: on the Redis backend the chord's join carries each header's return
# value to the body itself, and nothing else reads a step's result.
@celery.task(name="chorus.model_call", ignore_result=True, bind=True, max_retries=None)
def model_call_task(self: Task, job_id: str, step: dict[str, Any]) -> Record:
    rt = get_runtime()
    try:
        # Handed back to the queue if still running at a stopping worker's drain deadline.
        with rt.drain.running(f"call {step.get('key')} of job {job_id}", rt.publisher.flush):
            return run_step(job_id, step, rt)
    except JobBusy as exc:
        raise self.retry(countdown=REFRESH_S, exc=exc) from exc


@celery.task(name="chorus.pipeline_next", ignore_result=True)
def next_task(_results: Any, job_id: str, stage: str) -> None:
    advance(job_id, stage)


@celery.task(name="chorus.pipeline_broken", ignore_result=True)
def broken_task(job_id: str, stage: str) -> None:
    # Called with the failure when a header was revoked; the body's work is the same.
    advance(job_id, stage)

