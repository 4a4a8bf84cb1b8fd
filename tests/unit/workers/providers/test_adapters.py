"""One suite, run over every adapter: recorded wire streams, error mapping, responses.

Streams under ``streams/`` were recorded from the mock provider answering each adapter's
own request (``capture_streams.py``), except ``*_multi_tool.sse``, written by hand in each
provider's documented shape (thinking blocks, text then several tool calls).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient
from httpx_sse import EventSource

from shared.registry import ModelSpec
from workers.providers.base import ChatCall, Delta, StreamAssembler
from workers.providers.client import stream_chat
from workers.providers.errors import (
    AuthError,
    BadRequest,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    ServerError,
    StreamBroken,
)
from workers.providers.mock.behaviour import MockState
from workers.providers.registry import get_adapter

STREAMS = Path(__file__).resolve().parent / "streams"
REPLY = "The quick brown fox jumps over the lazy dog."
PROMPT = [{"role": "user", "content": "What does the fox do?"}]
PROMPT_TOKENS = len("What does the fox do?") // 4
WEATHER_ARGS = {"location": "Paris", "unit": "c"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["location", "unit"],
        },
    },
}


def events(name: str, scenario: str) -> list[tuple[str, str]]:
    """The recorded stream as (event, data) pairs, decoded by the same SSE parser as the client."""
    raw = (STREAMS / f"{name}_{scenario}.sse").read_bytes()
    resp = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)
    return [(sse.event, sse.data) for sse in EventSource(resp).iter_sse()]


def replay(name: str, scenario: str, seen: list[Delta] | None = None) -> StreamAssembler:
    adapter = get_adapter(name)
    assembler = StreamAssembler()
    for event, data in events(name, scenario):
        for delta in adapter.parse_stream_event(event, data):
            if seen is not None:
                seen.append(delta)
            assembler.feed(delta)
    return assembler


# --- recorded streams ---------------------------------------------------------------


def test_text_stream(adapter_name: str) -> None:
    seen: list[Delta] = []
    result = replay(adapter_name, "text", seen)
    assert result.text == REPLY
    # One word per chunk: the mock streams word tokens and adapters must not merge them.
    assert [d.text for d in seen if d.text] == ["The"] + [f" {w}" for w in REPLY.split()[1:]]
    assert [d.finish_reason for d in seen if d.finish_reason] == ["stop"]
    assert result.finish_reason == "stop"
    usage = result.final_usage(PROMPT)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (
        PROMPT_TOKENS,
        9,
        False,
    )
    assert result.calls == []


def test_length_stream(adapter_name: str) -> None:
    result = replay(adapter_name, "length")
    assert result.text == "The quick brown"
    assert result.finish_reason == "length"
    assert result.final_usage(PROMPT).completion_tokens == 3


def test_stop_sequence_stream(adapter_name: str) -> None:
    result = replay(adapter_name, "stop")
    assert result.text == "The quick brown "
    assert result.finish_reason == "stop"


def test_tool_call_stream(adapter_name: str) -> None:
    seen: list[Delta] = []
    result = replay(adapter_name, "tool", seen)
    assert result.text == ""
    assert result.finish_reason == "tool_calls"
    [call] = result.calls
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == WEATHER_ARGS
    assert any(d.tool_calls for d in seen)
    assert result.final_usage(PROMPT).completion_tokens > 0


def test_multi_tool_stream(adapter_name: str) -> None:
    """Provider-shaped: thinking (skipped), text, then two tool calls at raw indices > 0."""
    seen: list[Delta] = []
    result = replay(adapter_name, "multi_tool", seen)
    assert result.text == "Let me check."
    assert result.finish_reason == "tool_calls"
    names = [c["function"]["name"] for c in result.calls]
    args = [json.loads(c["function"]["arguments"]) for c in result.calls]
    assert names == ["get_weather", "get_time"]
    assert args == [{"location": "Paris"}, {"city": "Paris"}]
    assert len({c["id"] for c in result.calls}) == 2
    usage = result.final_usage(PROMPT)
    assert (usage.prompt_tokens, usage.completion_tokens) == (20, 30)


def test_midstream_error_event(adapter_name: str) -> None:
    seen: list[Delta] = []
    with pytest.raises(ServerError) as info:
        replay(adapter_name, "overloaded", seen)
    assert info.value.retryable
    assert "".join(d.text for d in seen) == "The quick"
    assert info.value.raw_body


def test_malformed_chunk(adapter_name: str) -> None:
    seen: list[Delta] = []
    with pytest.raises(StreamBroken):
        replay(adapter_name, "malformed", seen)
    assert [d.text for d in seen if d.text] == ["The", " quick"]


def test_truncated_stream_has_no_finish(adapter_name: str) -> None:
    result = replay(adapter_name, "disconnect")
    assert result.text == "The quick"
    assert result.finish_reason is None


def _replaying_client(name: str, scenario: str) -> httpx.Client:
    raw = (STREAMS / f"{name}_{scenario}.sse").read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_client_normalises_a_recorded_stream(adapter_name: str, model: ModelSpec) -> None:
    with _replaying_client(adapter_name, "multi_tool") as http:
        deltas = list(stream_chat(http, model, ChatCall(messages=PROMPT), api_key="k"))
    # Usage comes once, last; tool calls are numbered 0, 1 whatever the raw indices were.
    assert [d.usage is not None for d in deltas].count(True) == 1 and deltas[-1].usage
    starts = [tc for d in deltas for tc in d.tool_calls if tc.name]
    assert [(tc.index, tc.name) for tc in starts] == [(0, "get_weather"), (1, "get_time")]


def test_client_raises_on_truncated_recording(adapter_name: str, model: ModelSpec) -> None:
    got: list[str] = []
    with _replaying_client(adapter_name, "disconnect") as http, pytest.raises(StreamBroken) as info:
        for delta in stream_chat(http, model, ChatCall(messages=PROMPT), api_key="k"):
            got.append(delta.text)
    assert "".join(got) == "The quick" == info.value.partial_text


# --- error mapping ------------------------------------------------------------------

ERROR_BODIES: dict[str, Any] = {
    "openai": lambda status, kind: {"error": {"message": "m", "type": kind, "code": None}},
    "anthropic": lambda status, kind: {"type": "error", "error": {"type": kind, "message": "m"}},
    "gemini": lambda status, kind: {"error": {"code": status, "message": "m", "status": kind}},
}
ERROR_KINDS = {
    "openai": {
        400: "invalid_request_error",
        401: "invalid_request_error",
        429: "requests",
        500: "server_error",
        529: "server_error",
    },
    "anthropic": {
        400: "invalid_request_error",
        401: "authentication_error",
        429: "rate_limit_error",
        500: "api_error",
        529: "overloaded_error",
    },
    "gemini": {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        529: "UNAVAILABLE",
    },
}


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, BadRequest, False),
        (401, AuthError, False),
        (429, RateLimited, True),
        (500, ServerError, True),
        (529, ServerError, True),
    ],
)
def test_map_error_by_status(
    adapter_name: str, status: int, cls: type[ProviderError], retryable: bool
) -> None:
    body = json.dumps(ERROR_BODIES[adapter_name](status, ERROR_KINDS[adapter_name][status]))
    headers = {"retry-after": "7"} if status == 429 else {}
    err = get_adapter(adapter_name).map_error(status, body, httpx.Headers(headers))
    assert type(err) is cls
    assert err.retryable is retryable
    assert err.status == status
    assert err.raw_body == body
    assert err.retry_after == (7.0 if status == 429 else None)
    assert "m" not in err.message.split()  # the provider's message never becomes ours


def test_map_error_survives_a_body_that_is_not_json(adapter_name: str) -> None:
    err = get_adapter(adapter_name).map_error(503, "<html>bad gateway</html>", {})
    assert type(err) is ServerError and err.raw_body.startswith("<html>")


@pytest.mark.parametrize(
    ("name", "status", "body", "headers", "cls", "retry_after"),
    [
        (
            "openai",
            429,
            {"error": {"type": "insufficient_quota", "code": "insufficient_quota"}},
            {},
            QuotaExhausted,
            None,
        ),
        (
            "openai",
            429,
            {"error": {"type": "requests"}},
            {"retry-after-ms": "1500"},
            RateLimited,
            1.5,
        ),
        (
            "anthropic",
            529,
            {"type": "error", "error": {"type": "overloaded_error"}},
            {},
            ServerError,
            None,
        ),
        (
            "anthropic",
            400,
            {"type": "error", "error": {"type": "billing_error"}},
            {},
            QuotaExhausted,
            None,
        ),
        (
            "gemini",
            400,
            {
                "error": {
                    "code": 400,
                    "status": "INVALID_ARGUMENT",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "API_KEY_INVALID",
                        }
                    ],
                }
            },
            {},
            AuthError,
            None,
        ),
        (
            "gemini",
            429,
            {
                "error": {
                    "code": 429,
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
                    ],
                }
            },
            {},
            RateLimited,
            37.0,
        ),
    ],
)
def test_map_error_refined_by_body(
    name: str, status: int, body: Any, headers: dict[str, str], cls: type, retry_after: Any
) -> None:
    err = get_adapter(name).map_error(status, json.dumps(body), headers)
    assert type(err) is cls
    assert err.retry_after == retry_after


# --- whole responses ----------------------------------------------------------------


def _complete(
    mock_app: tuple[MockState, FlaskClient], model: ModelSpec, call: ChatCall, **config: Any
) -> Any:
    state, client = mock_app
    state.configure({"model": model.upstream, **config})
    adapter = get_adapter(model.provider.adapter)
    req = adapter.build_request(model, call, stream=False, api_key="k")
    resp = client.post(
        req.url.replace("http://mock.invalid", ""), json=req.json, headers=req.headers
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return adapter.parse_response(resp.get_json())


def test_parse_response_text(adapter_name: str, model: ModelSpec, mock_app: Any) -> None:
    done = _complete(mock_app, model, ChatCall(messages=PROMPT), reply=REPLY)
    assert (done.text, done.finish_reason, done.tool_calls) == (REPLY, "stop", [])
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (PROMPT_TOKENS, 9)


def test_parse_response_tool_call(adapter_name: str, model: ModelSpec, mock_app: Any) -> None:
    done = _complete(mock_app, model, ChatCall(messages=PROMPT, tools=[WEATHER]))
    assert done.finish_reason == "tool_calls"
    [call] = done.tool_calls
    assert call["function"]["name"] == "get_weather" and call["id"]
    assert json.loads(call["function"]["arguments"]) == WEATHER_ARGS


def test_parse_response_length(adapter_name: str, model: ModelSpec, mock_app: Any) -> None:
    done = _complete(mock_app, model, ChatCall(messages=PROMPT, max_tokens=2), reply=REPLY)
    assert (done.text, done.finish_reason) == ("The quick", "length")
