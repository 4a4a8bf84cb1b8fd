"""Job endpoints: submit chat/compare/blend/judge, read a job, follow or cancel it."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, request

from api import idempotency, replays
from api.auth import authenticate
from api.errors import ApiError, bad_request, unavailable
from api.owned import load_job
from api.relay import Relay
from api.streaming import sse_response, wait_final
from api.submit import QUEUE_INTERACTIVE, check_models, create_job, enqueue, parse_body
from shared import events, finals
from shared.keys import KeyOwner
from shared.registry import Registry, get_registry
from shared.schemas import JOB_KINDS, Common
from shared.tables import Job

bp = Blueprint("jobs", __name__, url_prefix="/api/v1")

FINAL_HTTP_STATUS = {"succeeded": 200, "cancelled": 200}


def _registry() -> Registry:
    return get_registry()


def _relay() -> Relay:
    relay: Relay = current_app.extensions["chorus.relay"]
    return relay


def _redis() -> redis.Redis:
    client: redis.Redis = current_app.extensions["chorus.redis"]
    return client


MODEL_PARAM = {"chat": "model", "compare": "models", "blend": "models", "judge": "contestants"}


def start_job(owner: KeyOwner, kind: str, req: Common, *, follow: bool = True,
              claim: idempotency.Claim | None = None,
              queue: str = QUEUE_INTERACTIVE) -> str:
    """Check the models, store the job and hold its credits; the caller enqueues it.

    Every entry point (REST, OpenAI-compatible, WebSocket, batches) goes through here so
    they share validation, credits and the ``chorus.before_enqueue`` hook. ``follow``:
    this process relays the job's events to a client (a batch's jobs have none).
    ``claim``: the request's ``Idempotency-Key``; ``idempotency.KeyUsed`` when it already
    names a job. ``queue``: the one the caller enqueues it on, recorded with the job."""
    registry = _registry()
    check_models(req.model_ids(), registry, MODEL_PARAM[kind])
    body = req.model_dump(mode="json", exclude_none=True)
    relay = _relay().channel if follow else None
    job_id, _hold = create_job(owner, kind, body, registry, _redis(), relay, claim, queue)
    hook = current_app.extensions.get("chorus.before_enqueue")
    if hook is not None:
        hook(job_id, body)
    return job_id


def submit(kind: str) -> Response:
    owner = authenticate()
    req = parse_body(JOB_KINDS[kind])
    claim = idempotency.claim(kind, lambda: req.model_dump(mode="json", exclude_none=True))
    try:
        job_id = start_job(owner, kind, req, claim=claim)
    except idempotency.KeyUsed as used:
        job = load_job(replayed_job(used), owner.account_id)
        if req.stream:
            return replays.stream(job)
        return idempotency.mark_replayed(final_response(replays.final(job)), job.id)
    # A request with a key is one its client means to retry: the job runs on when the
    # client leaves, so that the retry gets the whole answer (charged once).
    keep = req.keep_running or claim is not None
    if req.stream:
        # The relay watches the job when the response starts; events published before
        # that are read from the replay list, so nothing is lost either way.
        resp = sse_response(job_id, cancel_on_disconnect=not keep, own=True)
        enqueue(job_id)
        return resp
    enqueue(job_id)
    resp = final_response(wait_final(job_id, cancel_on_disconnect=not keep))
    resp.headers["X-Chorus-Job-Id"] = job_id
    return resp


def replayed_job(used: idempotency.KeyUsed) -> str:
    """The job a used key names (a key of a batch has the batch's endpoint in its hash,
    so it never matches a job's request)."""
    if used.job_id is None:
        raise ApiError(409, "idempotency_conflict", "this Idempotency-Key names a batch",
                       idempotency.HEADER)
    return used.job_id


def final_response(final: dict[str, Any]) -> Response:
    body = {k: v for k, v in final.items() if k not in ("final", "event")}
    status = body.get("status", "failed")
    if status in FINAL_HTTP_STATUS:
        resp = jsonify(body)
        resp.status_code = FINAL_HTTP_STATUS[status]
        return resp
    error = dict(body.pop("error", None) or {"code": "upstream_error", "message": "job failed"})
    resp = jsonify({"error": error, **body})
    resp.status_code = int(error.pop("http_status", 502))
    return resp


@bp.post("/chat")
def chat() -> Response:
    return submit("chat")


@bp.post("/compare")
def compare() -> Response:
    return submit("compare")


@bp.post("/blend")
def blend() -> Response:
    return submit("blend")


@bp.post("/judge")
def judge() -> Response:
    return submit("judge")


def job_view(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "result": job.result,
        "error": job.error,
        "resolved_model": job.resolved_model,
        "credits_reserved": float(job.credits_reserved),
        "credits_charged": None if job.credits_charged is None else float(job.credits_charged),
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    owner = authenticate()
    return jsonify(job_view(load_job(job_id, owner.account_id)))


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str) -> Response:
    owner = authenticate()
    after = last_event_id()
    job = load_job(job_id, owner.account_id)
    return sse_response(job_id, after, ended=RowFinal(job, owner.account_id))


def last_event_id() -> int:
    """Where a reader resumes: ``Last-Event-ID`` (what an EventSource sends), else the
    ``last_event_id`` query parameter; 0 (from the start) without either."""
    param, raw = "Last-Event-ID", request.headers.get("Last-Event-ID")
    if not raw:
        param, raw = "last_event_id", request.args.get("last_event_id")
    if not raw:
        return 0
    after = events.parse_event_id(raw.strip())
    if after is None:
        raise bad_request(f"{param} must be an event id: a whole number from 0 to "
                          f"{events.MAX_EVENT_ID}", param)
    return after


class RowFinal:
    """The ``ended`` question of a reader (see ``follow_batches``): answered first from
    the row the request loaded, then from a fresh read of it (a round trip to the
    database, asked at most once per keepalive period, and only while the job's replay
    list is missing or silent)."""

    def __init__(self, job: Job, account_id: int) -> None:
        self._job: Job | None = job
        self._job_id = job.id
        self._account_id = account_id

    def __call__(self) -> str | None:
        job, self._job = self._job, None
        if job is None:
            try:
                job = load_job(self._job_id, self._account_id)
            except ApiError as err:
                current_app.logger.warning("job %s: %s", self._job_id, err.message)
                return None
        final = finals.from_row(job)
        return None if final is None else events.encode(final)


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> Response:
    owner = authenticate()
    job = load_job(job_id, owner.account_id)
    if job.status in ("queued", "running"):
        request_cancel(job_id)
    return jsonify({"id": job_id, "status": job.status, "cancel_requested": True})


def request_cancel(job_id: str) -> None:
    """Raise the job's cancel flag and announce it; workers stop the job's calls."""
    try:
        with _redis().pipeline(transaction=False) as pipe:
            pipe.set(events.cancel_key(job_id), "1", ex=3600)
            pipe.publish(events.CANCELS_CHANNEL, job_id)
            pipe.execute()
    except redis.RedisError as exc:
        raise unavailable("redis") from exc
    hook = current_app.extensions.get("chorus.on_cancel")
    if hook is not None:
        hook(job_id)


def cancel_after_disconnect(job_id: str) -> None:
    """The ``chorus.on_disconnect`` hook: nobody reads the answer any more, so stop paying
    for it. Runs while a stream is torn down, so it logs instead of raising."""
    try:
        request_cancel(job_id)
    except ApiError:
        current_app.logger.warning("could not cancel job %s after its client left", job_id)
