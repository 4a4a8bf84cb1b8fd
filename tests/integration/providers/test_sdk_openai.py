"""The official OpenAI SDK as a client of the mock: it must parse everything we send."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

MODEL = "gpt-5-mini"
REPLY = "The quick brown fox jumps over the lazy dog."
MESSAGES = [{"role": "user", "content": "What does the fox do?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["location", "days"],
        },
    },
}


@pytest.fixture
def sdk(mock_url: str, fast_mock: httpx.Client) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{mock_url}/v1", api_key="x", max_retries=0, timeout=10) as c:
        yield c


def test_stream_with_usage(sdk: openai.OpenAI, fast_mock: httpx.Client) -> None:
    fast_mock.post("/_mock/config", json={"model": MODEL, "reply": REPLY})
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # Exactly like OpenAI: the last chunk carries usage and no choices.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 9
    assert all(c.usage is None for c in chunks[:-1])


def test_non_stream(sdk: openai.OpenAI, fast_mock: httpx.Client) -> None:
    fast_mock.post("/_mock/config", json={"model": MODEL, "reply": REPLY})
    done = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    assert done.choices[0].message.content == "The quick brown"
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.total_tokens == done.usage.prompt_tokens + 3


def test_tool_call_streamed_and_whole(sdk: openai.OpenAI) -> None:
    done = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, tools=[WEATHER])
    [call] = done.choices[0].message.tool_calls or []
    assert done.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"location", "days"} and isinstance(args["days"], int)
    fragments = []
    with sdk.chat.completions.stream(model=MODEL, messages=MESSAGES, tools=[WEATHER]) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                fragments.append(event.arguments_delta)
        final = stream.get_final_completion()
    assert len(fragments) > 1
    streamed = final.choices[0].message.tool_calls or []
    assert json.loads(streamed[0].function.arguments) == args


def test_json_mode(sdk: openai.OpenAI) -> None:
    done = sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(done.choices[0].message.content or ""), dict)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    done = sdk.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert set(json.loads(done.choices[0].message.content or "")) == {"city"}


def test_models_list(sdk: openai.OpenAI) -> None:
    assert MODEL in {m.id for m in sdk.models.list()}


def test_rate_limit_error(sdk: openai.OpenAI, fast_mock: httpx.Client) -> None:
    fault = {"kind": "status", "status": 429, "retry_after": 2}
    fast_mock.post("/_mock/config", json={"model": MODEL, "fault": fault})
    with pytest.raises(openai.RateLimitError) as info:
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.code == "rate_limit_exceeded"


def test_server_error(sdk: openai.OpenAI, fast_mock: httpx.Client) -> None:
    fast_mock.post("/_mock/config", json={"model": "*", "fault": {"kind": "status", "status": 500}})
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)


def test_error_chunk_mid_stream(sdk: openai.OpenAI, fast_mock: httpx.Client) -> None:
    fault = {"kind": "status", "status": 500, "after_tokens": 2}
    fast_mock.post("/_mock/config", json={"model": MODEL, "fault": fault})
    with pytest.raises(openai.APIError):
        list(sdk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
