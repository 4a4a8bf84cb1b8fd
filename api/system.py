"""Operational endpoints: liveness, readiness, Prometheus metrics and the model list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.auth import authenticate
from shared.breaker import Breaker, BreakerConfig, model_health
from shared.db import session_scope
from shared.registry import ModelSpec, get_registry
from shared.settings import Settings

bp = Blueprint("system", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    checks: dict[str, str] = {}
    try:
        current_app.extensions["chorus.redis"].ping()
        checks["redis"] = "ok"
    except redis.RedisError as exc:
        checks["redis"] = f"down: {type(exc).__name__}"
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as exc:
        checks["database"] = f"down: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    resp = jsonify({"status": "ok" if ok else "unavailable", "checks": checks})
    resp.status_code = 200 if ok else 503
    return resp


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


def model_view(m: ModelSpec) -> dict[str, object]:
    return {
        "id": m.id,
        "provider": m.provider.name,
        "upstream": m.upstream,
        "pricing": {
            "input_per_mtok": float(m.input_per_mtok),
            "output_per_mtok": float(m.output_per_mtok),
            "unit": "credits",
        },
        "context_window": m.context_window,
        "max_output_tokens": m.max_output_tokens,
        "capabilities": sorted(m.capabilities),
        "tags": sorted(m.tags),
    }


def health_reader(client: redis.Redis, settings: Settings) -> Callable[[str], dict[str, Any]]:
    """Live health per model (breaker, recent error rate and latency, last probe)."""
    breaker = Breaker(client, BreakerConfig.from_settings(settings))

    def read(model_id: str) -> dict[str, Any]:
        try:
            return model_health(client, breaker, model_id)
        except redis.RedisError:
            # The registry is still worth serving when live health cannot be read.
            return {"breaker": None, "error": "health unavailable (redis)"}

    return read


@bp.get("/api/v1/models")
def models() -> Response:
    authenticate()
    registry = get_registry()
    health = current_app.extensions.get("chorus.model_health")
    data = []
    for m in registry.models.values():
        view = model_view(m)
        if health is not None:
            view["health"] = health(m.id)
        data.append(view)
    return jsonify({"object": "list", "data": data})
