"""Batches: many jobs in one request (JSONL in), run on the batch queue, read back as JSONL.

Every line is checked before anything is stored: one bad line is a 400 that names it, and
nothing is created. Each line then becomes a job of its own, with its own hold, queued on
the batch queue so a large batch never slows interactive traffic. A line whose hold is
refused (402: credits or budget) has no job; its result line says why.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from api import idempotency
from api.auth import authenticate
from api.errors import ApiError, bad_request, not_found, unavailable
from api.jobs import MODEL_PARAM, request_cancel, start_job
from api.jsontext import decode, invalid_json, jsonl_line, split_jsonl
from api.submit import check_models, enqueue, validate_json
from shared.db import session_scope
from shared.keys import KeyOwner
from shared.registry import get_registry
from shared.schemas import JOB_KINDS, MAX_BATCH_LINES, BatchLine, Common
from shared.tables import Batch, BatchItem, Job, as_utc, utcnow

bp = Blueprint("batches", __name__, url_prefix="/api/v1")

QUEUE_BATCH = "batch"
JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/jsonlines")
FINAL = ("succeeded", "failed", "cancelled")


def _raw_lines() -> list[str]:
    """The batch's lines as JSON texts: a JSONL body, or a JSON ``{"lines": [...]}``."""
    raw = request.get_data(cache=True)
    if request.mimetype in JSONL_TYPES:
        try:
            return split_jsonl(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise invalid_json("body", "not UTF-8") from exc
    if request.mimetype != "application/json":
        raise bad_request("body must be JSONL (Content-Type: application/jsonl), one job a "
                          "line, or JSON {\"lines\": [...]}")
    doc = decode(raw)
    if not isinstance(doc, dict) or set(doc) != {"lines"} or not isinstance(doc["lines"], list):
        raise bad_request("a JSON batch is an object with one field, lines: [...]", "lines")
    return [json.dumps(line) for line in doc["lines"]]


def parse_batch() -> list[tuple[BatchLine, Common]]:
    """Every line valid, or a 400 naming the first bad one (``lines.<i>``, from 0)."""
    texts = _raw_lines()
    if not texts:
        raise bad_request("the batch has no lines", "lines")
    if len(texts) > MAX_BATCH_LINES:
        raise bad_request(f"a batch has at most {MAX_BATCH_LINES} lines; this one has "
                          f"{len(texts)}", "lines")
    out: list[tuple[BatchLine, Common]] = []
    seen: set[str] = set()
    for i, text in enumerate(texts):
        where = f"lines.{i}"
        line = validate_json(BatchLine, jsonl_line(text, where), where)
        if line.custom_id in seen:
            raise bad_request(f"{where}.custom_id: {line.custom_id!r} is used twice",
                              f"{where}.custom_id")
        seen.add(line.custom_id)
        req = validate_json(JOB_KINDS[line.endpoint], json.dumps(line.body), f"{where}.body")
        if req.stream:
            raise bad_request(f"{where}.body.stream: a batch's jobs do not stream; read "
                              "them from GET /api/v1/batches/{id}/results",
                              f"{where}.body.stream")
        out.append((line, req))
    return out


def _submit_line(owner: KeyOwner, batch_id: str, n: int, line: BatchLine,
                 req: Common) -> BatchItem:
    item = BatchItem(batch_id=batch_id, line=n, custom_id=line.custom_id,
                     endpoint=line.endpoint)
    try:
        job_id = start_job(owner, line.endpoint, req, follow=False, queue=QUEUE_BATCH)
        enqueue(job_id, QUEUE_BATCH)
    except ApiError as exc:
        # The line has no job (its hold refused, say): the others go on.
        item.error = {"code": exc.code, "message": exc.message, "http_status": exc.status}
        return item
    item.job_id = job_id
    return item


def canonical(lines: list[tuple[BatchLine, Common]]) -> list[dict[str, Any]]:
    """The batch as its ``Idempotency-Key`` hashes it: each line's validated fields."""
    return [{"custom_id": line.custom_id, "endpoint": line.endpoint,
             "body": req.model_dump(mode="json", exclude_none=True)} for line, req in lines]


@bp.post("/batches")
def create_batch() -> tuple[Response, int]:
    owner = authenticate()
    lines = parse_batch()
    registry_check(lines)
    claim = idempotency.claim("batch", lambda: canonical(lines))
    batch = Batch(id=str(uuid.uuid4()), account_id=owner.account_id, key_id=owner.key_id,
                  total=len(lines))
    try:
        with session_scope() as session:
            session.add(batch)
            if claim is not None:
                session.flush()
                idempotency.store(session, owner.account_id, claim, batch_id=batch.id)
    except idempotency.KeyTaken:
        assert claim is not None
        used = idempotency.resolve(owner.account_id, claim)
        if used.batch_id is None:
            raise ApiError(409, "idempotency_conflict", "this Idempotency-Key names a job",
                           idempotency.HEADER) from None
        # The first request's batch, as it stands now: its lines may still be going in.
        return idempotency.mark_replayed(jsonify(batch_view(used.batch_id, owner.account_id))), 200
    except SQLAlchemyError as exc:
        raise unavailable("database") from exc
    items = [_submit_line(owner, batch.id, n, line, req) for n, (line, req) in enumerate(lines)]
    try:
        with session_scope() as session:
            session.add_all(items)
            stored = session.get(Batch, batch.id)
            cancelled = stored is not None and stored.cancelled_at is not None
    except SQLAlchemyError as exc:
        raise unavailable("database") from exc
    if cancelled:
        # Cancelled while its lines were being submitted: the jobs made since go too.
        for item in items:
            if item.job_id is not None:
                request_cancel(item.job_id)
    return jsonify(batch_view(batch.id, owner.account_id)), 201


def registry_check(lines: list[tuple[BatchLine, Common]]) -> None:
    """Every model of every line is in the registry (400 naming the line otherwise)."""
    registry = get_registry()
    for i, (line, req) in enumerate(lines):
        check_models(req.model_ids(), registry, f"lines.{i}.body.{MODEL_PARAM[line.endpoint]}")


def _load(batch_id: str, account_id: int) -> tuple[Batch, list[tuple[BatchItem, Job | None]]]:
    try:
        uuid.UUID(batch_id)
    except ValueError:
        raise not_found("batch") from None
    try:
        with session_scope() as session:
            batch = session.get(Batch, batch_id)
            if batch is None or batch.account_id != account_id:
                raise not_found("batch")
            rows = session.execute(
                select(BatchItem, Job).outerjoin(Job, Job.id == BatchItem.job_id)
                .where(BatchItem.batch_id == batch_id).order_by(BatchItem.line)
            ).all()
            session.expunge_all()
    except SQLAlchemyError as exc:
        raise unavailable("database") from exc
    return batch, [(item, job) for item, job in rows]


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


def batch_view(batch_id: str, account_id: int) -> dict[str, Any]:
    batch, rows = _load(batch_id, account_id)
    counts = Counter(job.status if job is not None else "not_submitted" for _i, job in rows)
    # Lines not stored yet (a batch read while it is being submitted) count as queued.
    counts["queued"] += batch.total - len(rows)
    done = sum(counts[s] for s in (*FINAL, "not_submitted")) == batch.total
    if batch.cancelled_at is not None:
        status = "cancelled" if done else "cancelling"
    else:
        status = "completed" if done else "in_progress"
    ended = [job.finished_at for _i, job in rows if job is not None and job.finished_at]
    charged = sum((job.credits_charged or Decimal(0) for _i, job in rows if job is not None),
                  Decimal(0))
    return {
        "id": batch.id,
        "status": status,
        "counts": {"total": batch.total,
                   **{s: counts[s] for s in ("queued", "running", *FINAL, "not_submitted")}},
        "credits_charged": float(charged),
        "created_at": _iso(batch.created_at),
        "finished_at": _iso(max(ended)) if done and ended else None,
        "cancelled_at": _iso(batch.cancelled_at),
    }


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str) -> Response:
    owner = authenticate()
    return jsonify(batch_view(batch_id, owner.account_id))


def result_line(item: BatchItem, job: Job | None) -> dict[str, Any]:
    if job is None:
        return {"custom_id": item.custom_id, "endpoint": item.endpoint, "job_id": None,
                "status": "not_submitted", "result": None, "error": item.error,
                "credits_charged": None}
    return {"custom_id": item.custom_id, "endpoint": item.endpoint, "job_id": job.id,
            "status": job.status, "result": job.result, "error": job.error,
            "credits_charged": None if job.credits_charged is None
            else float(job.credits_charged)}


@bp.get("/batches/<batch_id>/results")
def batch_results(batch_id: str) -> Response:
    owner = authenticate()
    _batch, rows = _load(batch_id, owner.account_id)

    def lines() -> Iterator[str]:
        for item, job in rows:
            yield json.dumps(result_line(item, job), separators=(",", ":")) + "\n"

    return Response(lines(), mimetype="application/jsonl")


@bp.delete("/batches/<batch_id>")
def cancel_batch(batch_id: str) -> Response:
    """Cancel every job of the batch not yet ended; each is settled for what it used."""
    owner = authenticate()
    batch, rows = _load(batch_id, owner.account_id)
    running = [job.id for _item, job in rows if job is not None and job.status not in FINAL]
    # A batch still being submitted has lines to come; one that has ended stays as it is.
    if batch.cancelled_at is None and (running or len(rows) < batch.total):
        try:
            with session_scope() as session:
                stored = session.get(Batch, batch_id)
                if stored is not None and stored.cancelled_at is None:
                    stored.cancelled_at = utcnow()
        except SQLAlchemyError as exc:
            raise unavailable("database") from exc
    for job_id in running:
        request_cancel(job_id)
    return jsonify(batch_view(batch_id, owner.account_id))
