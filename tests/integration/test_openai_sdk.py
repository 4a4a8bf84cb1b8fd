"""The official OpenAI SDK, sync and async, against the running gateway (only base_url set)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from shared.api_models import ChatCompletion, ChatCompletionChunk
from tests.stack import Stack

MSG = [{"role": "user", "content": "Say hello to the gateway."}]
REPLY = "Hello from the mock gateway, said twelve words in order right now."
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


def sdk(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture
def client(stack: Stack, key: str) -> openai.OpenAI:
    return sdk(stack, key)


def fast(mock: httpx.Client, upstream: str, **extra: Any) -> None:
    mock.post("/_mock/config", json={"model": upstream, "ttft_ms": 5, "token_ms": 2, **extra})


def test_sync_completion(client: openai.OpenAI, api: httpx.Client, mock: httpx.Client) -> None:
    fast(mock, "gpt-5-mini", reply=REPLY)
    raw = client.chat.completions.with_raw_response.create(model="gpt-5-mini", messages=MSG)
    r = raw.parse()
    ChatCompletion.model_validate(r.model_dump())  # the documented shape
    assert r.object == "chat.completion"
    assert r.model == "gpt-5-mini"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == REPLY
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens == len(REPLY.split())
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # The same job, seen through the Chorus API, was charged and succeeded.
    job = api.get(f"/api/v1/jobs/{raw.headers['X-Chorus-Job-Id']}").json()
    assert job["status"] == "succeeded" and job["credits_charged"] > 1
    assert r.id == f"chatcmpl-{job['id']}"


def test_sync_stream_with_usage(client: openai.OpenAI, mock: httpx.Client) -> None:
    fast(mock, "deepseek-chat", reply=REPLY)
    stream = client.chat.completions.create(
        model="deepseek-v3.2", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    for c in chunks:
        ChatCompletionChunk.model_validate(c.model_dump())
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == REPLY
    assert [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason] == [
        "stop"
    ]
    assert all(c.model == "deepseek-v3.2" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == len(REPLY.split())


def test_stream_without_usage_option_has_no_usage(client: openai.OpenAI,
                                                  mock: httpx.Client) -> None:
    fast(mock, "gpt-5-mini", tokens=5)
    chunks = list(client.chat.completions.create(model="gpt-5-mini", messages=MSG, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_auto_model_reports_the_routed_model(client: openai.OpenAI, stack: Stack) -> None:
    r = client.chat.completions.create(model="auto", messages=MSG, max_tokens=8)
    ids = {m.id for m in client.models.list().data}
    assert "auto" in ids and r.model in ids and r.model != "auto"


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert {"gpt-5.2", "claude-sonnet-4.5", "deepseek-v3.2", "auto"} <= {m.id for m in models}
    assert all(m.object == "model" for m in models)
    assert client.models.retrieve("gpt-5.2").id == "gpt-5.2"
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("no-such-model")
    assert exc.value.status_code == 404


def test_async_client_stream_and_not(stack: Stack, key: str, mock: httpx.Client) -> None:
    fast(mock, "gpt-5.2", reply=REPLY)

    async def run() -> tuple[list[Any], list[str]]:
        async with openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key,
                                      max_retries=0) as client:
            plain = [client.chat.completions.create(model="gpt-5.2", messages=MSG)
                     for _ in range(3)]
            stream = await client.chat.completions.create(model="gpt-5.2", messages=MSG,
                                                          stream=True)
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            return list(await asyncio.gather(*plain)), parts

    answers, parts = asyncio.run(run())
    assert [a.choices[0].message.content for a in answers] == [REPLY] * 3
    assert len({a.id for a in answers}) == 3
    assert "".join(parts) == REPLY


def test_tool_call_round_trip(client: openai.OpenAI, mock: httpx.Client) -> None:
    fast(mock, "gpt-5.2")
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model="gpt-5.2", messages=messages,
                                           tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}
    # Apps append the SDK's own message object, then the tool's answer.
    messages += [choice.message,
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    second = client.chat.completions.create(model="gpt-5.2", messages=messages,
                                            tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.tool_calls is None
    assert (second.choices[0].message.content or "").startswith('The tool returned {"temp_c": 21}')
    sent = mock.get("/_mock/requests", params={"model": "gpt-5.2", "limit": 1}).json()
    upstream_messages = sent[-1]["body"]["messages"]
    assert upstream_messages[1]["tool_calls"][0]["id"] == call.id
    assert upstream_messages[2] == {"role": "tool", "tool_call_id": call.id,
                                    "content": '{"temp_c": 21}'}


def test_streamed_tool_call_deltas(client: openai.OpenAI, mock: httpx.Client) -> None:
    fast(mock, "gpt-5.2")
    stream = client.chat.completions.create(
        model="gpt-5.2", messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice="required", stream=True,
    )
    fragments = [tc for c in stream if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert fragments[0].id and fragments[0].type == "function"
    assert fragments[0].function is not None and fragments[0].function.name == "get_weather"
    assert all(f.index == 0 for f in fragments)
    assert all(f.id is None for f in fragments[1:])
    args = "".join((f.function.arguments or "") if f.function else "" for f in fragments)
    assert json.loads(args) == {"location": "Paris"}


def test_json_mode(client: openai.OpenAI, mock: httpx.Client) -> None:
    fast(mock, "gpt-5-mini", tokens=12)
    r = client.chat.completions.create(model="gpt-5-mini", messages=MSG,
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"]}
    r = client.chat.completions.create(
        model="gpt-5-mini", messages=MSG,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "city", "schema": schema}},
    )
    parsed = json.loads(r.choices[0].message.content or "")
    assert set(parsed) == {"city", "population"} and isinstance(parsed["population"], int)
    sent = mock.get("/_mock/requests", params={"model": "gpt-5-mini", "limit": 1}).json()
    assert sent[-1]["body"]["response_format"]["json_schema"]["schema"] == schema


@pytest.fixture
def failing_primary(stack: Stack, mock: httpx.Client) -> Iterator[str]:
    """A primary that answers 500 (the mesh tests' models stay untouched), and its breaker
    state wiped afterwards so no other test meets an open breaker."""
    mock.post("/_mock/config", json={"model": "llama-3.3-70b-versatile",
                                     "fault": {"kind": "status", "status": 500}})
    yield "llama-3.3-70b"
    client = redis.Redis.from_url(stack.redis_url)
    keys = list(client.scan_iter("chorus:model:llama-3.3-70b:*"))
    if keys:
        client.delete(*keys)


def test_fallback_models_through_extra_body(client: openai.OpenAI, mock: httpx.Client,
                                            failing_primary: str) -> None:
    fast(mock, "deepseek-chat", reply=REPLY)
    extra = {"chorus": {"fallback": ["deepseek-v3.2"]}}
    r = client.chat.completions.create(model=failing_primary, messages=MSG, extra_body=extra)
    assert r.model == "deepseek-v3.2"
    assert r.choices[0].message.content == REPLY
    assert (r.model_extra or {})["chorus"]["resolved_model"] == "deepseek-v3.2"
    chunks = list(client.chat.completions.create(model=failing_primary, messages=MSG,
                                                 stream=True, extra_body=extra))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].model == "deepseek-v3.2"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_fallback_ids_are_checked_like_the_primary(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gpt-5.2", messages=MSG,
                                       extra_body={"chorus": {"fallback": ["nope"]}})
    assert exc.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gpt-5.2", messages=MSG,
                                       extra_body={"chorus": {"fallbak": ["gpt-5-mini"]}})
    assert exc.value.body["param"] == "chorus.fallbak"  # type: ignore[index]


def test_401_is_authentication_error(stack: Stack) -> None:
    bad = sdk(stack, "ch_sk_not-a-real-key")
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(model="gpt-5.2", messages=MSG)
    assert exc.value.status_code == 401
    assert exc.value.body["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_402_is_a_status_error_with_the_credit_numbers(stack: Stack) -> None:
    poor = sdk(stack, stack.create_key(credits=0))
    with pytest.raises(openai.APIStatusError) as exc:
        poor.chat.completions.create(model="gpt-5.2", messages=MSG)
    err = exc.value
    assert err.status_code == 402
    # No more specific SDK class exists for 402, so it must be exactly APIStatusError.
    assert type(err) is openai.APIStatusError
    body: dict[str, Any] = err.body  # type: ignore[assignment]
    assert body["code"] == "insufficient_credits" and body["type"] == "insufficient_quota"
    assert body["credits"] == 0 and body["required"] > 1


def test_400_is_bad_request_with_param(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="no-such-model", messages=MSG)
    assert exc.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gpt-5.2", messages=MSG, temperature=3)
    assert exc.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-5.2", messages=[])


def test_upstream_failure_is_internal_server_error(client: openai.OpenAI,
                                                   mock: httpx.Client) -> None:
    mock.post("/_mock/config", json={"model": "gpt-5.2",
                                     "fault": {"kind": "status", "status": 500}})
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="gpt-5.2", messages=MSG)
    assert exc.value.status_code == 502
    # Mid-stream, the SDK raises on the error chunk instead of ending quietly.
    stream = client.chat.completions.create(model="gpt-5.2", messages=MSG, stream=True)
    with pytest.raises(openai.APIError) as stream_exc:
        list(stream)
    assert stream_exc.value.body["code"] == "upstream_error"  # type: ignore[index]


@pytest.fixture
def limited_url(stack: Stack) -> Iterator[str]:
    """An API process with real limits (the session's stack scales them out of the way)
    and a chat bucket of 2 (x1.5 for a paid key: 3 a minute)."""
    env = dict(stack.env, CHORUS_RATE_LIMIT_SCALE="1", CHORUS_RATE_LIMITS="chat=2")
    url = dataclasses.replace(stack, env=env, procs=stack.procs).start_api("web-limited")
    yield url
    stack.stop_proc("web-limited")


def test_429_is_rate_limit_error(stack: Stack, limited_url: str, mock: httpx.Client) -> None:
    fast(mock, "gpt-5-mini", tokens=3)
    limited = openai.OpenAI(base_url=f"{limited_url}/v1", api_key=stack.create_key(),
                            max_retries=0, timeout=30)
    for _ in range(3):
        limited.chat.completions.create(model="gpt-5-mini", messages=MSG, max_tokens=4)
    with pytest.raises(openai.RateLimitError) as exc:
        limited.chat.completions.create(model="gpt-5-mini", messages=MSG, max_tokens=4)
    assert exc.value.status_code == 429
    assert int(exc.value.response.headers["Retry-After"]) >= 1
    assert exc.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    assert exc.value.body["code"] == "rate_limited"  # type: ignore[index]
