"""Account endpoints: credits and ledger, usage, budgets and the account's own provider keys."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.auth import authenticate
from api.errors import ApiError, bad_request, not_found, unavailable
from api.submit import parse_body
from shared import budgets, byok, ledger
from shared.db import session_scope
from shared.keys import KeyOwner
from shared.registry import get_registry
from shared.settings import Settings
from shared.tables import RequestLog, as_utc

bp = Blueprint("account", __name__, url_prefix="/api/v1")

Q = TypeVar("Q", bound=BaseModel)
R = TypeVar("R")
MAX_SESSION_ID = 200


class Query(BaseModel):
    # Query strings are text: let "20" be 20, but refuse parameters nobody defined.
    model_config = ConfigDict(extra="forbid")


class Page(Query):
    limit: int = Field(default=20, ge=1, le=200)
    # Row ids are 64-bit: SQLite cannot even bind a larger number.
    cursor: int | None = Field(default=None, ge=1, le=2**63 - 1,
                               description="next_cursor of the last page")


class UsageQuery(Page):
    limit: int = Field(default=50, ge=1, le=200)
    model: str | None = Field(default=None, min_length=1, max_length=100)
    since: datetime | None = None
    until: datetime | None = None

    @field_validator("since", "until")
    @classmethod
    def _in_utc(cls, v: datetime | None) -> datetime | None:
        # Compared in UTC, as the database holds them: it refuses offsets past 15:59 that
        # Python takes, and 9999-12-31T23:59-23:59 leaves the calendar once converted. A
        # 400 here, not a database error.
        if v is None or v.tzinfo is None:
            return v
        try:
            return v.astimezone(UTC)
        except OverflowError as exc:
            raise ValueError("is out of range once converted to UTC") from exc


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ByokBody(Body):
    # Printable ASCII, no whitespace: a pasted key with a stray newline, a NUL or any other
    # control character would be stored, then refused by every call's HTTP header.
    api_key: str = Field(min_length=8, max_length=1000, pattern=r"^[\x21-\x7e]+$")


class LimitBody(Body):
    limit: float | None = Field(ge=0, le=1e12, allow_inf_nan=False)


def parse_query(model: type[Q]) -> Q:
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise bad_request(f"{param or 'query'}: {first['msg']}", param) from exc


def in_session(work: Callable[[Session], R]) -> R:
    """Run ``work`` in one transaction; a database outage is a 503, never a half write."""
    try:
        with session_scope() as session:
            return work(session)
    except SQLAlchemyError as exc:
        raise unavailable("database") from exc


def _cursor(rows: list[Any], limit: int) -> str | None:
    return str(rows[-1].id) if len(rows) == limit else None


# Credits


@bp.get("/credits")
def credits() -> Response:
    owner = authenticate()
    page = parse_query(Page)

    def read(session: Session) -> tuple[ledger.Wallet, list[ledger.Entry]]:
        return (ledger.wallet(session, owner.account_id),
                ledger.entries(session, owner.account_id, page.limit, page.cursor))

    wallet, rows = in_session(read)
    return jsonify({
        "balance": float(wallet.balance),
        "reserved": float(wallet.reserved),
        "available": float(wallet.available),
        "ledger": [r.view() for r in rows],
        "next_cursor": _cursor(rows, page.limit),
    })


# Usage


def _usage_filters(owner: KeyOwner, query: UsageQuery) -> list[Any]:
    where: list[Any] = [RequestLog.account_id == owner.account_id]
    if query.model is not None:
        where.append(RequestLog.model == query.model)
    if query.since is not None:
        where.append(RequestLog.created_at >= query.since)
    if query.until is not None:
        where.append(RequestLog.created_at < query.until)
    return where


def _row_view(r: RequestLog) -> dict[str, Any]:
    return {
        "id": r.id,
        "job_id": r.job_id,
        "model": r.model,
        "provider": r.provider,
        "role": r.role or None,
        "status": r.status,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "ttft_ms": None if r.ttft_ms is None else float(r.ttft_ms),
        "latency_ms": float(r.latency_ms),
        "cost": float(r.cost),
        "error": r.error,
        "created_at": as_utc(r.created_at).isoformat(),
    }


def _medians(session: Session, where: list[Any]) -> dict[str, float]:
    if session.get_bind().dialect.name == "postgresql":
        p50 = func.percentile_cont(0.5).within_group(RequestLog.latency_ms)
        rows = session.execute(
            select(RequestLog.model, p50).where(*where).group_by(RequestLog.model)
        ).all()
        return {m: float(v) for m, v in rows}
    # SQLite has no percentile aggregate: the one-machine start computes it here.
    by_model: dict[str, list[float]] = {}
    for m, v in session.execute(select(RequestLog.model, RequestLog.latency_ms).where(*where)):
        by_model.setdefault(m, []).append(float(v))
    return {m: statistics.median(v) for m, v in by_model.items()}


def _aggregates(session: Session, where: list[Any]) -> list[dict[str, Any]]:
    errors = func.sum(case((RequestLog.status == "error", 1), else_=0))
    rows = session.execute(
        select(RequestLog.model, func.count(), func.sum(RequestLog.prompt_tokens),
               func.sum(RequestLog.completion_tokens), func.sum(RequestLog.cost), errors)
        .where(*where).group_by(RequestLog.model).order_by(RequestLog.model)
    ).all()
    medians = _medians(session, where)
    return [
        {
            "model": model,
            "requests": count,
            "prompt_tokens": int(p or 0),
            "completion_tokens": int(c or 0),
            "cost": float(ledger.q(cost or 0)),
            "p50_latency_ms": round(medians.get(model, 0.0), 3),
            "error_rate": round(int(err or 0) / count, 4) if count else 0.0,
        }
        for model, count, p, c, cost, err in rows
    ]


@bp.get("/usage")
def usage() -> Response:
    owner = authenticate()
    query = parse_query(UsageQuery)
    where = _usage_filters(owner, query)

    def read(session: Session) -> tuple[list[RequestLog], list[dict[str, Any]]]:
        page = select(RequestLog).where(*where)
        if query.cursor is not None:
            page = page.where(RequestLog.id < query.cursor)
        rows = list(session.execute(page.order_by(RequestLog.id.desc()).limit(query.limit))
                    .scalars())
        return rows, _aggregates(session, where)

    rows, models = in_session(read)
    return jsonify({
        "data": [_row_view(r) for r in rows],
        "next_cursor": _cursor(rows, query.limit),
        "models": models,
    })


# Budgets


def _limit_value(body: LimitBody) -> Decimal | None:
    return None if body.limit is None else ledger.q(body.limit)


def _session_id(session_id: str) -> str:
    if len(session_id) > MAX_SESSION_ID:
        raise bad_request(f"session_id is longer than {MAX_SESSION_ID} characters", "session_id")
    return session_id


@bp.get("/budgets")
def get_budgets() -> Response:
    owner = authenticate()

    def read(session: Session) -> tuple[budgets.Usage, Decimal | None]:
        return (budgets.key_usage(session, owner.account_id, owner.key_id),
                budgets.session_default(session, owner.account_id))

    key, default = in_session(read)
    return jsonify({"key": key.view(),
                    "session_default": None if default is None else float(default)})


@bp.put("/budgets/session-default")
def put_session_default() -> Response:
    owner = authenticate()
    limit = _limit_value(parse_body(LimitBody))
    in_session(lambda s: budgets.set_session_default(s, owner.account_id, limit))
    return jsonify({"session_default": None if limit is None else float(limit)})


def _session_view(owner: KeyOwner, session_id: str) -> dict[str, Any]:
    def read(session: Session) -> budgets.Usage:
        default = budgets.session_default(session, owner.account_id)
        return budgets.usage(session, owner.account_id, budgets.SESSION, session_id, default)

    return {"session_id": session_id, **in_session(read).view()}


@bp.get("/budgets/sessions/<session_id>")
def get_session_budget(session_id: str) -> Response:
    owner = authenticate()
    return jsonify(_session_view(owner, _session_id(session_id)))


@bp.put("/budgets/sessions/<session_id>")
def put_session_budget(session_id: str) -> Response:
    owner = authenticate()
    sid = _session_id(session_id)
    limit = _limit_value(parse_body(LimitBody))
    in_session(lambda s: budgets.set_session_limit(s, owner.account_id, sid, limit))
    return jsonify(_session_view(owner, sid))


# BYOK: the clear key goes in once and never comes back out.


def _provider(name: str) -> str:
    if name not in get_registry().providers:
        raise bad_request(f"unknown provider {name[:50]!r}; see GET /api/v1/models", "provider")
    return name


def _secret() -> str:
    settings: Settings = current_app.config["CHORUS_SETTINGS"]
    try:
        byok.check_secret(settings.secret_key)
    except byok.ByokError as exc:
        raise ApiError(503, "unavailable", f"BYOK is not configured on this server: {exc}") from exc
    return settings.secret_key


@bp.put("/byok/<provider>")
def put_byok(provider: str) -> Response:
    owner = authenticate()
    name = _provider(provider)
    secret = _secret()
    api_key = parse_body(ByokBody).api_key
    stored = in_session(lambda s: byok.put(s, secret, owner.account_id, name, api_key))
    return jsonify(stored.view())


@bp.get("/byok")
def list_byok() -> Response:
    owner = authenticate()
    rows = in_session(lambda s: byok.listing(s, owner.account_id))
    return jsonify({"data": [r.view() for r in rows]})


@bp.delete("/byok/<provider>")
def delete_byok(provider: str) -> Response:
    owner = authenticate()
    name = _provider(provider)
    if not in_session(lambda s: byok.remove(s, owner.account_id, name)):
        raise not_found("stored key for this provider")
    return jsonify({"provider": name, "deleted": True})
