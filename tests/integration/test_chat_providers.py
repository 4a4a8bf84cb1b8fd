"""Every wire format streams through /api/v1/chat in the same Chorus event form."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.sse import stream_post

MSG = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
# Registry id -> the mock's upstream name, one per wire format.
FORMATS = {"gpt-5.2": "gpt-5.2", "claude-sonnet-4.5": "claude-sonnet-4-5",
           "gemini-3-flash": "gemini-3-flash"}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


def shape(events: list[dict[str, object]]) -> list[tuple[str, ...]]:
    """The fields of each event, runs of alike events as one: how many text chunks a
    stream takes depends on timing (chunks that queue up behind a write are joined)."""
    out: list[tuple[str, ...]] = []
    for e in events:
        fields = tuple(sorted(e))
        if not out or out[-1] != fields:
            out.append(fields)
    return out


@pytest.fixture
def fast(mock: httpx.Client) -> httpx.Client:
    for upstream in FORMATS.values():
        mock.post("/_mock/config", json={"model": upstream, "ttft_ms": 5, "token_ms": 1,
                                         "tokens": 8})
    return mock


def test_same_event_format_for_every_provider(api: httpx.Client, fast: httpx.Client) -> None:
    shapes = {}
    for model in FORMATS:
        s = stream_post(api, "/api/v1/chat", {"model": model, "messages": MSG})
        assert s.done and s.final["status"] == "succeeded", s.events[-2:]
        fin = next(e for e in s.events if e["event"] == "chunk" and e["done"])
        assert fin["completion_tokens"] == 8 and fin["prompt_tokens"] > 0
        assert fin["finish_reason"] == "stop"
        assert fin["full_content"] == s.text
        shapes[model] = shape(s.events[:-1]), tuple(sorted(s.final))
    first = next(iter(shapes.values()))
    assert all(v == first for v in shapes.values())
    # The system prompt reached each provider (lifted out of messages where required).
    for upstream in FORMATS.values():
        sent = fast.get("/_mock/requests", params={"model": upstream, "limit": 1}).json()
        assert "Be brief." in json.dumps(sent[-1]["body"])


@pytest.mark.parametrize("model", list(FORMATS))
def test_tool_call_reaches_the_client_in_one_form(
    api: httpx.Client, fast: httpx.Client, model: str
) -> None:
    s = stream_post(api, "/api/v1/chat", {"model": model, "messages": MSG, "tools": TOOLS})
    assert s.done and s.final["status"] == "succeeded"
    assert s.final["finish_reason"] == "tool_calls"
    (call,) = s.final["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert "city" in json.loads(call["function"]["arguments"])
    fragments = [t for e in s.events if e["event"] == "chunk" and not e["done"]
                 for t in e.get("tool_calls", [])]
    assert fragments and fragments[0]["name"] == "get_weather"
    joined = "".join(f["arguments"] for f in fragments)
    assert json.loads(joined) == json.loads(call["function"]["arguments"])


@pytest.mark.parametrize("model", list(FORMATS))
@pytest.mark.parametrize("fault", [{"kind": "malformed", "after_tokens": 2},
                                   {"kind": "disconnect", "after_tokens": 2}])
def test_malformed_or_truncated_stream_is_a_clear_error(
    api: httpx.Client, fast: httpx.Client, model: str, fault: dict[str, object]
) -> None:
    fast.post("/_mock/config", json={"model": FORMATS[model], "fault": fault})
    s = stream_post(api, "/api/v1/chat", {"model": model, "messages": MSG})
    assert s.status == 200 and s.done
    err = next(e for e in s.events if e["event"] == "error" and not e.get("final"))
    assert err["error"]["code"] == "upstream_stream_broken"
    assert s.final["status"] == "failed" and s.final["error"]["http_status"] == 502


def test_hanging_provider_times_out_with_an_error(api: httpx.Client, fast: httpx.Client) -> None:
    fast.post("/_mock/config", json={"model": "gemini-3-flash",
                                     "fault": {"kind": "hang", "after_tokens": 1}})
    s = stream_post(api, "/api/v1/chat", {"model": "gemini-3-flash", "messages": MSG})
    assert s.done and s.final["status"] == "failed"
    err = next(e for e in s.events if e["event"] == "error" and not e.get("final"))
    assert err["error"]["code"] == "upstream_timeout"
