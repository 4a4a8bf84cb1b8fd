"""``Idempotency-Key``: a request retried with the same key gets the job (or batch) its
first try made, never a second one or a second charge.

A key is stored per account with the hash of its request's canonical body, in the
transaction that stores the job and its hold (``api.submit``), so neither exists without
the other. The primary key ``(account_id, key)`` decides between requests racing on one
key: the loser's transaction fails on it, and the loser then reads the winner's row.
Keys live 24 hours; each insert deletes a few expired ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, request
from sqlalchemy import Delete, and_, delete, or_, select, tuple_
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from api.errors import ApiError, bad_request, unavailable
from shared.db import session_scope
from shared.tables import IdempotencyKey, as_utc

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255
# Expired keys deleted, at most, by each insert (more than one: the backlog shrinks).
CLEANUP_BATCH = 20
# Printable ASCII, space included (as in RFC 9110 field values, without obs-text).
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


@dataclass(frozen=True)
class Claim:
    """A request's key and the hash of what it asks for."""

    key: str
    endpoint: str
    request_hash: str


class KeyUsed(Exception):
    """The key already names a job or batch made by the same request: replay it."""

    def __init__(self, job_id: str | None, batch_id: str | None) -> None:
        super().__init__(job_id or batch_id)
        self.job_id = job_id
        self.batch_id = batch_id


class KeyTaken(Exception):
    """The key's row exists, committed by another request; ``resolve`` says what it is."""


def parse_key(raw: str | None, param: str = HEADER) -> str | None:
    """The key's value, or None without one; a 400 naming ``param`` for one that is not
    1-255 printable ASCII characters."""
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_KEY_LENGTH or not _PRINTABLE.fullmatch(raw):
        raise bad_request(f"{param} must be 1 to {MAX_KEY_LENGTH} printable ASCII "
                          "characters", param)
    return raw


def request_hash(endpoint: str, body: Any) -> str:
    """SHA-256 of the canonical request: the endpoint and the validated body as JSON with
    sorted keys, so field order, spacing and defaults spelt out make no difference."""
    text = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def claim(endpoint: str, canonical: Callable[[], Any]) -> Claim | None:
    """The request's claim on its ``Idempotency-Key``; None without the header, and then
    ``canonical`` (the body to hash) is not even computed."""
    return claim_of(request.headers.get(HEADER), endpoint, canonical)


def claim_of(raw: str | None, endpoint: str, canonical: Callable[[], Any],
             param: str = HEADER) -> Claim | None:
    """``claim`` for a key given some other way (a WebSocket message's field)."""
    key = parse_key(raw, param)
    if key is None:
        return None
    return Claim(key, endpoint, request_hash(endpoint, canonical()))


def store(session: Session, account_id: int, c: Claim, *, job_id: str | None = None,
          batch_id: str | None = None) -> None:
    """Write the key's row in the caller's transaction; ``KeyTaken`` when another
    request stored it first (the caller ends its transaction, then asks ``resolve``).
    Call it before the transaction takes the account's row: a racing request then waits
    on the key alone."""
    now = datetime.now(UTC)
    session.execute(_expired(now - TTL, account_id, c.key))
    session.add(IdempotencyKey(account_id=account_id, key=c.key, endpoint=c.endpoint,
                               request_hash=c.request_hash, job_id=job_id,
                               batch_id=batch_id, created_at=now))
    try:
        session.flush()
    except IntegrityError as exc:
        raise KeyTaken(c.key) from exc


def _expired(cutoff: datetime, account_id: int, key: str) -> Delete:
    """Keys past their 24 hours no longer count: this one, if it is, and the oldest few
    of any account, so every expired key goes eventually at a bounded cost per insert.
    Rows another transaction is deleting are skipped, not waited for (PostgreSQL)."""
    oldest = (select(IdempotencyKey.account_id, IdempotencyKey.key)
              .where(IdempotencyKey.created_at < cutoff)
              .order_by(IdempotencyKey.created_at).limit(CLEANUP_BATCH)
              .with_for_update(skip_locked=True))
    this = and_(IdempotencyKey.account_id == account_id, IdempotencyKey.key == key)
    return delete(IdempotencyKey).where(
        IdempotencyKey.created_at < cutoff,
        or_(this, tuple_(IdempotencyKey.account_id, IdempotencyKey.key).in_(oldest)))


def resolve(account_id: int, c: Claim) -> KeyUsed:
    """What a key another request stored stands for: ``KeyUsed`` to replay, or a 409
    when it was stored for another request or is not readable yet."""
    try:
        with session_scope() as session:
            row = session.execute(select(IdempotencyKey).where(
                IdempotencyKey.account_id == account_id, IdempotencyKey.key == c.key,
            )).scalar_one_or_none()
    except SQLAlchemyError as exc:
        raise unavailable("database") from exc
    if row is None or as_utc(row.created_at) < datetime.now(UTC) - TTL:
        # Its first request's transaction has not settled either way (or the row just
        # expired): nothing to replay yet, and a second job would be unsafe.
        raise ApiError(409, "idempotency_in_progress",
                       f"a request with this {HEADER} is still being processed; retry "
                       "shortly", HEADER)
    if row.request_hash != c.request_hash:
        raise ApiError(409, "idempotency_conflict",
                       f"this {HEADER} was used for a different request in the last 24 "
                       "hours; use a new key for a new request", HEADER)
    return KeyUsed(row.job_id, row.batch_id)


def forget(session: Session, job_id: str) -> None:
    """A job that never ran (it could not be enqueued) frees its key for a retry."""
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.job_id == job_id))


def mark_replayed(resp: Response, job_id: str | None = None) -> Response:
    resp.headers[REPLAYED_HEADER] = "true"
    if job_id is not None:
        resp.headers["X-Chorus-Job-Id"] = job_id
    return resp
