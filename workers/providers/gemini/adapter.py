"""Translate Chorus calls to Gemini ``generateContent`` and its SSE stream back."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from shared.registry import ModelSpec
from workers.providers.base import (
    ChatCall,
    Completion,
    Delta,
    HttpRequest,
    StreamAssembler,
    ToolCallDelta,
    Usage,
    normalize_finish,
)
from workers.providers.errors import (
    AuthError,
    BadRequest,
    ProviderError,
    RateLimited,
    ServerError,
    StreamBroken,
    UpstreamStatusError,
    error_for_status,
)
from workers.providers.gemini import translate

FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "LANGUAGE": "content_filter",
    "MALFORMED_FUNCTION_CALL": "error",
    "UNEXPECTED_TOOL_CALL": "error",
}

# google.rpc status names refine the HTTP status (e.g. an invalid key is a 400).
STATUSES: dict[str, type[UpstreamStatusError]] = {
    "RESOURCE_EXHAUSTED": RateLimited,
    "UNAVAILABLE": ServerError,
    "INTERNAL": ServerError,
    "DEADLINE_EXCEEDED": ServerError,
    "UNAUTHENTICATED": AuthError,
    "PERMISSION_DENIED": AuthError,
    "INVALID_ARGUMENT": BadRequest,
    "FAILED_PRECONDITION": BadRequest,
    "NOT_FOUND": BadRequest,
}
AUTH_REASONS = {"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"}
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _usage(raw: Mapping[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    # Thinking tokens are billed as output but reported apart from the answer's.
    output = int(raw.get("candidatesTokenCount") or 0) + int(raw.get("thoughtsTokenCount") or 0)
    return Usage(int(raw.get("promptTokenCount") or 0), output)


def _details(error: dict[str, Any]) -> tuple[set[str], float | None]:
    """(ErrorInfo reasons, RetryInfo delay in seconds) from a google.rpc error."""
    reasons: set[str] = set()
    delay = None
    for d in error.get("details") or []:
        if not isinstance(d, dict):
            continue
        if d.get("reason"):
            reasons.add(str(d["reason"]))
        match = _DELAY.match(str(d.get("retryDelay", "")))
        if match:
            delay = float(match.group(1))
    return reasons, delay


def _classify(
    error: Any, status: int
) -> tuple[type[UpstreamStatusError] | None, str, float | None]:
    if not isinstance(error, dict):
        return None, "", None
    kind = str(error.get("status") or "")
    reasons, delay = _details(error)
    cls = AuthError if reasons & AUTH_REASONS else STATUSES.get(kind)
    if cls is not None and status >= 500 and not issubclass(cls, ServerError):
        cls = None
    return cls, kind, delay


class GeminiAdapter:
    def build_request(
        self, model: ModelSpec, call: ChatCall, *, stream: bool, api_key: str
    ) -> HttpRequest:
        system, contents = translate.contents(call.messages)
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        config = translate.generation_config(call)
        if config:
            body["generationConfig"] = config
        if call.tools:
            body["tools"] = translate.tools(call.tools)
            tool_config = translate.tool_config(call.tool_choice)
            if tool_config is not None:
                body["toolConfig"] = tool_config
        headers = {"content-type": "application/json", **model.provider.headers}
        if api_key:
            headers["x-goog-api-key"] = api_key
        base = model.provider.base_url
        if not base.endswith(("/v1beta", "/v1")):
            base = f"{base}/v1beta"
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return HttpRequest("POST", f"{base}/models/{model.upstream}:{method}", headers, body)

    def parse_response(self, body: dict[str, Any]) -> Completion:
        if not body.get("candidates") and not body.get("promptFeedback"):
            raise StreamBroken("response has no candidates", raw_body=json.dumps(body)[:4000])
        assembler = StreamAssembler()
        for delta in self._deltas(body):
            assembler.feed(delta)
        completion = assembler.completion([])
        completion.usage = assembler.usage
        return completion

    def parse_stream_event(self, event: str, data: str) -> list[Delta]:
        try:
            chunk = json.loads(data)
            if not isinstance(chunk, dict):
                raise ValueError("chunk is not an object")
        except ValueError as exc:
            raise StreamBroken("malformed stream chunk", raw_body=data[:4000]) from exc
        if chunk.get("error"):
            error = chunk["error"]
            status = int(error.get("code") or 500) if isinstance(error, dict) else 500
            cls, kind, delay = _classify(error, status)
            chosen = cls or (ServerError if status >= 500 else BadRequest)
            raise chosen(
                f"provider sent an error chunk ({kind or status})",
                status=status,
                raw_body=data[:4000],
                retry_after=delay,
            )
        return self._deltas(chunk)

    def _deltas(self, chunk: dict[str, Any]) -> list[Delta]:
        out: list[Delta] = []
        candidates = chunk.get("candidates") or []
        if candidates:
            candidate = candidates[0]
            parts = (candidate.get("content") or {}).get("parts") or []
            # Thought summaries are flagged ``thought``; they are not the answer.
            text = "".join(p.get("text", "") for p in parts if "text" in p and not p.get("thought"))
            calls = [
                ToolCallDelta(
                    index=i,
                    id=p["functionCall"].get("id"),
                    name=p["functionCall"].get("name", ""),
                    arguments=json.dumps(p["functionCall"].get("args") or {}),
                    complete=True,
                )
                for i, p in enumerate(parts)
                if isinstance(p.get("functionCall"), dict)
            ]
            finish = normalize_finish(FINISH, candidate.get("finishReason"))
            if finish == "stop" and calls:
                finish = "tool_calls"
            out.append(Delta(text=text, tool_calls=calls, finish_reason=finish))
        elif (chunk.get("promptFeedback") or {}).get("blockReason"):
            out.append(Delta(finish_reason="content_filter"))
        usage = _usage(chunk.get("usageMetadata"))
        if usage is not None:
            out.append(Delta(usage=usage))
        return out

    def map_error(self, status: int, body: str, headers: Mapping[str, str]) -> ProviderError:
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            error = None
        cls, kind, delay = _classify(error, status)
        exc = error_for_status(status, body, headers, cls=cls, detail=kind)
        if exc.retry_after is None:
            exc.retry_after = delay
        return exc
