"""The one interface every provider adapter implements, and the types it speaks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.registry import ModelSpec
from workers.providers.errors import ProviderError

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "error")


@dataclass
class ChatCall:
    """A provider-neutral chat request: OpenAI-style messages plus sampling options."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


@dataclass
class ToolCallDelta:
    """A fragment of a streamed tool call; fragments with the same index concatenate.

    A fragment at a new index, with a new id, or marked ``complete`` (a provider that sends
    whole calls) starts a call; others continue the call open at that index.
    ``StreamAssembler`` renumbers calls 0, 1, 2… in start order and names calls without an
    id ``call_<n>``, so adapters may pass the provider's own block indices through.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    complete: bool = False


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # True when the provider reported none and Chorus counted offline.
    estimated: bool = False


@dataclass
class Delta:
    text: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass
class Completion:
    text: str
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    usage: Usage | None


@dataclass
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str]
    json: dict[str, Any]


class Adapter(Protocol):
    """Translate one wire format; the transport lives in ``client.py``."""

    def build_request(
        self, model: ModelSpec, call: ChatCall, *, stream: bool, api_key: str
    ) -> HttpRequest: ...

    def parse_response(self, body: dict[str, Any]) -> Completion: ...

    def parse_stream_event(self, event: str, data: str) -> list[Delta]:
        """Deltas carried by one SSE event; raises ``StreamBroken`` on malformed data."""
        ...

    def map_error(self, status: int, body: str, headers: Mapping[str, str]) -> ProviderError: ...


def normalize_finish(table: Mapping[str, str], raw: str | None) -> str | None:
    """One table per adapter; anything it does not know becomes ``stop``."""
    if raw is None:
        return None
    return table.get(raw, "stop")


def estimate_tokens(text: str) -> int:
    """Offline token count (about four characters a token) for providers that send no usage."""
    return 0 if not text else max(1, (len(text) + 3) // 4)


def messages_text(messages: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """The Chorus tool-call form (OpenAI's): arguments are a JSON string."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def parse_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments as an object, for wire formats that want JSON, not a string."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_value": value}


def merge_usage(old: Usage | None, new: Usage) -> Usage:
    """Providers report usage in pieces (input at the start, output at the end) or
    cumulatively; a later non-zero count wins, a zero never erases one."""
    if old is None:
        return new
    return Usage(
        new.prompt_tokens or old.prompt_tokens,
        new.completion_tokens or old.completion_tokens,
        estimated=new.estimated and old.estimated,
    )


class StreamAssembler:
    """Per-stream state the stateless adapters cannot keep: dense tool-call numbering,
    usage merged into one report, the full text, and ``stop`` after a tool call read as
    ``tool_calls`` (hosts disagree on that one)."""

    def __init__(self) -> None:
        self.text_parts: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self._open: dict[int, int] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def feed(self, delta: Delta) -> Delta | None:
        """The delta as consumers should see it (usage held back for ``final_usage``)."""
        if delta.usage is not None:
            self.usage = merge_usage(self.usage, delta.usage)
        calls = [self._call(tc) for tc in delta.tool_calls]
        finish = delta.finish_reason
        if finish == "stop" and self.calls:
            finish = "tool_calls"
        if finish is not None:
            self.finish_reason = finish
        if delta.text:
            self.text_parts.append(delta.text)
        if not (delta.text or calls or finish):
            return None
        return Delta(text=delta.text, tool_calls=calls, finish_reason=finish)

    def _call(self, tc: ToolCallDelta) -> ToolCallDelta:
        current = self._open.get(tc.index)
        starts = (
            current is None
            or tc.complete
            or (tc.id is not None and tc.id != self.calls[current]["id"])
        )
        if starts:
            dense = len(self.calls)
            self._open[tc.index] = dense
            call_id = tc.id or f"call_{dense}"
            self.calls.append(tool_call(call_id, tc.name or "", ""))
            out = ToolCallDelta(index=dense, id=call_id, name=tc.name or "")
        else:
            assert current is not None
            dense = current
            out = ToolCallDelta(index=dense)
            if tc.name and not self.calls[dense]["function"]["name"]:
                self.calls[dense]["function"]["name"] = out.name = tc.name
        self.calls[dense]["function"]["arguments"] += tc.arguments
        out.arguments = tc.arguments
        return out

    def final_usage(self, messages: list[dict[str, Any]]) -> Usage:
        """The provider's usage, or an offline estimate flagged ``estimated``."""
        if self.usage is not None and (self.usage.prompt_tokens or self.usage.completion_tokens):
            return self.usage
        produced = self.text + "".join(c["function"]["arguments"] for c in self.calls)
        return Usage(
            estimate_tokens(messages_text(messages)), estimate_tokens(produced), estimated=True
        )

    def completion(self, messages: list[dict[str, Any]]) -> Completion:
        return Completion(
            text=self.text,
            tool_calls=[dict(c, function=dict(c["function"])) for c in self.calls],
            finish_reason=self.finish_reason or "stop",
            usage=self.final_usage(messages),
        )
