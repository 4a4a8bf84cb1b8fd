"""The official Anthropic SDK as a client of the mock: events, messages, tools, errors."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest

MODEL = "claude-haiku-4-5"
REPLY = "The quick brown fox jumps over the lazy dog."
MESSAGES = [{"role": "user", "content": "What does the fox do?"}]
WEATHER = {
    "name": "get_weather",
    "description": "Current weather.",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


@pytest.fixture
def sdk(mock_url: str, fast_mock: httpx.Client) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=mock_url, api_key="x", max_retries=0, timeout=10) as c:
        yield c


def test_stream_text(sdk: anthropic.Anthropic, fast_mock: httpx.Client) -> None:
    fast_mock.post("/_mock/config", json={"model": MODEL, "reply": REPLY})
    with sdk.messages.stream(
        model=MODEL, max_tokens=100, system="Be brief.", messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 9 and final.usage.input_tokens > 0


def test_non_stream_stop_sequence(sdk: anthropic.Anthropic, fast_mock: httpx.Client) -> None:
    fast_mock.post("/_mock/config", json={"model": MODEL, "reply": REPLY})
    message = sdk.messages.create(
        model=MODEL, max_tokens=100, messages=MESSAGES, stop_sequences=["fox"]
    )
    assert message.content[0].text == "The quick brown "
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "fox")


def test_max_tokens(sdk: anthropic.Anthropic, fast_mock: httpx.Client) -> None:
    fast_mock.post("/_mock/config", json={"model": MODEL, "reply": REPLY})
    message = sdk.messages.create(model=MODEL, max_tokens=2, messages=MESSAGES)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


def test_tool_use_streamed(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES, tools=[WEATHER]
    ) as stream:
        deltas = [e for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert len(deltas) > 1
    [block] = final.content
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.input == {"location": "Paris"}
    assert final.stop_reason == "tool_use"


def test_rate_limit_error(sdk: anthropic.Anthropic, fast_mock: httpx.Client) -> None:
    fault = {"kind": "status", "status": 429, "retry_after": 3}
    fast_mock.post("/_mock/config", json={"model": MODEL, "fault": fault})
    with pytest.raises(anthropic.RateLimitError) as info:
        sdk.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "3"


def test_server_error(sdk: anthropic.Anthropic, fast_mock: httpx.Client) -> None:
    fast_mock.post(
        "/_mock/config", json={"model": MODEL, "fault": {"kind": "status", "status": 500}}
    )
    with pytest.raises(anthropic.InternalServerError):
        sdk.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)


def test_overloaded_event_mid_stream(sdk: anthropic.Anthropic, fast_mock: httpx.Client) -> None:
    fault = {"kind": "status", "status": 529, "after_tokens": 2}
    fast_mock.post("/_mock/config", json={"model": MODEL, "reply": REPLY, "fault": fault})
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        sdk.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream,
    ):
        list(stream.text_stream)
    assert "overloaded_error" in str(info.value)
