"""Translate Chorus calls to OpenAI chat completions and back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shared.registry import ModelSpec
from workers.providers.base import (
    ChatCall,
    Completion,
    Delta,
    HttpRequest,
    ToolCallDelta,
    Usage,
    normalize_finish,
    tool_call,
)
from workers.providers.errors import (
    AuthError,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    ServerError,
    StreamBroken,
    UpstreamStatusError,
    error_for_status,
)

FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "error": "error",
}

# The body's error ``code`` / ``type`` refine the status (a 429 may be a spent quota).
ERROR_KINDS: dict[str, type[UpstreamStatusError]] = {
    "insufficient_quota": QuotaExhausted,
    "rate_limit_exceeded": RateLimited,
    "requests": RateLimited,
    "tokens": RateLimited,
    "invalid_api_key": AuthError,
    "authentication_error": AuthError,
    "permission_error": AuthError,
    "server_error": ServerError,
    "service_unavailable": ServerError,
    "overloaded_error": ServerError,
}


def _usage(raw: Mapping[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))


def _error_kind(error: Any) -> tuple[type[UpstreamStatusError] | None, str]:
    if not isinstance(error, dict):
        return None, ""
    for key in ("code", "type"):
        value = error.get(key)
        if isinstance(value, str) and value in ERROR_KINDS:
            return ERROR_KINDS[value], value
    return None, str(error.get("type") or error.get("code") or "")


def _tool_calls(raw: Any) -> list[dict[str, Any]]:
    out = []
    for i, tc in enumerate(raw or []):
        fn = tc.get("function") or {}
        out.append(
            tool_call(tc.get("id") or f"call_{i}", fn.get("name") or "", fn.get("arguments") or "")
        )
    return out


class OpenAIAdapter:
    """Quirks (``provider.quirks``): ``stream_usage`` false for hosts that reject
    ``stream_options``; ``max_tokens_field`` for hosts that want another name (OpenAI's
    reasoning models want ``max_completion_tokens``)."""

    def build_request(
        self, model: ModelSpec, call: ChatCall, *, stream: bool, api_key: str
    ) -> HttpRequest:
        quirks = model.provider.quirks
        body: dict[str, Any] = {"model": model.upstream, "messages": call.messages}
        if stream:
            body["stream"] = True
            if quirks.get("stream_usage", True):
                body["stream_options"] = {"include_usage": True}
        if call.max_tokens is not None:
            body[quirks.get("max_tokens_field", "max_tokens")] = call.max_tokens
        for name in ("temperature", "top_p", "stop", "tools", "tool_choice", "response_format"):
            value = getattr(call, name)
            if value is not None:
                body[name] = value
        headers = {"content-type": "application/json", **model.provider.headers}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        return HttpRequest("POST", f"{model.provider.base_url}/chat/completions", headers, body)

    def parse_response(self, body: dict[str, Any]) -> Completion:
        try:
            choice = body["choices"][0]
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError) as exc:
            raise StreamBroken("response has no choices", raw_body=json.dumps(body)[:4000]) from exc
        calls = _tool_calls(message.get("tool_calls"))
        finish = normalize_finish(FINISH, choice.get("finish_reason")) or "stop"
        return Completion(
            text=message.get("content") or "",
            tool_calls=calls,
            finish_reason="tool_calls" if calls and finish == "stop" else finish,
            usage=_usage(body.get("usage")),
        )

    def parse_stream_event(self, event: str, data: str) -> list[Delta]:
        if data.strip() == "[DONE]":
            return []
        try:
            chunk = json.loads(data)
            choices = chunk.get("choices") or []
        except (ValueError, AttributeError) as exc:
            raise StreamBroken("malformed stream chunk", raw_body=data[:4000]) from exc
        if chunk.get("error") and not choices:
            raise self._stream_error(chunk["error"], data)
        out: list[Delta] = []
        for choice in choices[:1]:
            delta = choice.get("delta") or {}
            calls = [
                ToolCallDelta(
                    index=int(tc.get("index", 0)),
                    id=tc.get("id"),
                    name=(tc.get("function") or {}).get("name"),
                    arguments=(tc.get("function") or {}).get("arguments") or "",
                )
                for tc in delta.get("tool_calls") or []
            ]
            out.append(
                Delta(
                    text=delta.get("content") or "",
                    tool_calls=calls,
                    finish_reason=normalize_finish(FINISH, choice.get("finish_reason")),
                )
            )
        usage = _usage(chunk.get("usage"))
        if usage is not None:
            out.append(Delta(usage=usage))
        return out

    def _stream_error(self, error: Any, data: str) -> ProviderError:
        """An error sent as a stream chunk has no status; its type says how bad it is."""
        cls, kind = _error_kind(error)
        chosen = cls or ServerError
        return chosen(f"provider sent an error event ({kind or 'unknown'})", raw_body=data[:4000])

    def map_error(self, status: int, body: str, headers: Mapping[str, str]) -> ProviderError:
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            error = None
        cls, kind = _error_kind(error)
        # A type only refines within its status family; a 500 is never a caller's mistake.
        if cls is not None and status >= 500 and not issubclass(cls, ServerError):
            cls = None
        return error_for_status(status, body, headers, cls=cls, detail=kind)
