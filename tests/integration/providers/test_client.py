"""``client.stream_chat`` / ``complete_chat`` against the running mock, for every adapter."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from shared.registry import Registry
from workers.providers.base import ChatCall, Delta, estimate_tokens
from workers.providers.client import Timeouts, complete_chat, stream_chat
from workers.providers.errors import (
    AuthError,
    RateLimited,
    ServerError,
    StreamBroken,
    UpstreamTimeout,
)

REPLY = "The quick brown fox jumps over the lazy dog."
CALL = ChatCall(
    messages=[
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What does the fox do?"},
    ],
    temperature=0.4,
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


def configure(mock: httpx.Client, model: str, **settings: Any) -> None:
    mock.post("/_mock/config", json={"model": model, **settings}).raise_for_status()


def texts(deltas: list[Delta]) -> list[str]:
    return [d.text for d in deltas if d.text]


def test_stream_full_text_and_usage(
    adapter_name: str, registry: Registry, fast_mock: httpx.Client, http: httpx.Client
) -> None:
    model = registry.get(adapter_name)
    configure(fast_mock, model.upstream, reply=REPLY)
    deltas = list(stream_chat(http, model, CALL, api_key="sk-test-0001"))
    assert "".join(texts(deltas)) == REPLY
    assert len(texts(deltas)) == 9
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
    usage = deltas[-1].usage
    assert usage is not None and not usage.estimated
    assert usage.completion_tokens == 9 and usage.prompt_tokens > 0
    # The mock saw the translated request: the system prompt and temperature arrived.
    [seen] = fast_mock.get("/_mock/requests", params={"model": model.upstream, "limit": 1}).json()
    assert "Answer briefly." in json.dumps(seen["body"])
    assert "0.4" in json.dumps(seen["body"])


def test_stream_tool_call(
    adapter_name: str, registry: Registry, fast_mock: httpx.Client, http: httpx.Client
) -> None:
    model = registry.get(adapter_name)
    call = ChatCall(messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER])
    deltas = list(stream_chat(http, model, call, api_key="k"))
    fragments = [tc for d in deltas for tc in d.tool_calls]
    assert fragments[0].index == 0 and fragments[0].name == "get_weather" and fragments[0].id
    assert json.loads("".join(f.arguments for f in fragments)) == {"location": "Paris"}
    assert deltas[-2].finish_reason == "tool_calls"


def test_tool_result_is_answered_in_words(
    adapter_name: str, registry: Registry, fast_mock: httpx.Client, http: httpx.Client
) -> None:
    model = registry.get(adapter_name)
    call = ChatCall(
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_9", "content": "sunny, 21 C"},
        ],
        tools=[WEATHER],
    )
    text = "".join(texts(list(stream_chat(http, model, call, api_key="k"))))
    assert text.startswith("The tool returned") and "sunny" in text


def test_complete_chat(
    adapter_name: str, registry: Registry, fast_mock: httpx.Client, http: httpx.Client
) -> None:
    model = registry.get(adapter_name)
    configure(fast_mock, model.upstream, reply=REPLY)
    done = complete_chat(http, model, CALL, api_key="k")
    assert (done.text, done.finish_reason) == (REPLY, "stop")
    assert done.usage is not None and done.usage.completion_tokens == 9


def test_max_tokens_stops_with_length(
    adapter_name: str, registry: Registry, fast_mock: httpx.Client, http: httpx.Client
) -> None:
    model = registry.get(adapter_name)
    call = ChatCall(messages=CALL.messages, max_tokens=4)
    deltas = list(stream_chat(http, model, call, api_key="k"))
    assert len(texts(deltas)) == 4
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]


def test_rate_limited_with_retry_after(
    adapter_name: str, registry: Registry, fast_mock: httpx.Client, http: httpx.Client
) -> None:
    model = registry.get(adapter_name)
    configure(fast_mock, model.upstream, fault={"kind": "status", "status": 429, "retry_after": 7})
    with pytest.raises(RateLimited) as info:
        list(stream_chat(http, model, CALL, api_key="k"))
    assert info.value.retry_after == 7.0 and info.value.status == 429 and info.value.retryable
    assert info.value.raw_body


@pytest.mark.parametrize(
    ("status", "cls"), [(500, ServerError), (503, ServerError), (401, AuthError)]
)
def test_status_faults(
    adapter_name: str,
    registry: Registry,
    fast_mock: httpx.Client,
    http: httpx.Client,
    status: int,
    cls: type,
) -> None:
    model = registry.get(adapter_name)
    configure(fast_mock, model.upstream, fault={"kind": "status", "status": status, "times": 1})
    with pytest.raises(cls):
        list(stream_chat(http, model, CALL, api_key="k"))
    # ``times: 1`` cleared the fault: the next call goes through.
    assert list(stream_chat(http, model, CALL, api_key="k"))[-1].usage is not None


def test_disconnect_after_k_tokens(
    adapter_name: str, registry: Registry, fast_mock: httpx.Client, http: httpx.Client
) -> None:
    model = registry.get(adapter_name)
    configure(
        fast_mock, model.upstream, reply=REPLY, fault={"kind": "disconnect", "after_tokens": 3}
    )
    got: list[Delta] = []
    with pytest.raises(StreamBroken) as info:
        for delta in stream_chat(http, model, CALL, api_key="k"):
            got.append(delta)
    assert texts(got) == ["The", " quick", " brown"]
    assert info.value.partial_text == "The quick brown"


def test_malformed_chunk(
    adapter_name: str, registry: Registry, fast_mock: httpx.Client, http: httpx.Client
) -> None:
    model = registry.get(adapter_name)
    configure(
        fast_mock, model.upstream, reply=REPLY, fault={"kind": "malformed", "after_tokens": 2}
    )
    got: list[Delta] = []
    with pytest.raises(StreamBroken):
        for delta in stream_chat(http, model, CALL, api_key="k"):
            got.append(delta)
    assert texts(got) == ["The", " quick"]


def test_error_event_mid_stream(
    adapter_name: str, registry: Registry, fast_mock: httpx.Client, http: httpx.Client
) -> None:
    model = registry.get(adapter_name)
    configure(
        fast_mock,
        model.upstream,
        reply=REPLY,
        fault={"kind": "status", "status": 529, "after_tokens": 2},
    )
    with pytest.raises(ServerError) as info:
        list(stream_chat(http, model, CALL, api_key="k"))
    assert info.value.partial_text == "The quick"


@pytest.mark.parametrize("after", [None, 2])
def test_hang_times_out(
    adapter_name: str,
    registry: Registry,
    fast_mock: httpx.Client,
    http: httpx.Client,
    after: int | None,
) -> None:
    model = registry.get(adapter_name)
    configure(fast_mock, model.upstream, reply=REPLY, fault={"kind": "hang", "after_tokens": after})
    got: list[Delta] = []
    start = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        for delta in stream_chat(http, model, CALL, api_key="k", timeouts=Timeouts(idle=0.5)):
            got.append(delta)
    assert time.monotonic() - start < 3.0
    assert len(texts(got)) == (after or 0)


def test_estimated_usage_when_host_sends_none(
    registry: Registry, fast_mock: httpx.Client, http: httpx.Client
) -> None:
    model = registry.get("nousage")
    configure(fast_mock, model.upstream, reply=REPLY)
    deltas = list(stream_chat(http, model, CALL, api_key="k"))
    usage = deltas[-1].usage
    assert usage is not None and usage.estimated
    assert usage.completion_tokens == estimate_tokens(REPLY) and usage.prompt_tokens > 0
    [seen] = fast_mock.get("/_mock/requests", params={"model": model.upstream, "limit": 1}).json()
    assert "stream_options" not in seen["body"]


def test_client_going_away_is_seen_by_the_mock(
    adapter_name: str, registry: Registry, fast_mock: httpx.Client, http: httpx.Client
) -> None:
    model = registry.get(adapter_name)
    configure(fast_mock, model.upstream, token_ms=20, tokens=200)
    stream = stream_chat(http, model, CALL, api_key="k")
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.monotonic() + 3
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = fast_mock.get("/_mock/stats").json()
        if stats["client_disconnects"].get(model.upstream):
            break
        time.sleep(0.02)
    assert stats["client_disconnects"] == {model.upstream: 1}
    assert stats["active_streams"] == 0


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("disconnect", StreamBroken), ("malformed", StreamBroken), ("hang", UpstreamTimeout)],
)
def test_complete_chat_faults(
    adapter_name: str,
    registry: Registry,
    fast_mock: httpx.Client,
    http: httpx.Client,
    kind: str,
    cls: type,
) -> None:
    model = registry.get(adapter_name)
    configure(fast_mock, model.upstream, fault={"kind": kind})
    with pytest.raises(cls):
        complete_chat(http, model, CALL, api_key="k", timeouts=Timeouts(idle=0.5))
