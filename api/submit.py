"""Turn a validated request into a job: reserve credits, store it, enqueue it."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, TypeVar

import redis
from flask import current_app, request
from kombu.exceptions import KombuError
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from api import idempotency
from api.errors import ApiError, bad_request, unavailable
from api.jsontext import decode, invalid_json
from api.ticket import Ticket
from shared import budgets, byok, ledger, onestatement, pricing
from shared.db import autocommit, is_postgres, session_scope
from shared.keys import KeyOwner
from shared.registry import Registry, RegistryError
from shared.tables import Job

QUEUE_INTERACTIVE = "interactive"

T = TypeVar("T", bound=BaseModel)


def parse_body(model: type[T]) -> T:
    """Strict validation: wrong types, unknown fields and bad values are all 400."""
    if request.mimetype != "application/json":
        raise bad_request("body must be JSON (Content-Type: application/json)")
    raw = request.get_data(cache=True)
    if not isinstance(decode(raw), dict):
        raise bad_request("body must be a JSON object")
    return validate_json(model, raw)


def validate_json(model: type[T], raw: str | bytes, where: str = "") -> T:
    """Validate a JSON object strictly; the first problem becomes a 400 naming its field,
    under ``where`` (the object's own place in the body) if given."""
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        param = ".".join([where, *loc] if where else loc) or None
        if first["type"] == "json_invalid":
            raise invalid_json(where or "body", first["msg"].removeprefix("Invalid JSON: "),
                               param) from exc
        raise bad_request(f"{param or 'body'}: {first['msg']}", param) from exc


def check_models(ids: list[str], registry: Registry, param: str) -> None:
    for model_id in ids:
        if model_id not in registry:
            raise bad_request(f"unknown model {model_id!r}; see GET /api/v1/models", param)


def create_job(
    owner: KeyOwner, kind: str, body: dict[str, Any], registry: Registry, client: redis.Redis,
    relay: str | None = None, claim: idempotency.Claim | None = None,
    queue: str = QUEUE_INTERACTIVE,
) -> tuple[str, Decimal]:
    """Store the job and hold its worst-case cost in one transaction (402 if not covered).

    The job row names ``queue``, the one its task goes to: a lost task goes back there.

    The key's and the session's budgets are held first, then the wallet; when either
    refuses, the whole transaction (job row included) rolls back. With a ``claim`` (an
    ``Idempotency-Key``) its row is written in the same transaction; a key another
    request stored raises ``idempotency.KeyUsed`` (replay its job) or a 409.
    """
    job_id = str(uuid.uuid4())
    ticket = Ticket(client, job_id, owner, kind, body, relay)
    try:
        hold, own = _open(owner, kind, body, registry, job_id, ticket, claim, queue)
    except idempotency.KeyTaken:
        assert claim is not None
        raise idempotency.resolve(owner.account_id, claim) from None
    except budgets.BudgetExceeded as exc:
        raise ApiError(
            402,
            "budget_exceeded",
            f"the {exc.scope} budget has {exc.remaining} of {exc.limit} credits left; this "
            f"request needs up to {exc.required}",
            credits=float(exc.remaining),
            required=float(exc.required),
            budget={"scope": exc.scope, "limit": float(exc.limit), "used": float(exc.used)},
        ) from exc
    except ledger.InsufficientCredits as exc:
        raise ApiError(
            402,
            "insufficient_credits",
            f"this request needs up to {exc.required} credits; {exc.available} available",
            credits=float(exc.available),
            required=float(exc.required),
        ) from exc
    except SQLAlchemyError as exc:
        raise unavailable("database") from exc
    try:
        ticket.store(own)
    except redis.RedisError as exc:
        abandon(job_id)
        raise unavailable("redis") from exc
    return job_id, hold


def _open(owner: KeyOwner, kind: str, body: dict[str, Any], registry: Registry, job_id: str,
          ticket: Ticket, claim: idempotency.Claim | None,
          queue: str) -> tuple[Decimal, list[str]]:
    """The hold; a ticket written meanwhile is taken back when it fails."""
    try:
        if claim is not None:
            # The key's row must commit with the job: a transaction of a few statements
            # (the one-statement path below has no room for it). Requests without a key,
            # nearly all of them, never come here.
            return _open_in_a_transaction(owner, kind, body, registry, job_id, queue,
                                          claim)
        if is_postgres():
            return _open_in_one_statement(owner, kind, body, registry, job_id, queue)
        return _open_in_a_transaction(owner, kind, body, registry, job_id, queue)
    except BaseException:
        ticket.withdraw()
        raise


def _open_in_one_statement(
    owner: KeyOwner, kind: str, body: dict[str, Any], registry: Registry, job_id: str,
    queue: str,
) -> tuple[Decimal, list[str]]:
    """PostgreSQL: the hold, ledger row and job as one statement. Usually one round trip:
    the statement itself checks that no key cap or provider key of the account's own
    applies; when one does, read the terms and hold what they say (with a cap or a
    session budget, in the transaction below)."""
    if body.get("session_id") is not None:
        return _open_in_a_transaction(owner, kind, body, registry, job_id, queue)
    with autocommit() as conn:

        def open_with(own: list[str], guarded: bool) -> tuple[Decimal, onestatement.Opened]:
            hold = _worst_case(kind, body, registry, own)
            return hold, onestatement.open_job(
                conn, job_id=job_id, account_id=owner.account_id, key_id=owner.key_id,
                kind=kind, request=None if owner.zero_retention else body, session_id=None,
                hold=hold, byok=own or None, guarded=guarded, queue=queue,
            )

        own: list[str] = []
        hold, opened = open_with(own, guarded=True)
        capped = False
        if not opened.plain:
            terms = budgets.terms(conn, owner.key_id)
            capped = terms.key_budget is not None
            if not capped:
                own = terms.own_providers if kind in byok.JOB_KINDS else []
                hold, opened = open_with(own, guarded=False)
        if not capped:
            if not opened.held:
                raise ledger.InsufficientCredits(
                    ledger.wallet(conn, owner.account_id).available, ledger.q(hold))
            return hold, own
    # A capped key: its budget is held with the wallet, in one transaction.
    return _open_in_a_transaction(owner, kind, body, registry, job_id, queue)


def _open_in_a_transaction(
    owner: KeyOwner, kind: str, body: dict[str, Any], registry: Registry, job_id: str,
    queue: str = QUEUE_INTERACTIVE,
    claim: idempotency.Claim | None = None,
) -> tuple[Decimal, list[str]]:
    """The job row, its idempotency key if any, the budgets' holds and the wallet's, in
    one transaction."""
    with session_scope() as session:
        terms = budgets.terms(session, owner.key_id)
        own = terms.own_providers if kind in byok.JOB_KINDS else []
        hold = _worst_case(kind, body, registry, own)
        session.add(
            Job(
                id=job_id,
                account_id=owner.account_id,
                key_id=owner.key_id,
                kind=kind,
                status="queued",
                queue=queue,
                request=None if owner.zero_retention else body,
                session_id=body.get("session_id"),
                credits_reserved=hold,
                byok=own or None,
            )
        )
        session.flush()
        if claim is not None:
            # Before the holds: a request racing on the key waits on the key's row, not
            # on the account's, and its holds are never taken.
            idempotency.store(session, owner.account_id, claim, job_id=job_id)
        budgets.reserve(
            session, terms, account_id=owner.account_id, key_id=owner.key_id,
            session_id=body.get("session_id"), job_id=job_id, amount=hold,
        )
        ledger.reserve(session, owner.account_id, job_id, hold)
    return hold, own


def _worst_case(kind: str, body: dict[str, Any], registry: Registry, own: list[str]) -> Decimal:
    """The hold: calls on the account's own provider keys cost it no token credits."""
    try:
        calls = pricing.plan_calls(kind, body, registry, own)
    except RegistryError as exc:
        raise bad_request(str(exc)) from exc
    return pricing.reservation(kind, calls, own)


def enqueue(job_id: str, queue: str = QUEUE_INTERACTIVE) -> None:
    celery = current_app.extensions["celery"]
    try:
        # No result subscription: a job's result is its event stream, not a Celery result.
        # The task's id is the job's, so the reconciler knows the job's message on sight.
        celery.send_task("chorus.run_job", args=[job_id], queue=queue, ignore_result=True,
                         task_id=job_id)
    except (KombuError, OSError, redis.RedisError) as exc:
        abandon(job_id)
        raise unavailable("queue") from exc


def abandon(job_id: str) -> None:
    """A job that could not be enqueued never ran: release its hold, mark it failed, and
    free its idempotency key so that a retry makes the job anew."""
    try:
        with session_scope() as session:
            ledger.release(session, job_id)
            idempotency.forget(session, job_id)
            job = session.get(Job, job_id)
            if job is not None:
                job.status = "failed"
                job.credits_charged = Decimal(0)
                job.error = {"code": "unavailable", "message": "could not enqueue"}
    except SQLAlchemyError:
        current_app.logger.exception("could not abandon job %s", job_id)
