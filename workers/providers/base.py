"""The one interface every provider adapter implements, and the types it speaks."""

from __future__ import annotations

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
    """A fragment of a streamed tool call; fragments with the same index concatenate."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


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
