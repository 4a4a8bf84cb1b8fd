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
)
from workers.providers.errors import ProviderError, StreamBroken, error_for_status

FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "error": "error",
}


def _usage(raw: Mapping[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))


class OpenAIAdapter:
    """Quirks (``provider.quirks``): ``stream_usage`` false for hosts that reject
    ``stream_options``; ``max_tokens_field`` for hosts that want another name."""

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
        return Completion(
            text=message.get("content") or "",
            tool_calls=list(message.get("tool_calls") or []),
            finish_reason=normalize_finish(FINISH, choice.get("finish_reason")) or "stop",
            usage=_usage(body.get("usage")),
        )

    def parse_stream_event(self, event: str, data: str) -> list[Delta]:
        if data.strip() == "[DONE]":
            return []
        try:
            chunk = json.loads(data)
            if "error" in chunk and "choices" not in chunk:
                raise StreamBroken(f"provider sent an error event: {data[:200]}", raw_body=data)
            choices = chunk.get("choices") or []
        except (ValueError, AttributeError) as exc:
            raise StreamBroken("malformed stream chunk", raw_body=data[:4000]) from exc
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

    def map_error(self, status: int, body: str, headers: Mapping[str, str]) -> ProviderError:
        return error_for_status(status, body, dict(headers))
