"""The mock's Flask app: the three providers' chat paths plus the ``/_mock`` control endpoint."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from flask import Flask, Response, request

from workers.providers.mock.anthropic_format import AnthropicFormat
from workers.providers.mock.behaviour import DEFAULT_PROFILES, ConfigError, MockState
from workers.providers.mock.gemini_format import GeminiFormat
from workers.providers.mock.openai_format import OpenAIFormat, models_list
from workers.providers.mock.plan import build_plan
from workers.providers.mock.stream import (
    MALFORMED,
    BadRequestBody,
    WireFormat,
    abort,
    client_gone,
    error_message,
    generation_seconds,
    hold,
    paced,
)

# Set by the gevent server's handler so faults can drop or watch the raw connection.
SOCKET_KEY = "chorus.socket"
SECRET_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json", headers=headers)


def _recorded_headers() -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        lower = name.lower()
        # Keep enough of a key to tell which one was sent, never the key itself.
        if lower in SECRET_HEADERS and value:
            value = f"...{value[-4:]}" if len(value) >= 12 else "***"
        out[lower] = value
    return out


def create_app(state: MockState | None = None) -> Flask:
    """The mock as a WSGI app; ``state`` is shared by every request it serves."""
    speed = float(os.environ.get("CHORUS_MOCK_SPEED", "1") or 1)
    mock = state if state is not None else MockState(speed=speed)
    app = Flask("chorus-mock")
    app.config["mock_state"] = mock
    openai, anthropic, gemini = OpenAIFormat(), AnthropicFormat(), GeminiFormat()

    @app.get("/_mock/health")
    def health() -> Response:
        return _json({"status": "ok", "formats": ["openai", "anthropic", "gemini"]})

    @app.post("/_mock/reset")
    def reset() -> Response:
        mock.reset()
        return _json({"status": "reset"})

    @app.get("/_mock/config")
    def config_view() -> Response:
        return _json({"overrides": mock.overrides_view(), "defaults": _profiles()})

    @app.post("/_mock/config")
    def configure() -> Response:
        try:
            return _json(mock.configure(request.get_json(silent=True, force=True)))
        except ConfigError as exc:
            return _json({"error": {"message": str(exc)}}, 400)

    @app.get("/_mock/stats")
    def stats() -> Response:
        return _json(mock.stats())

    @app.get("/_mock/requests")
    def recorded() -> Response:
        limit = request.args.get("limit", default=20, type=int) or 0
        model = request.args.get("model") or None
        # A bare list, oldest first: ``[-1]`` is the latest call.
        return _json(mock.recorded(model, limit))

    @app.get("/v1/models")
    def list_models() -> Response:
        return _json(models_list(sorted(DEFAULT_PROFILES)))

    @app.post("/v1/chat/completions")
    def openai_chat() -> Response:
        return _serve(mock, openai, None, None)

    @app.post("/v1/messages")
    def anthropic_messages() -> Response:
        return _serve(mock, anthropic, None, None)

    # The REST API serves both versions; newer SDKs default to v1.
    @app.post("/v1beta/models/<path:target>")
    @app.post("/v1/models/<path:target>")
    def gemini_generate(target: str) -> Response:
        model, _, method = target.rpartition(":")
        if method not in ("generateContent", "streamGenerateContent") or not model:
            return _json(gemini.error_body(404, f"unknown method {target!r}"), 404)
        return _serve(
            mock, gemini, model.removeprefix("models/"), method == "streamGenerateContent"
        )

    return app


def _profiles() -> dict[str, Any]:
    return {name: vars(p) for name, p in DEFAULT_PROFILES.items()}


def _serve(
    mock: MockState, fmt: WireFormat, url_model: str | None, url_stream: bool | None
) -> Response:
    """One chat call in any format: parse, resolve faults, then answer or stream."""
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        return _json(fmt.error_body(400, "request body must be a JSON object"), 400)
    try:
        req = fmt.parse_request(body, url_model)
    except (BadRequestBody, TypeError, ValueError) as exc:
        return _json(fmt.error_body(400, str(exc)), 400)
    if url_stream is not None:
        req.stream = url_stream
    settings = mock.begin_call(req.model, request.path, body, _recorded_headers())
    sock = request.environ.get(SOCKET_KEY)
    fault = settings.fault
    if fault is not None and (fault.after_tokens is None or not req.stream):
        if fault.kind == "status":
            retry = fault.retry_after
            headers = {"Retry-After": f"{retry:g}"} if retry is not None else None
            status = fault.status
            return _json(fmt.error_body(status, error_message(status)), status, headers)
        if fault.kind == "hang":
            gone = hold(sock)
            mock.count(req.model, "client_disconnect" if gone else "fault")
            abort(sock)
            return Response(b"", status=504)
    plan = build_plan(req, settings.profile, settings.reply)
    if req.stream:
        units = fmt.render_stream(plan, req)
        return Response(
            paced(mock, fmt, plan, units, settings, sock),
            mimetype="text/event-stream",
            headers=SSE_HEADERS,
        )
    time.sleep(generation_seconds(plan, settings))
    if fault is not None and fault.kind == "disconnect":
        abort(sock)
        return Response(b"", status=502)
    if fault is not None and fault.kind == "malformed":
        return Response(MALFORMED, status=200, mimetype="application/json")
    mock.count(req.model, "client_disconnect" if client_gone(sock) else "completed")
    return _json(fmt.render_body(plan, req))
