"""OpenAI-compatible endpoints, so the official SDKs work by changing only ``base_url``.

A completion is an ordinary Chorus chat job (same auth, validation, credits, limits and
queue); this module only translates the request in and the job's events out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import ValidationError

from api import idempotency, replays
from api.auth import authenticate
from api.errors import ApiError, bad_request, not_found
from api.jobs import replayed_job, start_job
from api.owned import load_job
from api.streaming import sse_response, wait_final
from api.submit import enqueue, parse_body
from shared import events
from shared.registry import get_registry
from shared.schemas import ChatCompletionRequest, ChatRequest
from shared.tables import as_utc

bp = Blueprint("openai_compat", __name__, url_prefix="/v1")

# The error ``type`` OpenAI sends per status; the SDK picks its exception by status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")


@bp.after_request
def _openai_error_shape(resp: Response) -> Response:
    """Every error of these routes (auth, limits, credits, validation, 5xx) in OpenAI's
    ``{"error": {message, type, param, code}}`` shape; Chorus extras ride along."""
    if resp.status_code < 400 or not resp.is_json:
        return resp
    body = resp.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return resp
    err = body["error"]
    status = resp.status_code
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    detail = {
        "message": str(err.get("message", "")),
        "type": kind,
        "param": err.get("param"),
        "code": err.get("code"),
        **{k: v for k, v in body.items() if k != "error"},
    }
    resp.set_data(json.dumps({"error": detail}))
    return resp


def to_chat_request(oreq: ChatCompletionRequest) -> ChatRequest:
    try:
        return ChatRequest.model_validate(oreq.chat_body())
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _openai_param([str(p) for p in first["loc"]])
        raise bad_request(f"{param or 'body'}: {first['msg']}", param) from exc


def _openai_param(loc: list[str]) -> str | None:
    """Where a field of the translated body came from in the OpenAI body."""
    if loc[:2] == ["routing", "fallback"]:
        loc = ["chorus", "fallback", *loc[2:]]
    elif loc and loc[0] in ("keep_running", "session_id"):
        loc = ["chorus", *loc]
    return ".".join(loc) or None


@bp.post("/chat/completions")
def chat_completions() -> Response:
    owner = authenticate()
    oreq = parse_body(ChatCompletionRequest)
    req = to_chat_request(oreq)
    claim = idempotency.claim("openai.chat_completions",
                              lambda: oreq.model_dump(mode="json", exclude_none=True))
    usage = bool(oreq.stream_options and oreq.stream_options.include_usage)
    try:
        job_id = start_job(owner, "chat", req, claim=claim)
    except idempotency.KeyUsed as used:
        job = load_job(replayed_job(used), owner.account_id)
        created = int(as_utc(job.created_at).timestamp())
        if oreq.stream:
            frames = ChunkFrames(job.id, created, oreq.model, include_usage=usage)
            return replays.stream(job, frames)
        try:
            resp = jsonify(completion_body(job.id, created, oreq.model, replays.final(job)))
        except ApiError as failed:
            resp = failed.response()
        return idempotency.mark_replayed(resp, job.id)
    created = int(time.time())
    # As in ``api.jobs.submit``: a request with a key runs on when its client leaves.
    keep = req.keep_running or claim is not None
    if oreq.stream:
        frames = ChunkFrames(job_id, created, oreq.model, include_usage=usage)
        resp = sse_response(job_id, cancel_on_disconnect=not keep, frames=frames, own=True)
        enqueue(job_id)
        return resp
    enqueue(job_id)
    final = wait_final(job_id, cancel_on_disconnect=not keep)
    resp = jsonify(completion_body(job_id, created, oreq.model, final))
    resp.headers["X-Chorus-Job-Id"] = job_id
    return resp


def _finish(raw: Any) -> str:
    return raw if raw in FINISH_REASONS else "stop"


def _chorus_info(final: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": final.get("job_id"),
        "status": final.get("status"),
        "credits_charged": final.get("credits_charged", 0.0),
        "resolved_model": final.get("resolved_model"),
    }


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def upstream_failure(final: dict[str, Any]) -> ApiError:
    error = dict(final.get("error") or {})
    status = int(error.pop("http_status", 502))
    return ApiError(status, str(error.get("code", "upstream_error")),
                    str(error.get("message", "the job failed")))


def completion_body(
    job_id: str, created: int, requested: str, final: dict[str, Any]
) -> dict[str, Any]:
    """A ``chat.completion`` object from the job's final data (a failed job raises)."""
    if final.get("status") == "failed":
        raise upstream_failure(final)
    tool_calls = final.get("tool_calls") or []
    text = final.get("full_content") or ""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if tool_calls and not text else text,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": created,
        "model": final.get("resolved_model") or final.get("model") or requested,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": _finish(final.get("finish_reason"))}],
        "usage": _usage(int(final.get("prompt_tokens") or 0),
                        int(final.get("completion_tokens") or 0)),
        "system_fingerprint": None,
        "chorus": _chorus_info(final),
    }


class ChunkFrames:
    """Turns a chat job's Chorus events into ``chat.completion.chunk`` SSE lines."""

    def __init__(self, job_id: str, created: int, model: str, *, include_usage: bool) -> None:
        self.head: dict[str, Any] = {"id": f"chatcmpl-{job_id}",
                                     "object": "chat.completion.chunk", "created": created}
        self.model = model
        self.include_usage = include_usage
        self.started = False
        self.finish_reason: str | None = None
        # Summed over the job's model calls (a mesh job may make several).
        self.prompt_tokens = 0
        self.completion_tokens = 0
        # What this stream has sent, and what of the text and tool-call fragments to
        # come it has sent already: after Redis lost the job's events, the worker says
        # the answer so far again, which an OpenAI client cannot take back.
        self.sent_chars = self.sent_tools = 0
        self.skip_chars = self.skip_tools = 0

    def __call__(self, seq: int | None, data: str) -> Iterable[bytes]:
        event = json.loads(data)
        if event.get("final"):
            return self._final(event)
        if event.get("event") == "reconnect":
            # The stream broke off, not the job: an OpenAI client cannot resume, so it is
            # told so (the SDK raises) rather than handed a silently cut answer.
            return (self._error("unavailable", f"{event['message']}; the job's events: "
                                f"GET /api/v1/jobs/{event['job_id']}/events"),)
        if event.get("event") == "retry" and event.get("reason") == "events lost":
            self.skip_chars, self.skip_tools = self.sent_chars, self.sent_tools
            # Ended calls are said again too, usage and all.
            self.prompt_tokens = self.completion_tokens = 0
            return ()
        if event.get("event", "chunk") != "chunk":
            return ()
        self.model = str(event.get("model") or self.model)
        if event.get("done"):
            self.finish_reason = event.get("finish_reason") or self.finish_reason
            self.prompt_tokens += int(event.get("prompt_tokens") or 0)
            self.completion_tokens += int(event.get("completion_tokens") or 0)
            return ()
        text: str = event.get("delta") or ""
        tools: list[dict[str, Any]] = event.get("tool_calls") or []
        if self.skip_chars or self.skip_tools:
            text, tools = self._new_part(text, tools)
            if not (text or tools):
                return ()
        delta: dict[str, Any] = {}
        if not self.started:
            delta["role"] = "assistant"
            self.started = True
        if text:
            delta["content"] = text
            self.sent_chars += len(text)
        if tools:
            delta["tool_calls"] = [_tool_call_delta(t) for t in tools]
            self.sent_tools += len(tools)
        return (self._line([{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": None}]),)

    def _new_part(self, text: str, tools: list[dict[str, Any]]
                  ) -> tuple[str, list[dict[str, Any]]]:
        """What of a chunk said again after an ``events lost`` retry is new."""
        cut, drop = min(self.skip_chars, len(text)), min(self.skip_tools, len(tools))
        self.skip_chars -= cut
        self.skip_tools -= drop
        return text[cut:], tools[drop:]

    def _final(self, final: dict[str, Any]) -> Iterable[bytes]:
        if final.get("status") == "failed":
            err = upstream_failure(final)
            return (self._error(err.code, err.message),)
        self.model = str(final.get("resolved_model") or self.model)
        prompt = int(final.get("prompt_tokens") or self.prompt_tokens)
        completion = int(final.get("completion_tokens") or self.completion_tokens)
        finish = _finish(final.get("finish_reason") or self.finish_reason)
        out = [self._line([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}],
                          chorus=_chorus_info(final))]
        if self.include_usage:
            out.append(self._line([], usage=_usage(prompt, completion)))
        return out

    def _error(self, code: str, message: str) -> bytes:
        body = {"error": {"message": message, "type": "api_error", "param": None,
                          "code": code}}
        return f"data: {events.encode(body)}\n\n".encode()

    def _line(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {**self.head, "model": self.model, "choices": choices}
        if self.include_usage:
            chunk["usage"] = None
        chunk.update(extra)
        return f"data: {events.encode(chunk)}\n\n".encode()


def _tool_call_delta(fragment: dict[str, Any]) -> dict[str, Any]:
    """A Chorus tool-call fragment as OpenAI streams it: id, type and name open a call."""
    out: dict[str, Any] = {"index": fragment.get("index", 0)}
    function: dict[str, Any] = {"arguments": fragment.get("arguments") or ""}
    if fragment.get("id"):
        out["id"] = fragment["id"]
        out["type"] = "function"
    if fragment.get("name"):
        function["name"] = fragment["name"]
    out["function"] = function
    return out


def _model_object(model_id: str, owner: str) -> dict[str, Any]:
    # The registry has no creation dates; 0 says "unknown" in the field the SDK requires.
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


def model_objects() -> list[dict[str, Any]]:
    registry = get_registry()
    out = [_model_object("auto", "chorus")]
    out += [_model_object(m.id, m.provider.name) for m in registry.models.values()]
    return out


@bp.get("/models")
def list_models() -> Response:
    authenticate()
    return jsonify({"object": "list", "data": model_objects()})


@bp.get("/models/<path:model_id>")
def get_model(model_id: str) -> Response:
    authenticate()
    for obj in model_objects():
        if obj["id"] == model_id:
            return jsonify(obj)
    raise not_found("model")
