"""The Flask application factory and its Celery binding (Flask's own Celery pattern)."""

from __future__ import annotations

import logging

import redis
from celery import Celery
from flask import Flask, Response, request
from gunicorn.http.errors import ParseException
from redis.maint_notifications import MaintNotificationsConfig
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api import account, batches, drain, jobs, logs, openai_compat, openapi, ratelimit, system, ws
from api.errors import ApiError, bad_request
from api.pipelines import on_cancel as revoke_pipeline
from api.relay import Relay
from shared import loglines, readiness
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)


def celery_init_app(app: Flask) -> Celery:
    """Bind the shared Celery app; the API only sends tasks by name, never runs them."""
    from workers.app import make_celery

    celery = make_celery(app.config["CHORUS_SETTINGS"])
    app.extensions["celery"] = celery
    return celery


def make_redis(url: str) -> redis.Redis:
    # No maintenance-notification handshake on connect: one more reply read on the relay's
    # shared connection, racing its reader, for a feature a single server does not use.
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=400, timeout=5, socket_connect_timeout=2, socket_timeout=10,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    return redis.Redis(connection_pool=pool)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    readiness.install()
    logs.install()
    app = Flask("chorus")
    app.config["CHORUS_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    client = make_redis(settings.redis_url)
    app.extensions["chorus.redis"] = client
    app.extensions["chorus.relay"] = Relay(client)
    app.extensions["chorus.drain"] = drain.Drain()
    app.extensions["chorus.model_health"] = system.health_reader(client, settings)
    celery_init_app(app)
    # Metered before any view runs; every response gets the X-RateLimit-* headers.
    ratelimit.init_app(app, client, settings)
    app.before_request(_printable_url)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(system.bp)
    app.register_blueprint(openai_compat.bp)
    app.register_blueprint(openapi.bp)
    ws.init_app(app)
    # A client that leaves mid-stream stops its job (unless it asked to keep it running).
    app.extensions["chorus.on_disconnect"] = jobs.cancel_after_disconnect
    app.extensions["chorus.on_cancel"] = revoke_pipeline
    _register_errors(app)
    return app


def _printable_url() -> None:
    """A control character in a path parameter or the query string is a 400: no id,
    model, date or number holds one, and PostgreSQL cannot even store a NUL. A path no
    route matches stays a 404."""
    if request.routing_exception is not None:
        return
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str) and loglines.CONTROL.search(value):
            raise bad_request(f"{name} holds a control character", name)
    if not request.query_string:
        return
    for name, value in request.args.items(multi=True):
        if loglines.CONTROL.search(name) or loglines.CONTROL.search(value):
            param = loglines.escape(name)[:100]
            raise bad_request(f"query parameter {param} holds a control character", param)


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return exc.response()

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return ApiError(413, "payload_too_large", f"body over {limit} bytes").response()

    @app.errorhandler(ParseException)
    def _unreadable_body(exc: ParseException) -> Response:
        # gunicorn reads a chunked body as the view asks for it: broken framing surfaces
        # here, not before the view runs. (A client gone mid-body is an OSError, which
        # werkzeug's stream already turns into a 400.)
        return bad_request(f"the request body could not be read ({type(exc).__name__})"
                           ).response()

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.code or 500, "http_error")
        return ApiError(exc.code or 500, code, exc.description or code).response()

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError) -> Response:
        log.warning("redis error on %s: %s", request.path, exc)
        return ApiError(503, "unavailable", "redis is unavailable; try again shortly").response()

    @app.errorhandler(SQLAlchemyError)
    def _db_down(exc: SQLAlchemyError) -> Response:
        log.warning("database error on %s: %s", request.path, exc)
        return ApiError(503, "unavailable", "database is unavailable; try again shortly").response()

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Never leak a stack trace or internals to the client; the log has the details.
        log.exception("unhandled error on %s", request.path)
        return ApiError(500, "internal_error", "internal server error").response()
