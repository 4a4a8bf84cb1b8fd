"""Translate Chorus calls to the Anthropic Messages API and its event stream back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shared.registry import ModelSpec
from workers.providers.anthropic import translate
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
    BadRequest,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    ServerError,
    StreamBroken,
    UpstreamStatusError,
    error_for_status,
)

API_VERSION = "2023-06-01"

FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# error.type -> (class, the status it stands for when it arrives inside a stream)
ERROR_TYPES: dict[str, tuple[type[UpstreamStatusError], int]] = {
    "invalid_request_error": (BadRequest, 400),
    "authentication_error": (AuthError, 401),
    "billing_error": (QuotaExhausted, 402),
    "permission_error": (AuthError, 403),
    "not_found_error": (BadRequest, 404),
    "request_too_large": (BadRequest, 413),
    "rate_limit_error": (RateLimited, 429),
    "api_error": (ServerError, 500),
    "timeout_error": (ServerError, 504),
    "overloaded_error": (ServerError, 529),
}


def _usage(raw: Mapping[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    # Cached prompt tokens are billed too, just at another rate; count them as input.
    prompt = sum(
        int(raw.get(k) or 0)
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    return Usage(prompt, int(raw.get("output_tokens") or 0))


def _error_type(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("type") or "") if isinstance(error, dict) else ""


class AnthropicAdapter:
    def build_request(
        self, model: ModelSpec, call: ChatCall, *, stream: bool, api_key: str
    ) -> HttpRequest:
        system, messages = translate.split_messages(call.messages)
        extra = translate.json_instruction(call.response_format)
        system = "\n\n".join(s for s in (system, extra) if s)
        body: dict[str, Any] = {
            "model": model.upstream,
            "messages": messages,
            # Required by the API; the model's ceiling when the caller set none.
            "max_tokens": call.max_tokens or model.max_output_tokens,
        }
        if system:
            body["system"] = system
        if stream:
            body["stream"] = True
        if call.temperature is not None:
            # Anthropic's scale stops at 1.0 where OpenAI's goes to 2.0.
            body["temperature"] = max(0.0, min(1.0, call.temperature))
        elif call.top_p is not None:
            # Recent models refuse temperature and top_p together; temperature wins.
            body["top_p"] = call.top_p
        stops = [s for s in call.stop or [] if s.strip()]
        if stops:
            body["stop_sequences"] = stops
        if call.tools:
            body["tools"] = translate.tools(call.tools)
            choice = translate.tool_choice(call.tool_choice)
            if choice is not None:
                body["tool_choice"] = choice
        headers = {
            "content-type": "application/json",
            "anthropic-version": API_VERSION,
            **model.provider.headers,
        }
        if api_key:
            headers["x-api-key"] = api_key
        base = model.provider.base_url
        url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
        return HttpRequest("POST", url, headers, body)

    def parse_response(self, body: dict[str, Any]) -> Completion:
        content = body.get("content")
        if not isinstance(content, list):
            raise StreamBroken("response has no content", raw_body=json.dumps(body)[:4000])
        text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
        calls = [
            tool_call(b.get("id", ""), b.get("name", ""), json.dumps(b.get("input") or {}))
            for b in content
            if b.get("type") == "tool_use"
        ]
        return Completion(
            text=text,
            tool_calls=calls,
            finish_reason=normalize_finish(FINISH, body.get("stop_reason")) or "stop",
            usage=_usage(body.get("usage")),
        )

    def parse_stream_event(self, event: str, data: str) -> list[Delta]:
        try:
            payload = json.loads(data)
            kind = payload.get("type") or event
        except (ValueError, AttributeError) as exc:
            raise StreamBroken("malformed stream event", raw_body=data[:4000]) from exc
        if kind == "message_start":
            usage = _usage((payload.get("message") or {}).get("usage"))
            # The output count here is a placeholder; message_delta brings the real one.
            return [Delta(usage=Usage(usage.prompt_tokens, 0))] if usage else []
        if kind == "content_block_start":
            return self._block_start(payload)
        if kind == "content_block_delta":
            return self._block_delta(payload)
        if kind == "message_delta":
            delta = payload.get("delta") or {}
            finish = normalize_finish(FINISH, delta.get("stop_reason"))
            return [Delta(finish_reason=finish, usage=_usage(payload.get("usage")))]
        if kind == "error":
            raise self._stream_error(payload, data)
        # ping, content_block_stop, message_stop, and event types added later.
        return []

    def _block_start(self, payload: dict[str, Any]) -> list[Delta]:
        block = payload.get("content_block") or {}
        index = int(payload.get("index", 0))
        if block.get("type") == "tool_use":
            start = ToolCallDelta(index=index, id=block.get("id"), name=block.get("name", ""))
            return [Delta(tool_calls=[start])]
        if block.get("type") == "text" and block.get("text"):
            return [Delta(text=block["text"])]
        return []

    def _block_delta(self, payload: dict[str, Any]) -> list[Delta]:
        delta = payload.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return [Delta(text=delta.get("text", ""))]
        if kind == "input_json_delta":
            index = int(payload.get("index", 0))
            fragment = ToolCallDelta(index=index, arguments=delta.get("partial_json", ""))
            return [Delta(tool_calls=[fragment])]
        # thinking_delta, signature_delta, citations_delta: not part of the answer text.
        return []

    def _stream_error(self, payload: dict[str, Any], data: str) -> ProviderError:
        """An ``error`` event mid-stream (typically ``overloaded_error``)."""
        kind = _error_type(payload)
        cls, status = ERROR_TYPES.get(kind, (ServerError, 500))
        return cls(
            f"provider sent an error event ({kind or 'unknown'})",
            status=status,
            raw_body=data[:4000],
        )

    def map_error(self, status: int, body: str, headers: Mapping[str, str]) -> ProviderError:
        try:
            kind = _error_type(json.loads(body))
        except ValueError:
            kind = ""
        cls = ERROR_TYPES[kind][0] if kind in ERROR_TYPES else None
        # The type refines within the status family: a 5xx stays retryable whatever it says.
        if cls is not None and status >= 500 and not issubclass(cls, ServerError):
            cls = None
        return error_for_status(status, body, headers, cls=cls, detail=kind)
